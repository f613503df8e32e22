"""vLLM backend for GPUs: soft tokens enter through vLLM's prompt-embeddings input.

The prompt is built exactly as for the other backends (``build_soft_prompt``); its text
pieces are embedded with the model's own input-embedding table (read from the weights),
the user's soft tokens go between them, and vLLM generates from the whole sequence
(``enable_prompt_embeds``). vLLM batches requests across users itself (continuous
batching), each with its own KV cache: prompt embeddings are never prefix-cached.

Only for trusted callers: vLLM may crash on an embedding of the wrong shape, so shapes
are checked here first. n-gram blocking, logprobs and JSON-Schema constraints are not
offered on this backend.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curp_chain.errors import BackendError, ContextLengthError, MissingDependencyError
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, SoftPrompt
from curp_chain.locations import DEFAULT_LLM_ID
from curp_chain.runtime.scheduler import GenerationStream, RequestScheduler

logger = logging.getLogger(__name__)
VLLM_INSTALL = "pip install 'curp-chain-integrations[vllm]'  (on a machine with a CUDA GPU)"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MissingDependencyError(f"the vLLM backend needs vLLM; run: {VLLM_INSTALL}") from None
    return vllm


def input_embeddings(folder: Path) -> torch.Tensor:
    """The (vocab, hidden) input-embedding table from a Hugging Face folder's safetensors."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith("embed_tokens.weight"):
                    return weights.get_tensor(name)
    raise BackendError(f"no embed_tokens.weight in the safetensors files of {folder}")


class VLLMBackend:
    """A Hugging Face-format model served by vLLM, accepting soft prompts.

    Args:
        model: a Hugging Face model folder (safetensors). For the bundled SmolLM2, the
            folder ``TransformersBackend`` writes under ``$CURP_HOME/hf-cache`` holds the
            same weights llama.cpp runs, so one CURP checkpoint serves all three backends.
        model_id: identifier checked against checkpoints; the default LLM id when None.
        max_queued: requests waiting beyond ``max_num_seqs`` before QueueFullError.
        engine_options: passed to ``vllm.EngineArgs`` (``gpu_memory_utilization``,
            ``max_model_len``, ``tensor_parallel_size``, ``max_num_seqs`` ...).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        model_id: str | None = None,
        max_queued: int = 1024,
        **engine_options: Any,
    ):
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self._vllm = vllm
        folder = Path(model)
        self._model_id = model_id or DEFAULT_LLM_ID
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._embeddings = input_embeddings(folder)
        args = vllm.EngineArgs(model=str(folder), enable_prompt_embeds=True, **engine_options)
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
        self._special = {
            "bos_token": self.tokenizer.bos_token or "",
            "eos_token": self.tokenizer.eos_token or "",
        }
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
    def chat_template(self) -> str:
        return str(self.tokenizer.chat_template or "")

    @property
    def special_tokens(self) -> Mapping[str, str]:
        return self._special

    @property
    def scheduler(self) -> RequestScheduler:
        return self._scheduler

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

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
        if params.json_schema is not None or params.logprobs:
            raise BackendError(
                "JSON-Schema constraints and logprobs are offered by the llama.cpp backend only"
            )
        if params.no_repeat_ngram_size and not self._warned_ngrams:
            logger.warning("vLLM backend: n-gram repeat blocking is not applied")
            self._warned_ngrams = True
        from vllm.sampling_params import RequestOutputKind

        return self._vllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            output_kind=RequestOutputKind.DELTA,
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
