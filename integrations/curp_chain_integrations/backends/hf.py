"""Hugging Face transformers backend: soft tokens enter through ``inputs_embeds``.

It loads the same GGUF that llama.cpp serves (dequantized to float32), so one CURP
checkpoint trained through this backend serves both. The dequantized weights are cached
as safetensors beside the history store, which turns a 30 s load into a few seconds.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curp_chain.errors import BackendError, ContextLengthError, MissingDependencyError
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, SoftPrompt
from curp_chain.locations import curp_home
from curp_chain.runtime.generation import (
    Logits,
    banned_by_echo,
    banned_by_ngrams,
    decode_loop,
)
from curp_chain.runtime.scheduler import GenerationStream, RequestScheduler
from curp_chain_integrations.backends.gguf import check_model_file, gguf_problem, model_id_from_gguf
from curp_chain_integrations.backends.hf_constraints import GrammarEngine, GuidanceConstraint
from curp_chain_integrations.backends.hf_tokenizer import HFTokenizerMixin
from curp_chain_integrations.backends.prefix_cache import DEFAULT_PREFIX_CACHE_SIZE, PrefixCache

logger = logging.getLogger(__name__)


def _cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return curp_home() / "hf-cache" / key.hexdigest()[:16]


def load_gguf_as_hf(gguf_path: Path, *, use_cache: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 from a GGUF file, through a safetensors cache.

    The cache is written to a temporary folder and renamed into place, with a manifest of
    its files' sizes written last, so a kill during the save leaves no half cache. A cache
    that fails its check or its load is deleted and rebuilt.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise MissingDependencyError(
            "the transformers backend needs transformers and gguf; run: "
            "pip install 'curp-chain-integrations[hf]'"
        ) from None
    cache = _cache_dir(gguf_path)
    if use_cache and cache.exists():
        problem = _cache_problem(cache)
        if problem is None:
            try:
                model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(str(cache))
                return model.eval(), tokenizer
            except Exception as error:  # safetensors and transformers raise many kinds
                problem = f"{type(error).__name__}: {error}"
        logger.warning("rebuilding the broken weights cache %s (%s)", cache, problem)
        shutil.rmtree(cache, ignore_errors=True)
    logger.info("dequantizing %s for transformers (once; cached in %s)", gguf_path, cache)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as error:
        raise MissingDependencyError(f"{error}; run: pip install gguf") from None
    except (ValueError, OSError, KeyError) as error:
        raise BackendError(f"transformers cannot load {gguf_path}: {error}") from None
    if use_cache:
        _save_cache(model, tokenizer, cache)
    return model.eval(), tokenizer


CACHE_MANIFEST = "curp-cache.json"
_STALE_TEMPORARY_S = 3600.0


def _save_cache(model: Any, tokenizer: Any, cache: Path) -> None:
    """Write the cache beside its final place, then rename it there in one step."""
    # save_pretrained refuses a model that still records its GGUF quantization.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache.parent.glob(f".{cache.name}-*"):
        # Left by a save that was killed; one still being written is younger than this.
        if time.time() - stale.stat().st_mtime > _STALE_TEMPORARY_S:
            shutil.rmtree(stale, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        model.save_pretrained(str(temporary))
        tokenizer.save_pretrained(str(temporary))
        sizes = {p.name: p.stat().st_size for p in sorted(temporary.iterdir()) if p.is_file()}
        (temporary / CACHE_MANIFEST).write_text(json.dumps({"files": sizes}, indent=1))
        try:
            os.rename(temporary, cache)
        except OSError:  # another process finished first: keep theirs
            logger.info("weights cache %s was written concurrently; keeping that one", cache)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _cache_problem(cache: Path) -> str | None:
    """Why a cache folder cannot be trusted (no manifest, a file missing or of another
    size than when written), or None."""
    try:
        files = json.loads((cache / CACHE_MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid manifest: an unfinished or old-format cache"
    for name, size in files.items():
        path = cache / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, {size:,} were written"
    return None


def _gguf_model_id(path: Path) -> str:
    """`model_id_from_gguf` on the metadata read by the gguf package (as llama.cpp would)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise MissingDependencyError(
            "the transformers backend needs gguf; run: pip install 'curp-chain-integrations[hf]'"
        ) from None
    try:
        reader = GGUFReader(str(path))
    except Exception:  # the reader raises ValueError, KeyError, struct errors
        raise BackendError(
            f"cannot read {path}: {gguf_problem(path) or 'not a GGUF file'}"
        ) from None
    metadata: dict[str, str] = {}
    for key in ("general.name", "general.basename", "general.size_label", "general.finetune"):
        field = reader.get_field(key)
        if field is not None:
            metadata[key] = str(field.contents())
    return model_id_from_gguf(path, metadata)


def _refuse_non_finite(source: Path) -> Any:
    """A forward hook on the LM head raising BackendError on NaN or +inf logits."""

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if bool(torch.isnan(output).any()) or bool(torch.isposinf(output).any()):
            raise BackendError(
                f"the model in {source} produced NaN or infinite logits; its weights are "
                "damaged. Reinstall or re-download the model file."
            )

    return hook


