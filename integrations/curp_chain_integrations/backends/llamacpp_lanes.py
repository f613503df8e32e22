"""Decoding lanes of the llama.cpp backend: one model context per worker thread.

A lane owns a context with a KV-cache sequence per slot (not unified, so each request's
attention arithmetic is exactly that of the request alone) and the native batches that
feed it. Its worker prefills each new request on its own, then decodes one token of every
active request in one ``llama_decode`` per round. Lanes share the loaded model's weights
and run in parallel, one thread each, so single-threaded lanes use several cores without
llama.cpp's cross-thread synchronisation (which collapses when a core is busy).

Prefix cache: a prompt's text before its soft tokens is decoded on its own and its cells
saved with llama.cpp's per-sequence state API (``llama_state_seq_get_data``: the cells'
positions, keys and values, in host memory); a later request with the same prefix restores
them into its own sequence (``llama_state_seq_set_data``), on any lane. Copying cells with
``llama_memory_seq_cp`` instead would need a reserved sequence per cached prefix in every
context, and with per-sequence KV buffers (not unified) it copies the source's whole buffer
of ``n_ctx`` cells; a saved state holds only the prefix's cells (measured: 36 MB for 1,588
tokens of SmolLM2, saved in 47 ms and restored in 22 ms), and one copy serves every lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curp_chain.errors import BackendError
from curp_chain.runtime.generation import Feed, Logits
from curp_chain.runtime.scheduler import RoundWork
from curp_chain_integrations.backends.llamacpp_native import (
    NativeBatch,
    NativeContext,
    SequenceState,
)
from curp_chain_integrations.backends.prefix_cache import PrefixCache


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


class DecodeLane:
    """A llama.cpp context of ``sequences`` KV-cache sequences and its batches, used by
    one worker thread only.

    Args:
        llama: the loaded ``Llama`` (its model, and the context settings it chose).
        sequences: requests this lane decodes at once.
        n_ctx: tokens per sequence.
        n_batch: tokens per prefill decode.
        threads: CPU threads of this lane's decodes.
        source: the model file, named in errors.
    """

    def __init__(
        self,
        llama: Any,
        *,
        sequences: int,
        n_ctx: int,
        n_batch: int,
        threads: int,
        source: Path,
    ):
        self._source = source
        self._n_batch = n_batch
        made = llama.context_params
        params = type(made).from_buffer_copy(made)  # the same settings Llama chose
        params.n_ctx = n_ctx * sequences
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        self._context = NativeContext(
            llama,
            params,
            f"llama.cpp could not make a context of {sequences} x {n_ctx} tokens; "
            "lower slots or n_ctx",
        )
        # Should a batch fail, the context is freed with the model (LlamaContext's rule).
        self._token_batch = NativeBatch(max(n_batch, sequences))
        self._embd_batch = NativeBatch(n_batch, embd=int(llama.n_embd()))

    @property
    def n_ctx_seq(self) -> int:
        """Tokens one sequence holds."""
        return self._context.n_ctx_seq

    @property
    def n_threads(self) -> int:
        return self._context.n_threads

    def prefill(
        self,
        seq: int,
        segments: list[tuple[str, Any]],
        *,
        prefix: Sequence[int] = (),
        cache: PrefixCache[SequenceState] | None = None,
    ) -> int:
        """Decode the tokens of ``prefix``, then ("tokens", ids) and ("embd", array)
        ``segments`` in order, into the emptied sequence ``seq``; returns the positions used.

        The prefix is decoded on its own, then saved in ``cache``; a later request with the
        same prefix restores that state instead and decodes only its segments, the same
        decodes as the first one's after its prefix, so both get the same logits.
        """
        if prefix and not segments:
            raise ValueError("a prefix must be followed by segments (they give the logits)")
        self.clear(seq)
        key = cache.key(prefix) if cache is not None and prefix else None
        state = cache.get(key) if cache is not None and key is not None else None
        if state is not None:
            if state.positions != len(prefix):
                raise BackendError(
                    f"a cached prefix state holds {state.positions} positions, not {len(prefix)}"
                )
            self._context.restore(seq, state)
            position = reused = len(prefix)
        else:
            position = self._decode(seq, [("tokens", list(prefix))] if prefix else [], 0)
            reused = 0
            if cache is not None and key is not None:
                cache.put(key, self._context.save(seq))
        position = self._decode(seq, segments, position)
        if cache is not None:
            cache.record(decoded=position - reused, reused=reused)
        return position

    def _decode(self, seq: int, segments: list[tuple[str, Any]], position: int) -> int:
        """Decode ``segments`` into ``seq`` from ``position`` on; returns the next position."""
        for kind, values in segments:
            batch = self._token_batch if kind == "tokens" else self._embd_batch
            for start in range(0, len(values), self._n_batch):
                chunk = values[start : start + self._n_batch]
                if kind == "tokens":
                    batch.fill(seq, position, chunk, None)
                else:
                    batch.fill(seq, position, None, chunk)
                self._context.decode(batch)
                position += len(chunk)
        return position

    def logits(self, index: int = -1) -> Logits:
        """The logits of the last decode's ``index``-th token (with logits on)."""
        return check_logits(self._context.logits(index), self._source)

    def decode_round(self, steps: Sequence[TokenDecode]) -> None:
        """One decode for a token of every active request, each in its own sequence: the
        weights are read once per round instead of once per request."""
        self._token_batch.fill_tokens([(s.feed.token, s.position, s.seq) for s in steps])
        self._context.decode(self._token_batch)
        for index, step in enumerate(steps):
            step.feed.logits = self.logits(index)

    def clear(self, seq: int) -> None:
        """Empty sequence ``seq`` of the KV cache."""
        self._context.clear(seq)

    def close(self) -> None:
        """Free the batches, then the context."""
        self._token_batch.close()
        self._embd_batch.close()
        self._context.close()
