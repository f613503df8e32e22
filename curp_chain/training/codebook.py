"""Stage 1: the product-quantization codebook, trained on encoder embeddings of history items.

Each subspace starts from balanced k-means (every prototype gets about N/K items, so none
starts dead), then trains by minibatch gradient descent on the VQ reconstruction and
commitment losses plus a usage term: the KL divergence between the batch's mean soft
assignment and the uniform distribution. Soft assignments carry a gradient (argmax counts
do not), so the term really pushes idle prototypes towards data. Prototypes that still go
unused are re-seeded on random items.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from curp_chain.data.users import text_key
from curp_chain.errors import CurpError
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.quantizer import ProductQuantizer, squared_distances
from curp_chain.training.options import CodebookOptions

logger = logging.getLogger(__name__)


# --- the embedding cache --------------------------------------------------------------------


def _key_int(text: str) -> int:
    # The first 63 bits of the text's hash, as a signed-safe int64.
    return int(text_key(text), 16) >> 1


class EmbeddingCache:
    """Encoder vectors of texts, stored as one safetensors file (keys + vectors), encoded once.

    The file belongs to one encoder: name it after the encoder (see :func:`embedding_cache_path`).
    """

    def __init__(self, path: str | Path, encoder: SentenceEncoder):
        self.path = Path(path)
        self.encoder = encoder
        self._rows: dict[int, int] = {}
        self._vectors = torch.zeros(0, 0)
        if self.path.is_file():
            state = load_file(str(self.path))
            self._vectors = state["vectors"]
            self._rows = {int(k): i for i, k in enumerate(state["keys"].tolist())}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, texts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        """(len(texts), D) vectors; texts not cached yet are encoded and the file rewritten."""
        missing = list(dict.fromkeys(t for t in texts if _key_int(t) not in self._rows))
        if missing:
            logger.info("encoding %d new texts into %s", len(missing), self.path)
            # Batches of similar length waste less work on padding.
            by_length = sorted(range(len(missing)), key=lambda i: len(missing[i]))
            encoded = self.encoder.encode([missing[i] for i in by_length], progress=progress)
            new = torch.empty_like(encoded)
            new[torch.tensor(by_length)] = encoded
            start = len(self._rows)
            vectors = new if not len(self._rows) else torch.cat([self._vectors, new])
            self._vectors = vectors
            for offset, text in enumerate(missing):
                self._rows[_key_int(text)] = start + offset
            self.save()
        index = torch.tensor([self._rows[_key_int(t)] for t in texts], dtype=torch.long)
        return self._vectors[index] if len(texts) else torch.zeros(0, self.encoder.dim)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = torch.tensor(list(self._rows), dtype=torch.long)
        # One temporary file per process: two runs that share a cache (a CURP run and its
        # task-only baseline side by side) each replace the file whole, never half-written.
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        save_file({"keys": keys, "vectors": self._vectors.contiguous()}, str(tmp))
        tmp.replace(self.path)


def embedding_cache_path(cache_dir: str | Path, encoder_id: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in encoder_id.split("/")[-1].lower())
    return Path(cache_dir) / f"embeddings-{slug}.safetensors"


# --- balanced k-means -------------------------------------------------------------------------


def capacity_assign(distances: torch.Tensor, capacity: int) -> torch.Tensor:
    """Assign N points to K clusters of at most ``capacity`` points each, greedily by distance.

    distances (N, K); returns (N,) long. In each round every unassigned point proposes to its
    nearest cluster that still has room, and each cluster accepts its nearest proposers up to
    its room; a full cluster drops out. Needs capacity * K >= N.
    """
    n, k = distances.shape
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} clusters cannot hold {n} points")
    assign = torch.full((n,), -1, dtype=torch.long)
    room = torch.full((k,), capacity, dtype=torch.long)
    while True:
        pending = (assign < 0).nonzero().squeeze(1)
        if not len(pending):
            return assign
        masked = distances[pending].masked_fill((room == 0)[None], math.inf)
        cost, choice = masked.min(1)
        # Group proposals by cluster, nearest first: sort by cost, then stably by cluster.
        by_cost = cost.argsort()
        order = by_cost[choice[by_cost].argsort(stable=True)]
        grouped = choice[order]
        first = torch.searchsorted(grouped, grouped, right=False)
        rank = torch.arange(len(order)) - first
        accept = rank < room[grouped]
        assign[pending[order[accept]]] = grouped[accept]
        room -= torch.bincount(grouped[accept], minlength=k)


def balanced_kmeans(
    points: torch.Tensor, k: int, *, iterations: int = 12, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means whose clusters hold at most ceil(N/K) points each.

    Returns centroids (K, d) and the assignment (N,)."""
    n = points.shape[0]
    if n < k:
        raise ValueError(f"balanced k-means needs at least k={k} points, got {n}")
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(n, generator=generator)[:k]].clone()
    capacity = math.ceil(n / k)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        distances = torch.cdist(points, centroids).pow(2)
        assign = capacity_assign(distances, capacity)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).clamp(min=1)
        centroids = sums / counts[:, None]
    return centroids, assign


