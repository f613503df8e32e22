"""vLLM backend for GPUs: soft tokens enter through vLLM's prompt-embeddings input.

The prompt is built exactly as for the other backends (``build_soft_prompt``); its text
pieces are embedded with the model's own input-embedding table (read from the weights),
the user's soft tokens go between them, and vLLM generates from the whole sequence
(``enable_prompt_embeds``). vLLM batches requests across users itself (continuous
batching), each with its own KV cache.

Prefix caching: vLLM's automatic prefix caching is turned on where it keys cached KV blocks
by their prompt embeddings (vllm-project/vllm#27219: each 16-token block's key chains the
previous block's key with a SHA-256 of the block's embedding bytes). A block that lies
wholly in the text before the first soft token (system message, tools, template) is then
shared by every request with the same text, whatever the user; a block holding a soft token,
and every block after it, is reused only by a request whose embeddings up to there are
byte-identical (the same user's same soft tokens), which computes the very same KV. On an
older vLLM, whose keys would not tell embeddings apart, it stays off.

Only for trusted callers: vLLM may crash on an embedding of the wrong shape, so shapes
are checked here first. n-gram blocking and logprobs are not offered on this backend.

Tool calls and structured output: the JSON-Schema constraints become vLLM structured outputs
with the same Lark grammars the transformers backend decodes under (``hf_constraints``),
run by vLLM's "guidance" structured-outputs engine (llguidance, as on transformers) unless
``engine_options`` choose another.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curp_chain.errors import BackendError, ContextLengthError, MissingDependencyError
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, SoftPrompt
from curp_chain.locations import DEFAULT_LLM_ID
from curp_chain.runtime.scheduler import GenerationStream, RequestScheduler
from curp_chain_integrations.backends.hf_constraints import check_grammar, constraint_grammar
from curp_chain_integrations.backends.hf_tokenizer import HFTokenizerMixin

logger = logging.getLogger(__name__)
VLLM_INSTALL = "pip install 'curp-chain-integrations[vllm]'  (on a machine with a CUDA GPU)"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MissingDependencyError(f"the vLLM backend needs vLLM; run: {VLLM_INSTALL}") from None
    return vllm


def embeddings_keyed_prefix_cache() -> bool:
    """Whether the installed vLLM keys prefix-cache blocks by their prompt embeddings (the
    function that hashes them arrived with vllm-project/vllm#27219)."""
    try:
        from vllm.v1.core import kv_cache_utils
    except ImportError:
        return False
    return hasattr(kv_cache_utils, "_gen_prompt_embeds_extra_hash_keys")


def input_embeddings(folder: Path) -> torch.Tensor:
    """The (vocab, hidden) input-embedding table from a Hugging Face folder's safetensors."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith("embed_tokens.weight"):
                    return weights.get_tensor(name)
    raise BackendError(f"no embed_tokens.weight in the safetensors files of {folder}")


def guidance_structured_outputs() -> Any:
    """vLLM's structured-outputs setting with llguidance as its engine, or None on a vLLM
    without it (before 0.11)."""
    try:
        from vllm.config import StructuredOutputsConfig
    except ImportError:
        return None
    return StructuredOutputsConfig(backend="guidance")


class VLLMBackend(HFTokenizerMixin):
    """A Hugging Face-format model served by vLLM, accepting soft prompts.

    Args:
        model: a Hugging Face model folder (safetensors). For the bundled SmolLM2, the
            folder ``TransformersBackend`` writes under ``$CURP_HOME/hf-cache`` holds the
            same weights llama.cpp runs, so one CURP checkpoint serves all three backends.
        model_id: identifier checked against checkpoints; the default LLM id when None.
        max_queued: requests waiting beyond ``max_num_seqs`` before QueueFullError.
        enable_prefix_caching: reuse the KV blocks of a prompt start another request
            computed (module docstring); stays off on a vLLM that cannot key them by the
            prompt embeddings.
        engine_options: passed to ``vllm.EngineArgs`` (``gpu_memory_utilization``,
            ``max_model_len``, ``tensor_parallel_size``, ``max_num_seqs`` ...).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        model_id: str | None = None,
        max_queued: int = 1024,
        enable_prefix_caching: bool = True,
        **engine_options: Any,
    ):
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self._vllm = vllm
        folder = Path(model)
        self._model_id = model_id or DEFAULT_LLM_ID
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._embeddings = input_embeddings(folder)
        caching = enable_prefix_caching and embeddings_keyed_prefix_cache()
        if enable_prefix_caching and not caching:
            logger.warning(
                "this vLLM cannot key cached prefixes by prompt embeddings; prefix caching "
                "stays off (upgrade vLLM to turn it on)"
            )
        self.prefix_caching = caching  # whether vLLM reuses cached prefixes of these prompts
        guidance = guidance_structured_outputs()  # the engine the grammars are written for
        if guidance is not None:
            engine_options.setdefault("structured_outputs_config", guidance)
        args = vllm.EngineArgs(
            model=str(folder),
            enable_prompt_embeds=True,
            enable_prefix_caching=caching,
            **engine_options,
        )
        self.engine = vllm.LLMEngine.from_engine_args(args)
        config = json.loads((folder / "config.json").read_text())
        self._context_length = int(
            engine_options.get("max_model_len") or config["max_position_embeddings"]
        )
        slots = int(engine_options.get("max_num_seqs", 256))
        self._scheduler = RequestScheduler(
            f"vLLM {folder.name}", slots=slots, max_queued=max_queued
        )
        self._outputs: dict[str, deque[Any]] = {}
        self._ids = itertools.count()
        self._warned_ngrams = False

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def hidden_size(self) -> int:
        return int(self._embeddings.shape[1])

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def scheduler(self) -> RequestScheduler:
        return self._scheduler

    def prompt_embeddings(self, prompt: SoftPrompt) -> torch.Tensor:
        """(L, H) embeddings of before + soft + after, checked against the model."""
        before, after = self.tokenize(prompt.before), self.tokenize(prompt.after)
        parts = [self._embeddings[before]]
        if prompt.soft is not None and len(prompt.soft):
            soft = np.asarray(prompt.soft, dtype=np.float32)
            if soft.ndim != 2 or soft.shape[1] != self.hidden_size:
                raise BackendError(
                    f"soft tokens have shape {soft.shape}; this model needs (n, {self.hidden_size})"
                )
            if not after:
                raise BackendError("a soft prompt must be followed by text")
            parts.append(torch.from_numpy(soft).to(self._embeddings.dtype))
        parts.append(self._embeddings[after])
        embeds = torch.cat(parts)
        if len(embeds) >= self._context_length:
            raise ContextLengthError(
                f"the prompt needs {len(embeds)} tokens; the context window is "
                f"{self._context_length}. Shorten the messages."
            )
        return embeds

    def _sampling(self, params: GenerationParams) -> Any:
        if params.logprobs:
            raise BackendError(
                "logprobs are offered by the llama.cpp and transformers backends only"
            )
        if (params.no_repeat_ngram_size or params.no_echo) and not self._warned_ngrams:
            logger.warning(
                "vLLM backend: n-gram blocking (no_repeat_ngram_size, no_echo) is not applied"
            )
            self._warned_ngrams = True
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        grammar = constraint_grammar(params)
        if grammar is not None:
            check_grammar(grammar)  # a bad JSON Schema fails here, not inside the engine
            structured = StructuredOutputsParams(grammar=grammar)
        return self._vllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured,
        )

    def submit(
        self, prompt: SoftPrompt, params: GenerationParams, *, timeout: float | None = None
    ) -> GenerationStream[GenerationChunk]:
        """Queue a request; vLLM batches it with the others. Read chunks sync or async."""
        embeds = self.prompt_embeddings(prompt)
        sampling = self._sampling(params)
        n_soft = 0 if prompt.soft is None else len(prompt.soft)
        return self._scheduler.submit(
            lambda _slot: self._generate(embeds, sampling, n_soft), timeout=timeout
        )

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self.submit(prompt, params)

    def _generate(
        self, embeds: torch.Tensor, sampling: Any, n_soft: int
    ) -> Iterator[GenerationChunk]:
        """One request on the worker: every engine step advances all requests at once and
        files each one's output in its own queue."""
        request_id = f"curp-{next(self._ids)}"
        queue: deque[Any] = deque()
        self._outputs[request_id] = queue
        self.engine.add_request(request_id, {"prompt_embeds": embeds}, sampling)
        finished = False
        generated = 0
        try:
            while not finished:
                while not queue:
                    for output in self.engine.step():
                        target = self._outputs.get(output.request_id)
                        if target is not None:
                            target.append(output)
                output = queue.popleft()
                piece = output.outputs[0]
                generated += len(piece.token_ids)
                finished = output.finished
                if not finished:
                    yield GenerationChunk(piece.text, token_ids=tuple(piece.token_ids))
            reason = "length" if piece.finish_reason == "length" else "stop"
            usage = {"input_tokens": len(embeds), "output_tokens": generated, "soft_tokens": n_soft}
            yield GenerationChunk(piece.text, finish_reason=reason, usage=usage)
        finally:
            del self._outputs[request_id]
            if not finished:
                self.engine.abort_request([request_id])

    def close(self) -> None:
        self._scheduler.close()
