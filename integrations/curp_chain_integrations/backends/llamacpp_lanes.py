"""Decoding lanes of the llama.cpp backend: one model context per worker thread.

A lane owns a context with a KV-cache sequence per slot (not unified, so each request's
attention arithmetic is exactly that of the request alone) and the native batches that
feed it. Its worker prefills each new request on its own, then decodes one token of every
active request in one ``llama_decode`` per round. Lanes share the loaded model's weights
and run in parallel, one thread each, so single-threaded lanes use several cores without
llama.cpp's cross-thread synchronisation (which collapses when a core is busy).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curp_chain.errors import BackendError
from curp_chain.runtime.generation import Feed, Logits
from curp_chain.runtime.scheduler import RoundWork


def check_logits(logits: Logits, source: Path | str) -> Logits:
    """The logits, or BackendError if the model produced NaN or +inf (damaged weights):
    sampling from them would give an empty or garbage reply that looks like a real one."""
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise BackendError(
            f"the model in {source} produced NaN or infinite logits; its weights are "
            "damaged. Reinstall or re-download the model file."
        )
    return logits


class TokenDecode(RoundWork):
    """A request's next token to decode in its lane's KV-cache sequence ``seq``, batched
    with the tokens of the lane's other active requests (one ``llama_decode`` per round)."""

    __slots__ = ("feed", "lane", "position", "seq")

    def __init__(self, lane: DecodeLane, seq: int, position: int, feed: Feed):
        self.lane = lane
        self.seq = seq
        self.position = position
        self.feed = feed


class _NativeBatch:
    """An owned llama_batch for tokens (embd_dim=0) or embeddings; freed on close."""

    def __init__(self, llama_cpp: Any, capacity: int, embd_dim: int):
        self._lib = llama_cpp
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, embd_dim, 1)

    def fill(
        self, seq: int, start_pos: int, tokens: Sequence[int] | None, embeds: np.ndarray | None
    ) -> None:
        """Consecutive tokens (or embeddings) of one sequence; logits for the last only."""
        count = len(tokens) if tokens is not None else len(embeds)  # type: ignore[arg-type]
        if count > self.capacity:
            raise ValueError(f"batch of {count} exceeds capacity {self.capacity}")
        b = self.batch
        b.n_tokens = count
        if embeds is not None:
            flat = np.ascontiguousarray(embeds, dtype=np.float32).reshape(-1)
            ctypes.memmove(b.embd, flat.ctypes.data, flat.nbytes)
        for i in range(count):
            if tokens is not None:
                b.token[i] = tokens[i]
            b.pos[i] = start_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i == count - 1

    def fill_steps(self, steps: Sequence[TokenDecode]) -> None:
        """One token of each step's sequence, at its own position; logits for every one."""
        if len(steps) > self.capacity:
            raise ValueError(f"batch of {len(steps)} exceeds capacity {self.capacity}")
        b = self.batch
        b.n_tokens = len(steps)
        for i, step in enumerate(steps):
            b.token[i] = step.feed.token
            b.pos[i] = step.position
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = step.seq
            b.logits[i] = True

    def close(self) -> None:
        if self.batch is not None:
            self._lib.llama_batch_free(self.batch)
            self.batch = None


class DecodeLane:
    """A llama.cpp context of ``sequences`` KV-cache sequences and its batches, used by
    one worker thread only.

    Args:
        llama_cpp: the llama_cpp module.
        llama: the loaded ``Llama`` (its model, and the context settings it chose).
        sequences: requests this lane decodes at once.
        n_ctx: tokens per sequence.
        n_batch: tokens per prefill decode.
        threads: CPU threads of this lane's decodes.
        source: the model file, named in errors.
    """

    def __init__(
        self,
        llama_cpp: Any,
        llama: Any,
        *,
        sequences: int,
        n_ctx: int,
        n_batch: int,
        threads: int,
        source: Path,
    ):
        from llama_cpp._internals import LlamaContext  # private but pinned (0.3.36)

        self._lib = llama_cpp
        self._source = source
        self._n_batch = n_batch
        self._n_vocab = int(llama.n_vocab())
        made = llama.context_params
        params = type(made).from_buffer_copy(made)  # the same settings Llama chose
        params.n_ctx = n_ctx * sequences
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        try:
            self._context = LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError:
            raise BackendError(
                f"llama.cpp could not make a context of {sequences} x {n_ctx} tokens; "
                "lower slots or n_ctx"
            ) from None
        self.ctx = self._context.ctx
        self._token_batch = _NativeBatch(llama_cpp, max(n_batch, sequences), 0)
        self._embd_batch = _NativeBatch(llama_cpp, n_batch, int(llama.n_embd()))

    @property
    def n_ctx_seq(self) -> int:
        """Tokens one sequence holds."""
        return int(self._lib.llama_n_ctx_seq(self.ctx))

    @property
    def n_threads(self) -> int:
        return int(self._lib.llama_n_threads(self.ctx))

    def _decode(self, batch: _NativeBatch) -> None:
        code = self._lib.llama_decode(self.ctx, batch.batch)
        if code != 0:
            raise BackendError(f"llama_decode failed with return code {code}")

    def prefill(self, seq: int, segments: list[tuple[str, Any]]) -> int:
        """Decode ("tokens", ids) and ("embd", array) segments in order into the emptied
        sequence ``seq``; returns the positions used."""
        self.clear(seq)
        position = 0
        for kind, values in segments:
            batch = self._token_batch if kind == "tokens" else self._embd_batch
            for start in range(0, len(values), self._n_batch):
                chunk = values[start : start + self._n_batch]
                if kind == "tokens":
                    batch.fill(seq, position, chunk, None)
                else:
                    batch.fill(seq, position, None, chunk)
                self._decode(batch)
                position += len(chunk)
        return position

    def logits(self, index: int = -1) -> Logits:
        """The logits of the last decode's ``index``-th token (with logits on)."""
        pointer = self._lib.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()
        return check_logits(logits, self._source)

    def decode_round(self, steps: Sequence[TokenDecode]) -> None:
        """One decode for a token of every active request, each in its own sequence: the
        weights are read once per round instead of once per request."""
        self._token_batch.fill_steps(steps)
        self._decode(self._token_batch)
        for index, step in enumerate(steps):
            step.feed.logits = self.logits(index)

    def clear(self, seq: int) -> None:
        """Empty sequence ``seq`` of the KV cache."""
        memory = self._lib.llama_get_memory(self.ctx)
        self._lib.llama_memory_seq_rm(memory, seq, -1, -1)

    def close(self) -> None:
        self._token_batch.close()
        self._embd_batch.close()
        self._context.close()