def kmeans_init(
    quantizer: ProductQuantizer,
    vectors: torch.Tensor,
    *,
    iterations: int = 12,
    max_points: int = 20000,
    seed: int = 0,
) -> list[int]:
    """Set every subspace's prototypes by balanced k-means; returns the largest cluster size
    per subspace (each is ceil(N/K) or less)."""
    generator = torch.Generator().manual_seed(seed)
    sample = vectors[torch.randperm(len(vectors), generator=generator)[:max_points]]
    parts = quantizer.split(sample)  # (N, M, d)
    largest = []
    with torch.no_grad():
        for m in range(quantizer.num_subspaces):
            centroids, assign = balanced_kmeans(
                parts[:, m], quantizer.codebook_size, iterations=iterations, seed=seed + m
            )
            quantizer.prototypes[m] = centroids
            largest.append(int(torch.bincount(assign).max()))
    return largest


# --- training ----------------------------------------------------------------------------------


def usage_loss(parts: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(mean soft assignment || uniform), averaged over subspaces; differentiable.

    parts (B, M, d), prototypes (M, K, d). Soft assignments are a softmax over negative
    squared distances scaled by ``temperature`` times their batch mean.
    """
    distances = squared_distances(parts, prototypes)  # (B, M, K)
    scale = temperature * distances.detach().mean().clamp(min=1e-8)
    mean_assign = torch.softmax(-distances / scale, dim=-1).mean(0)  # (M, K)
    k = prototypes.shape[1]
    entropy = -(mean_assign * mean_assign.clamp(min=1e-12).log()).sum(-1)
    return (math.log(k) - entropy).mean()


@dataclass
class CodebookTrainResult:
    steps: int
    final_loss: float
    reseeded: int
    wall_s: float


def train_codebook(
    quantizer: ProductQuantizer,
    vectors: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    usage_weight: float = 0.01,
    temperature: float = 0.1,
    reseed_every: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> CodebookTrainResult:
    """Minibatch training of the prototypes: VQ + commitment + usage; dead ones re-seeded."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([quantizer.prototypes], lr=lr)
    quantizer.train()
    counts = torch.zeros(quantizer.num_subspaces, quantizer.codebook_size)
    reseeded = 0
    loss_value = float("nan")
    start = time.monotonic()
    bar = tqdm(range(steps), desc="codebook", unit="step", disable=not progress)
    for step in bar:
        # Cosine decay to zero: the prototypes settle instead of jittering around the optimum.
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch = vectors[torch.randint(len(vectors), (batch_size,), generator=generator)]
        output = quantizer(batch)
        usage = usage_loss(quantizer.split(batch), quantizer.prototypes, temperature)
        loss = output.loss + usage_weight * usage
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        codes = output.codes.reshape(-1, quantizer.num_subspaces)
        for m in range(quantizer.num_subspaces):
            counts[m] += torch.bincount(codes[:, m], minlength=quantizer.codebook_size)
        if (step + 1) % reseed_every == 0:
            reseeded += _reseed_dead(quantizer, vectors, counts, generator)
            counts.zero_()
        loss_value = loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.5f}", usage=f"{usage.item():.4f}")
    quantizer.eval()
    return CodebookTrainResult(steps, loss_value, reseeded, time.monotonic() - start)


