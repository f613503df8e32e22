"""Words from codes: the user's items nearest a request, decoded into words the LLM reads.

SmolLM2-135M weaves a few words of the user's items nearest a request into an everyday answer
when they stand in the user turn, but not a soft token trained from scratch on this CPU, nor
the same words in the system message (docs/experiments.md, 20). So the query-aware readout
is decoded into the LLM's vocabulary: a linear decoder maps an item's quantized vector (its
codes through the codebook; the text is never read) to a distribution over a word
vocabulary, the items nearest the request (cosine of the request's encoder vector and the
items' quantized ones) pool their distributions, and the likeliest telling words are placed
before the request.

Saved beside a checkpoint as ``item_words.safetensors`` (the decoder) and
``item_words.json`` (:class:`ItemWordsConfig`: vocabulary, idf, how many items and words).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from curp_chain.errors import CheckpointError
from curp_chain.model.user_model import CurpUserModel

WEIGHTS_FILE = "item_words.safetensors"
CONFIG_FILE = "item_words.json"

WORDS_LEAD = "Some things I wrote about:"
WORDS_ASK = "Suggest something that fits them."
"""The line before the request: the words, in the user's own voice, then the ask. The words
stand in the user turn, where SmolLM2 uses them; the ask makes it use them more (both
measured: docs/experiments.md, 20)."""


def words_line(words: Sequence[str]) -> str:
    """The line that tells the LLM the words; the reply must not echo it (a small model
    may repeat it instead of answering: GenerationParams.no_echo)."""
    return f"{WORDS_LEAD} {', '.join(words)}. {WORDS_ASK}"


def with_words(request: str, words: Sequence[str]) -> str:
    """The user turn with the words before the request; the request alone when none."""
    if not words:
        return request
    return f"{words_line(words)}\n\n{request}"


class ItemWordsConfig(BaseModel):
    """The decoder's vocabulary and how its words are chosen for a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_dim: int = Field(gt=0)
    """Width of a quantized item vector (encoder vector plus style features)."""
    rank: int = Field(0, ge=0)
    """Width of the bottleneck between the item vector and the vocabulary (0: none), which
    keeps the decoder small enough to ship beside a checkpoint."""
    encoder_dim: int = Field(gt=0)
    """The encoder part of an item vector, which the request is compared with."""
    codebook_version: str
    """The codebook the decoder was trained on: codes of another one mean other vectors."""
    vocabulary: list[str] = Field(min_length=1)
    idf: list[float]
    """log(users / users using the word), over the training users: how telling a word is."""
    max_items: int = Field(100, gt=0)
    """Newest items of a history whose codes the words may come from."""
    nearest_items: int = Field(4, gt=0)
    """Items nearest the request whose words are pooled."""
    words: int = Field(8, gt=0)
    """Words placed before the request."""
    min_probability: float = Field(0.001, ge=0)
    """A pooled word below this is left out, however rare: the decoder does not believe it."""
    provenance: dict[str, Any] = Field(default_factory=dict)


class ItemWordDecoder(nn.Module):
    """Quantized item vector (D) -> log-probabilities over the vocabulary (V)."""

    idf: Tensor

    def __init__(self, config: ItemWordsConfig):
        super().__init__()
        if len(config.idf) != len(config.vocabulary):
            raise CheckpointError("item words: the idf list does not match the vocabulary")
        self.config = config
        vocabulary = len(config.vocabulary)
        if config.rank:
            self.linear: nn.Module = nn.Sequential(
                nn.Linear(config.item_dim, config.rank, bias=False),
                nn.Linear(config.rank, vocabulary),
            )
        else:
            self.linear = nn.Linear(config.item_dim, vocabulary)
        self.register_buffer("idf", torch.tensor(config.idf), persistent=False)

    def forward(self, vectors: Tensor) -> Tensor:
        """(N, D) -> (N, V) log-probabilities."""
        return F.log_softmax(self.linear(vectors), dim=-1)

    @torch.inference_mode()
    def words_for(self, item_vectors: Tensor, query_vector: Tensor) -> list[str]:
        """The words for a request: item_vectors (N, D) quantized, query_vector (encoder_dim,)
        or (D,) unit. The nearest items' distributions are pooled and each word is ranked by
        its pooled probability times its idf: likely and telling words first (rarity alone
        picks guesses, probability alone picks words everyone uses)."""
        dim = self.config.encoder_dim
        similarity = F.normalize(item_vectors[:, :dim], dim=-1) @ query_vector[:dim]
        take = min(self.config.nearest_items, len(item_vectors))
        nearest = similarity.topk(take).indices
        pooled = self(item_vectors[nearest]).exp().mean(0)  # (V,)
        believable = pooled >= self.config.min_probability
        score = torch.where(believable, pooled * self.idf, torch.full_like(pooled, -1.0))
        order = score.argsort(descending=True)[: self.config.words]
        return [self.config.vocabulary[i] for i in order.tolist() if bool(believable[i])]


def check_item_words(decoder: ItemWordDecoder, model: CurpUserModel) -> None:
    """CheckpointError unless the decoder was trained on ``model``'s codebook."""
    version = model.quantizer.version(model.config.item_encoder_id)
    if (
        decoder.config.codebook_version != version
        or decoder.config.item_dim != model.config.item_dim
    ):
        raise CheckpointError(
            "the item-word decoder was trained on another codebook "
            f"({decoder.config.codebook_version}, not {version}); retrain it for this checkpoint"
        )


def save_item_words(folder: str | Path, decoder: ItemWordDecoder) -> None:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    # Half precision halves what ships beside a checkpoint; the ranking of words does not
    # change, and loading casts back to float32.
    weights = {k: v.detach().half().contiguous() for k, v in decoder.state_dict().items()}
    save_file(weights, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(decoder.config.model_dump_json(indent=1) + "\n")


def has_item_words(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def load_item_words(folder: str | Path) -> ItemWordDecoder:
    """The decoder saved in ``folder``, in eval mode; CheckpointError when it is damaged."""
    path = Path(folder)
    try:
        config = ItemWordsConfig.model_validate(json.loads((path / CONFIG_FILE).read_text()))
        state = load_file(str(path / WEIGHTS_FILE))
        decoder = ItemWordDecoder(config)
        decoder.load_state_dict(state)
    except (OSError, ValueError, ValidationError, RuntimeError) as error:
        raise CheckpointError(f"cannot load the item-word decoder in {path}: {error}") from None
    return decoder.eval()
