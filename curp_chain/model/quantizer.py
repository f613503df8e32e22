"""Product quantization of encoder vectors against a codebook of prototypes.

Each D-dimensional item vector is split into M subspaces of D/M dimensions; each part is
replaced by its nearest of K prototypes. An item is then stored as M small integers.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuantizerOutput(NamedTuple):
    quantized: Tensor
    """(..., D) nearest prototypes, with a straight-through gradient to the input."""
    codes: Tensor
    """(..., M) long: index of the chosen prototype in each subspace."""
    loss: Tensor
    """Scalar: codebook loss + beta * commitment loss (zero in eval mode)."""


def squared_distances(parts: Tensor, prototypes: Tensor) -> Tensor:
    """(N, M, d) parts and (M, K, d) prototypes -> (N, M, K) squared distances."""
    # ||a - b||^2 = ||a||^2 - 2ab + ||b||^2, computed per subspace with one batched matmul.
    cross = torch.einsum("nmd,mkd->nmk", parts, prototypes)
    return parts.pow(2).sum(-1, keepdim=True) - 2 * cross + prototypes.pow(2).sum(-1)[None]


class ProductQuantizer(nn.Module):
    """M independent codebooks of K prototypes, one per subspace of the encoder vector."""

    def __init__(self, dim: int, num_subspaces: int, codebook_size: int, beta: float = 0.25):
        super().__init__()
        if dim % num_subspaces:
            raise ValueError(f"dim={dim} is not divisible by num_subspaces={num_subspaces}")
        self.dim = dim
        self.num_subspaces = num_subspaces
        self.codebook_size = codebook_size
        self.beta = beta
        sub = dim // num_subspaces
        # Unit-norm encoder vectors have parts of norm about sqrt(sub/dim); start there.
        init = torch.randn(num_subspaces, codebook_size, sub) / dim**0.5
        self.prototypes = nn.Parameter(init)  # (M, K, d)

    def split(self, x: Tensor) -> Tensor:
        """(..., D) -> (N, M, d) with N the product of leading dims."""
        return x.reshape(-1, self.num_subspaces, self.dim // self.num_subspaces)

    def distances(self, x: Tensor) -> Tensor:
        """(..., D) -> (N, M, K) squared distances of each part to each prototype."""
        return squared_distances(self.split(x), self.prototypes)

    def encode(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., M) long codes."""
        codes = self.distances(x).argmin(-1)
        return codes.reshape(*x.shape[:-1], self.num_subspaces)

    def decode(self, codes: Tensor) -> Tensor:
        """(..., M) codes -> (..., D) concatenated prototypes."""
        if codes.shape[-1] != self.num_subspaces:
            raise ValueError(
                f"codes have {codes.shape[-1]} entries per item; this codebook has "
                f"{self.num_subspaces} subspaces"
            )
        flat = codes.reshape(-1, self.num_subspaces)
        subspace = torch.arange(self.num_subspaces, device=codes.device)
        parts = self.prototypes[subspace[None, :], flat]  # (N, M, d)
        return parts.reshape(*codes.shape[:-1], self.dim)

    def forward(self, x: Tensor) -> QuantizerOutput:
        codes = self.encode(x)
        quantized = self.decode(codes)
        if self.training:
            codebook_loss = F.mse_loss(quantized, x.detach())
            commitment_loss = F.mse_loss(x, quantized.detach())
            loss = codebook_loss + self.beta * commitment_loss
            quantized = x + (quantized - x).detach()  # straight-through estimator
        else:
            loss = x.new_zeros(())
        return QuantizerOutput(quantized, codes, loss)

    def version(self, encoder_id: str) -> str:
        """A short hash of the prototypes and encoder: cached codes are valid only for it."""
        digest = hashlib.sha256(encoder_id.encode())
        digest.update(self.prototypes.detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