@torch.no_grad()
def _reseed_dead(
    quantizer: ProductQuantizer,
    vectors: torch.Tensor,
    counts: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """Move prototypes that no item chose since the last check onto random items."""
    dead = counts == 0  # (M, K)
    total = int(dead.sum())
    if total:
        for m, k in dead.nonzero().tolist():
            item = vectors[torch.randint(len(vectors), (1,), generator=generator)]
            part = quantizer.split(item)[0, m]
            quantizer.prototypes[m, k] = part + 1e-3 * torch.randn(part.shape, generator=generator)
        logger.info("re-seeded %d dead prototypes", total)
    return total


# --- the report ------------------------------------------------------------------------------


@torch.no_grad()
def codebook_report(quantizer: ProductQuantizer, vectors: torch.Tensor) -> list[dict[str, Any]]:
    """Per subspace, on ``vectors`` (held-out users' items): prototypes used, usage entropy
    (bits, and as a fraction of log2 K), reconstruction error (mean squared error of the part,
    and relative to the part's variance)."""
    parts = quantizer.split(vectors)  # (N, M, d)
    codes = squared_distances(parts, quantizer.prototypes).argmin(-1)  # (N, M)
    rows = []
    k = quantizer.codebook_size
    for m in range(quantizer.num_subspaces):
        count = torch.bincount(codes[:, m], minlength=k).float()
        p = count / count.sum()
        entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
        recon = quantizer.prototypes[m][codes[:, m]]
        error = float((parts[:, m] - recon).pow(2).sum(-1).mean())
        variance = float((parts[:, m] - parts[:, m].mean(0)).pow(2).sum(-1).mean())
        rows.append(
            {
                "subspace": m,
                "used": int((count > 0).sum()),
                "used_fraction": float((count > 0).float().mean()),
                "usage_entropy_bits": round(entropy, 4),
                "usage_entropy_fraction": round(entropy / math.log2(k), 4),
                "reconstruction_mse": round(error, 6),
                "relative_error": round(error / max(variance, 1e-12), 4),
            }
        )
    return rows


def summarize_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "min_used_fraction": min(r["used_fraction"] for r in rows),
        "mean_usage_entropy_fraction": round(
            sum(r["usage_entropy_fraction"] for r in rows) / len(rows), 4
        ),
        "mean_relative_error": round(sum(r["relative_error"] for r in rows) / len(rows), 4),
    }


# --- the stage ---------------------------------------------------------------------------------


def history_texts(texts: Sequence[str], exclude: str | None, limit: int) -> list[str]:
    """The items that stand for a user's history: the first ``limit`` texts other than
    ``exclude`` (the target). Stage 1 embeds exactly these for every target choice."""
    return [t for t in texts if t != exclude][:limit]


def generic_users(options: CodebookOptions) -> list[Any]:
    """The users of ``--histories`` (a file or store URL) with at least two items; with
    ``--examples``, only the users that have examples."""
    from curp_chain.data.generic import read_examples, read_histories
    from curp_chain.data.users import UserTexts

    assert options.histories is not None
    histories = read_histories(options.histories)
    wanted = {e.user_id for e in read_examples(options.examples)} if options.examples else None
    users = [
        UserTexts(user, "generic", tuple(i.text for i in items))
        for user, items in histories.items()
        if len(items) >= 2 and (wanted is None or user in wanted)
    ]
    if not users:
        raise CurpError(f"{options.histories}: no user with at least two history items")
    return users


def codebook_config(options: CodebookOptions) -> Any:
    """The checkpoint config of the run: with style features, the encoder vector is cut
    into parts as wide as the style vector, so that the style features are one subspace of
    their own."""
    from curp_chain.model.config import CurpConfig
    from curp_chain.model.style import STYLE_DIM

    style_dim = STYLE_DIM if options.style else 0
    encoder_dim = CurpConfig.model_fields["encoder_dim"].default
    num_subspaces = options.num_subspaces or (
        (encoder_dim + style_dim) // style_dim if style_dim else 8
    )
    return CurpConfig(
        style_dim=style_dim,
        num_subspaces=num_subspaces,
        codebook_size=options.codebook_size,
        max_history_items=options.max_history,
    )


@dataclass
class CodebookTexts:
    """The texts stage 1 embeds: training users' items (personas applied), held-out users'
    items for the report, and LaMP-7 profiles on the LaMP-7 adapter's data."""

    train: list[str]
    held: list[str]
    lamp7: list[str]
    train_users: int
    held_users: int


def codebook_texts(options: CodebookOptions) -> CodebookTexts:
    from curp_chain.data.users import load_pan, split_users, user_order
    from curp_chain.tasks.lamp7 import load_lamp7_profiles
    from curp_chain.training.personas import apply_persona, persona_of

    seed = options.seed
    generic = bool(options.histories)
    users = (
        generic_users(options)
        if generic
        else load_pan(options.data_dir, max_users=options.max_users)
    )
    train, held = split_users(users, options.held_out_fraction, seed)
    train = user_order(train, seed)[: options.train_users]
    per_user = options.max_history + 1  # covers the history of any target choice
    # The codebook sees the training users as stage 2 does: with their style personas.
    fraction = options.persona_fraction
    personas = {u.user_id: persona_of(u.user_id, fraction, seed) if fraction else () for u in train}

    # Generic histories are oldest first and stage 2 takes the newest items; PAN's first.
    def window(texts: Sequence[str], n: int) -> Sequence[str]:
        return texts[-n:] if generic else texts[:n]

    train_texts = [
        apply_persona(t, personas[u.user_id]) for u in train for t in window(u.texts, per_user)
    ]
    held_texts = [t for u in held for t in window(u.texts, options.held_out_items)]
    if not held_texts:
        raise CurpError(
            f"no held-out user to report on among {len(users)} users: raise --held-out-fraction"
        )
    lamp_users = (
        [] if generic else load_lamp7_profiles(options.data_dir)[: options.lamp7_report_users]
    )
    lamp_texts = [t for u in lamp_users for t in u.texts[: options.max_history]]
    return CodebookTexts(train_texts, held_texts, lamp_texts, len(train), len(held))