def _kv_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_nbytes(cache: Any) -> int:
    """Bytes held by the key and value tensors of a transformers KV cache."""
    tensors = [
        getattr(layer, name, None)
        for layer in getattr(cache, "layers", ())
        for name in ("keys", "values")
    ]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class TransformersBackend(HFTokenizerMixin):
    """A causal LM run by transformers on CPU or GPU, accepting soft prompts.

    Requests queue on the backend's scheduler: one worker thread decodes up to ``slots`` of
    them interleaved, each with its own KV cache; ``max_queued`` more may wait.
    ``prefix_cache_size`` prompt prefixes (the text before the first soft token) are kept
    decoded for later requests with the same prefix (0: off; see ``prefix_cache``).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_id: str | None = None,
        device: str | None = None,
        context_length: int | None = None,
        use_cache: bool = True,
        slots: int = 4,
        max_queued: int = 64,
        prefix_cache_size: int = DEFAULT_PREFIX_CACHE_SIZE,
    ):
        self._prefix_cache: PrefixCache[Any] = PrefixCache(prefix_cache_size, size_of=_cache_nbytes)
        path = check_model_file(model_path)
        self._model_id = model_id or _gguf_model_id(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_gguf_as_hf(path, use_cache=use_cache)
        self.model = model.to(self.device)
        self.model.requires_grad_(False)
        # Damaged weights give NaN logits, and sampling from them an empty reply that looks
        # real: refuse them where the logits are made, for every caller of the model.
        head = self.model.get_output_embeddings()
        if head is not None:
            head.register_forward_hook(_refuse_non_finite(path))
        self.tokenizer = tokenizer
        config = self.model.config
        self._context_length = context_length or int(config.max_position_embeddings)
        self._lock = threading.Lock()  # generate_batch: one batch job at a time
        self._scheduler = RequestScheduler(
            f"transformers {path.name}", slots=slots, max_queued=max_queued
        )
        weakref.finalize(self, self._scheduler.close)
        # transformers 5.x renamed the KV-cache argument from past_key_values to cache.
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._end_ids = {i for i in (tokenizer.eos_token_id, config.eos_token_id) if i is not None}
        # Tool calls and structured output: llguidance grammars (hf_constraints).
        self._grammars = GrammarEngine(tokenizer, self._end_ids, int(config.vocab_size))

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def scheduler(self) -> RequestScheduler:
        """The queue and worker every request of this backend goes through."""
        return self._scheduler

    @property
    def prefix_cache(self) -> PrefixCache[Any]:
        """The decoded prompt prefixes (``stats`` counts hits and tokens reused;
        ``clear()`` empties it)."""
        return self._prefix_cache

    def embed_tokens(self, tokens: Sequence[int]) -> torch.Tensor:
        """(len(tokens), H) input embeddings, exactly as the model's own token path makes them."""
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)[0]

    def prompt_embeddings(
        self, before: Sequence[int], soft: torch.Tensor | None, after: Sequence[int]
    ) -> torch.Tensor:
        """(L, H) embeddings of before + soft + after; gradients flow into ``soft``."""
        parts = [self.embed_tokens(before)] if before else []
        if soft is not None and len(soft):
            parts.append(soft.to(self.device, self.model.dtype))
        if after:
            parts.append(self.embed_tokens(after))
        return torch.cat(parts)

    def _checked_prompt(
        self, prompt: SoftPrompt
    ) -> tuple[list[int], torch.Tensor | None, list[int]]:
        before, after = self.tokenize(prompt.before), self.tokenize(prompt.after)
        soft = None
        if prompt.soft is not None and len(prompt.soft):
            if prompt.soft.ndim != 2 or prompt.soft.shape[1] != self.hidden_size:
                raise BackendError(
                    f"soft tokens have shape {prompt.soft.shape}; "
                    f"this model needs (n, {self.hidden_size})"
                )
            if not after:
                raise BackendError("a soft prompt must be followed by text")
            soft = torch.from_numpy(np.asarray(prompt.soft, dtype=np.float32))
        n_input = len(before) + (0 if soft is None else len(soft)) + len(after)
        if n_input >= self._context_length:
            raise ContextLengthError(
                f"the prompt needs {n_input} tokens ({n_input - len(before) - len(after)} of "
                f"them soft); the context window is {self._context_length}. "
                "Shorten the messages."
            )
        return before, soft, after

    def submit(
        self, prompt: SoftPrompt, params: GenerationParams, *, timeout: float | None = None
    ) -> GenerationStream[GenerationChunk]:
        """Queue a request; read its chunks from the returned stream (sync or async)."""
        before, soft, after = self._checked_prompt(prompt)
        constraint = self._grammars.constraint(params)  # a bad JSON Schema fails here
        return self._scheduler.submit(
            lambda _slot: self._generate(before, soft, after, params, constraint),
            timeout=timeout,
        )

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
        """The request's chunks; closing the iterator stops its generation."""
        return self.submit(prompt, params)

    def _prefill(self, before: list[int], soft: torch.Tensor | None, after: list[int]) -> Any:
        """The model's output on the prompt, with its KV cache. A prompt with soft tokens
        runs in two steps, the text before them and then the rest, so that its reply is the
        same whether that text's cache was restored from the prefix cache or computed."""
        n_input = len(before) + (0 if soft is None else len(soft)) + len(after)
        if soft is None or not before:
            self._prefix_cache.record(decoded=n_input, reused=0)
            embeds = self.prompt_embeddings(before, soft, after)[None]
            return self.model(inputs_embeds=embeds, use_cache=True)
        key = self._prefix_cache.key(before)
        saved = self._prefix_cache.get(key) if key is not None else None
        if saved is not None:
            cache = copy.deepcopy(saved)  # the request's forward passes extend it in place
        else:
            prefix = self.model(inputs_embeds=self.embed_tokens(before)[None], use_cache=True)
            cache = _kv_cache(prefix)
            if key is not None:
                self._prefix_cache.put(key, copy.deepcopy(cache))
        reused = 0 if saved is None else len(before)
        self._prefix_cache.record(decoded=n_input - reused, reused=reused)
        rest = self.prompt_embeddings([], soft, after)[None]
        return self.model(inputs_embeds=rest, use_cache=True, **{self._cache_argument: cache})

    @torch.no_grad()
    def _generate(
        self,
        before: list[int],
        soft: torch.Tensor | None,
        after: list[int],
        params: GenerationParams,
        constraint: GuidanceConstraint | None = None,
    ) -> Iterator[GenerationChunk]:
        """Prefill and decode with a KV cache of this request's own (on the worker), under
        ``constraint`` (a grammar) when given."""
        n_soft = 0 if soft is None else len(soft)
        n_input = len(before) + n_soft + len(after)
        out = self._prefill(before, soft, after)
        state = {"cache": _kv_cache(out)}

        def feed(token: int) -> Logits:
            ids = torch.tensor([[token]], device=self.device)
            step = self.model(
                input_ids=ids, use_cache=True, **{self._cache_argument: state["cache"]}
            )
            state["cache"] = _kv_cache(step)
            return step.logits[0, -1].float().cpu().numpy()

        yield from decode_loop(
            out.logits[0, -1].float().cpu().numpy(),
            feed,
            self.detokenize,
            lambda token: token in self._end_ids,
            params,
            max_new_tokens=min(params.max_tokens, self._context_length - n_input),
            input_tokens=n_input,
            soft_tokens=n_soft,
            constraint=constraint,
            echo=[self.tokenize(text) for text in params.no_echo],
        )

    @torch.no_grad()
    def generate_batch(
        self, prompts: Sequence[str], params: GenerationParams, max_tokens: Sequence[int]
    ) -> list[tuple[str, str]]:
        """Replies to text-only prompts (already templated), decoded side by side.

        Greedy or sampled as ``params`` says, with the same rule as :meth:`stream` for
        repeated n-grams (the reply's own and ``params.no_echo``'s); ``max_tokens[i]``
        bounds reply ``i``.
        Returns (text, finish_reason) per prompt, finish_reason "stop" or "length". Batch
        jobs (paraphrasing training data) use this; interactive replies use :meth:`stream`.
        """
        if len(prompts) != len(max_tokens):
            raise ValueError("give one max_tokens per prompt")
        if not prompts:
            return []
        from transformers import LogitsProcessor, LogitsProcessorList

        tokenizer = self.tokenizer
        if tokenizer.pad_token is None:  # padded positions are masked out: any token will do
            tokenizer.pad_token = tokenizer.eos_token
        pad_id = tokenizer.pad_token_id
        inputs = tokenizer(
            list(prompts),
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(self.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        ngram = params.no_repeat_ngram_size
        echo = [self.tokenize(text) for text in params.no_echo]

        class _BlockGeneratedNgrams(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                generated = input_ids[:, prompt_length:].tolist()
                for row, tokens in enumerate(generated):
                    banned = banned_by_ngrams(tokens, ngram) | banned_by_echo(tokens, echo)
                    if banned:
                        scores[row, list(banned)] = -float("inf")
                return scores

        sampling: dict[str, Any] = {"do_sample": params.temperature > 0}
        if params.temperature > 0:
            sampling.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        with self._lock:
            output = self.model.generate(
                **inputs,
                max_new_tokens=max(max_tokens),
                logits_processor=LogitsProcessorList([_BlockGeneratedNgrams()]),
                eos_token_id=sorted(self._end_ids),
                pad_token_id=pad_id,
                **sampling,
            )
        replies = []
        for row, limit in enumerate(max_tokens):
            tokens = output[row, prompt_length:].tolist()
            end = next((i for i, t in enumerate(tokens) if t in self._end_ids), None)
            if end is not None and end < limit:
                replies.append((self.detokenize(tokens[:end]), "stop"))
            else:
                replies.append((self.detokenize(tokens[:limit]), "length"))
        return replies
