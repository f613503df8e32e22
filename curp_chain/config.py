"""The typed configuration of a CURP user model, saved as config.json beside its weights."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

CHECKPOINT_FORMAT_VERSION = 1

DEFAULT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_LLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
    num_subspaces: int = Field(8, gt=0, le=64)
    """M: the encoder vector is split into M equal parts, each quantized on its own."""
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
    trained: bool = False
    """False for an untrained initialisation: replies are then not meaningfully personalized."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """How the weights were made: command, data, steps, losses, wall time."""

    @model_validator(mode="after")
    def _check_shapes(self) -> CurpConfig:
        if self.encoder_dim % self.num_subspaces:
            raise ValueError(
                f"encoder_dim={self.encoder_dim} is not divisible by "
                f"num_subspaces={self.num_subspaces}; pick M dividing {self.encoder_dim}"
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
    def subspace_dim(self) -> int:
        return self.encoder_dim // self.num_subspaces

    @property
    def num_soft_tokens(self) -> int:
        return self.num_trait_tokens + int(self.query_aware)