def save_codebook(
    model: Any,
    config: Any,
    summary: dict[str, Any],
    report: dict[str, Any],
    out: Path,
    command: str | None,
) -> None:
    """The checkpoint (codebook trained, the rest at its seeded start) and its report."""
    import json

    from curp_chain.model.checkpoint import save_checkpoint

    model.config = config.model_copy(
        update={
            "trained": False,
            "provenance": {
                "stage": "codebook",
                "command": command,
                "note": "codebook trained; aggregator and projector untrained (run `curp train "
                "projector` next)",
                "codebook": summary,
            },
        }
    )
    save_checkpoint(model, out)
    (out / "codebook_report.json").write_text(
        json.dumps({"summary": summary, **report}, indent=2) + "\n"
    )


def run_codebook_stage(options: CodebookOptions, command: str | None = None) -> dict[str, Any]:
    """Embed the users' items, initialise with balanced k-means, train, report, save.

    ``options`` are the `curp train codebook` options. Writes a checkpoint folder whose
    codebook is trained (aggregator and projector at their seeded initialisation), plus
    ``codebook_report.json``; returns the report.
    """
    from curp_chain.data.users import default_cache_dir
    from curp_chain.model.style import with_style
    from curp_chain.training.initialize import initial_model

    start = time.monotonic()
    if options.threads:
        torch.set_num_threads(options.threads)
    seed = options.seed
    config = codebook_config(options)
    encoder = SentenceEncoder(
        encoder_id=config.encoder_id, device="cuda" if torch.cuda.is_available() else "cpu"
    )
    cache_dir = Path(options.cache_dir or default_cache_dir())
    cache = EmbeddingCache(embedding_cache_path(cache_dir, config.encoder_id), encoder)
    texts = codebook_texts(options)
    logger.info(
        "embedding %d train, %d held-out and %d LaMP-7 profile items",
        len(texts.train),
        len(texts.held),
        len(texts.lamp7),
    )

    def vectors(items: list[str]) -> torch.Tensor:
        return with_style(cache.get(items, progress=True), items, config.style_dim)

    train_vectors, held_vectors = vectors(texts.train), vectors(texts.held)
    lamp_vectors = vectors(texts.lamp7)
    model = initial_model(config, seed)
    quantizer = model.quantizer
    largest = kmeans_init(quantizer, train_vectors, iterations=options.kmeans_iterations, seed=seed)
    initial_report = codebook_report(quantizer, held_vectors)
    result = train_codebook(
        quantizer, train_vectors, steps=options.steps, batch_size=options.batch_size,
        lr=options.lr, usage_weight=options.usage_weight, temperature=options.usage_temperature,
        reseed_every=options.reseed_every, seed=seed,
    )  # fmt: skip
    held_name = "held_out" if options.histories else "held_out_pan19"
    report = {held_name: codebook_report(quantizer, held_vectors)}
    if len(lamp_vectors):
        report["lamp7_profiles"] = codebook_report(quantizer, lamp_vectors)
    summary = {
        **{name: summarize_report(rows) for name, rows in report.items()},
        f"after_kmeans_{held_name}": summarize_report(initial_report),
        "kmeans_largest_cluster": largest,
        "kmeans_capacity": math.ceil(min(len(train_vectors), 20000) / config.codebook_size),
        "train_items": len(train_vectors),
        "train_users": texts.train_users,
        "held_out_items": len(held_vectors),
        "held_out_users": texts.held_users,
        "lamp7_profile_items": len(lamp_vectors),
        "steps": result.steps,
        "reseeded": result.reseeded,
        "final_loss": result.final_loss,
        "wall_s": round(time.monotonic() - start, 1),
    }
    save_codebook(model, config, summary, report, Path(str(options.out)), command)
    return {"summary": summary, **report}
