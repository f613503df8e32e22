"""The typed configuration of a CURP user model, saved as config.json beside its weights."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curp_chain.locations import DEFAULT_ENCODER_ID, DEFAULT_LLM_ID

CHECKPOINT_FORMAT_VERSION = 2
"""2: style features, and soft tokens made as a base prompt plus a history-made offset."""


class CurpConfig(BaseModel):
    """Shapes of the codebook, aggregator and projector, and the parts they were made for.

    ``encoder_id``/``encoder_dim`` and ``llm_id``/``llm_hidden_size`` pin the frozen models
    the weights belong to: a checkpoint only makes sense with exactly those.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CHECKPOINT_FORMAT_VERSION
    encoder_id: str = DEFAULT_ENCODER_ID
    """Identifier of the frozen sentence encoder that embeds history items."""
    encoder_dim: int = Field(384, gt=0)
    llm_id: str = DEFAULT_LLM_ID
    """Identifier of the frozen LLM whose input-embedding space the soft tokens live in."""
    llm_hidden_size: int = Field(576, gt=0)
    style_dim: int = Field(0, ge=0)
    """Style features appended to the encoder vector (:mod:`curp_chain.model.style`): 0 (none) or
    ``STYLE_DIM``. They form one codebook subspace of their own."""
    num_subspaces: int = Field(8, gt=0, le=64)
    """M: the item vector (encoder vector, then style features) is split into M equal parts,
    each quantized on its own."""
    codebook_size: int = Field(64, ge=2, le=65536)
    """K: prototypes per subspace; each item becomes M integers in [0, K)."""
    num_trait_tokens: int = Field(4, ge=0, le=64)
    """Soft tokens summarising the whole quantized history (the user's traits)."""
    query_aware: bool = True
    """Add one soft token made by the current query attending over the user's items."""
    model_dim: int = Field(128, gt=0)
    """Width of the aggregator."""
    num_heads: int = Field(4, gt=0)
    projector_hidden: int = Field(384, gt=0)
    """Hidden width of the MLP that maps aggregator tokens into the LLM's embedding space."""
    soft_token_rms: float = Field(0.13, gt=0)
    """Initial root-mean-square of each soft token, matched to the LLM's own token embeddings
    (0.13 for SmolLM2-135M)."""
    max_history_items: int = Field(64, gt=0)
    """Newest items of a history used per request."""
    chat_system_message: str | None = None
    """The system message a personalized request is sent with when the caller sends none:
    one the soft tokens were trained under, chosen for ordinary chat by measurement
    (docs/experiments.md, "everyday chat"). None: no system message, so the chat template
    may add its own. A caller's own system message always wins."""
    trained: bool = False
    """False for an untrained initialisation: replies are then not meaningfully personalized."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """How the weights were made: command, data, steps, losses, wall time."""

    @model_validator(mode="after")
    def _check_shapes(self) -> CurpConfig:
        from curp_chain.model.style import STYLE_DIM

        if self.style_dim not in (0, STYLE_DIM):
            raise ValueError(
                f"style_dim={self.style_dim}: use 0 (no style features) or {STYLE_DIM}"
            )
        if self.item_dim % self.num_subspaces:
            raise ValueError(
                f"the item vector ({self.encoder_dim} encoder + {self.style_dim} style) is not "
                f"divisible by num_subspaces={self.num_subspaces}; pick M dividing {self.item_dim}"
            )
        if self.style_dim and self.subspace_dim != self.style_dim:
            raise ValueError(
                f"style features must form one subspace of their own: with style_dim="
                f"{self.style_dim}, use num_subspaces={self.item_dim // self.style_dim}"
            )
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_trait_tokens == 0 and not self.query_aware:
            raise ValueError(
                "num_trait_tokens=0 with query_aware=False leaves no soft token; "
                "set num_trait_tokens >= 1 or query_aware=True"
            )
        if self.format_version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"checkpoint format_version={self.format_version} is not supported by this "
                f"curp-chain (it reads version {CHECKPOINT_FORMAT_VERSION}); upgrade curp-chain "
                "or re-export the checkpoint"
            )
        return self

    @property
    def item_dim(self) -> int:
        """Width of an item vector before quantization: encoder vector plus style features."""
        return self.encoder_dim + self.style_dim

    @property
    def item_encoder_id(self) -> str:
        """What makes item vectors: the encoder, and the style feature set when used."""
        if not self.style_dim:
            return self.encoder_id
        from curp_chain.model.style import STYLE_VERSION

        return f"{self.encoder_id}+{STYLE_VERSION}"

    @property
    def subspace_dim(self) -> int:
        return self.item_dim // self.num_subspaces

    @property
    def num_soft_tokens(self) -> int:
        return self.num_trait_tokens + int(self.query_aware)
