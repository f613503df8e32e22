"""Train the item-word decoder (curp_chain.model.item_words) on the training users' items:
`curp train words --out CHECKPOINT_DIR` (options: curp_chain.training.options.WordsOptions).

No LLM is involved: each item of a training user (PAN tweets, Reddit posts and comments,
Enron subject lines) is encoded and quantized as at write time, and a linear map learns the
distribution of its words (cross-entropy against the uniform distribution over the item's
vocabulary words). The vocabulary is the words used by at least ``--min-users`` training
users, common function words left out, so handles, names and typos never become a word the
decoder can say. Held-out users' items give the held-out loss and how many of the words
chosen for an item are in it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from curp_chain.data.users import default_cache_dir, default_data_dir
from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import ItemWordDecoder, ItemWordsConfig, save_item_words
from curp_chain.model.user_model import CurpUserModel
from curp_chain.tasks.assist import AssistUser, candidates, cut_item, load_users, words
from curp_chain.training.options import WordsOptions

FUNCTION_WORDS = frozenset(
    """the a an and or but if of to in on at for with from by is are was were be been am i you
    he she it we they me my your his her its our their this that these those not no so do does
    did have has had will would can could should just like get got about what when where who
    how why all any some more most very too than then there here out up down over into as also
    really one time know think people want going make good new much many even well back only
    way thing things lol dont cant thats ive youre http https com www amp im it's i'm don't
    can't that's i've you're""".split()  # noqa: SIM905
)
"""Words that say nothing about a user, never in the vocabulary."""


def is_content_word(word: str) -> bool:
    plain = word.replace("\u2019", "'")  # "it’s" is "it's": phones type the curly one
    return plain not in FUNCTION_WORDS and len(word) > 2 and not word.isdigit()


def item_texts(users: Sequence[AssistUser], per_user: int) -> list[str]:
    """Each user's newest ``per_user`` candidate items, one line each, distinct."""
    texts = [cut_item(i.text) for u in users for i in candidates(u)[-per_user:]]
    return list(dict.fromkeys(t for t in texts if t))


def vocabulary(
    users: Sequence[AssistUser], min_users: int, size: int
) -> tuple[list[str], list[float]]:
    """Content words used by at least ``min_users`` users (the ``size`` most used), with
    their idf over the users."""
    using: Counter[str] = Counter()
    for user in users:
        using.update({w for item in candidates(user) for w in words(item.text)})
    kept = [(w, n) for w, n in using.most_common() if n >= min_users and is_content_word(w)]
    kept = kept[:size]
    return [w for w, _ in kept], [round(math.log(len(users) / n), 4) for _, n in kept]


def quantized(
    texts: Sequence[str], encoder: SentenceEncoder, model: CurpUserModel, cache: Path
) -> torch.Tensor:
    """Item vectors as served: encoded, quantized to codes, decoded through the codebook.
    They are kept in ``cache`` (safetensors), keyed by the texts and the codebook."""
    version = model.quantizer.version(model.config.item_encoder_id)
    key = hashlib.sha256(json.dumps([version, list(texts)]).encode()).hexdigest()[:16]
    path = cache / f"item-words-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["vectors"]
    with torch.no_grad():
        vectors = model.item_vectors(encoder.encode(list(texts), progress=True), texts)
        decoded = model.quantizer.decode(model.quantizer.encode(vectors))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": decoded.contiguous()}, str(path))
    return decoded


@dataclass(frozen=True)
class ItemSet:
    """Quantized item vectors (N, D) and each item's vocabulary words (items with none are
    left out: they teach nothing)."""

    vectors: torch.Tensor
    wanted: list[list[int]]

    @classmethod
    def of(
        cls,
        texts: Sequence[str],
        index: dict[str, int],
        encoder: SentenceEncoder,
        model: CurpUserModel,
        cache: Path,
    ) -> ItemSet:
        vectors = quantized(texts, encoder, model, cache)
        wanted = [sorted({index[w] for w in words(t) if w in index}) for t in texts]
        rows = [i for i, w in enumerate(wanted) if w]
        return cls(vectors[rows], [wanted[i] for i in rows])


def loss_of(
    decoder: ItemWordDecoder, vectors: torch.Tensor, wanted: Sequence[list[int]]
) -> torch.Tensor:
    """Mean over items of the mean negative log-probability of the item's words."""
    logp = decoder(vectors)
    rows = torch.cat([torch.full((len(w),), i) for i, w in enumerate(wanted)])
    cols = torch.cat([torch.tensor(w) for w in wanted])
    weights = torch.cat([torch.full((len(w),), 1.0 / len(w)) for w in wanted])
    return -(logp[rows, cols] * weights).sum() / len(wanted)


def held_out_scores(decoder: ItemWordDecoder, held: ItemSet) -> dict[str, float]:
    """Held-out loss, and the share of an item's chosen words (as served, the item alone)
    that are in it."""
    vectors, wanted = held.vectors, held.wanted
    decoder.eval()
    with torch.no_grad():
        loss = float(loss_of(decoder, vectors, wanted))
    hits, chosen = 0, 0
    index = {w: i for i, w in enumerate(decoder.config.vocabulary)}
    for vector, present in zip(vectors, wanted, strict=True):
        said = decoder.words_for(vector[None], vector)
        chosen += len(said)
        hits += sum(index[w] in present for w in said)
    decoder.train()
    return {
        "loss": round(loss, 4),
        "precision": round(hits / max(chosen, 1), 4),
        "words_per_item": round(chosen / len(wanted), 2),
    }


def train_item_words(options: WordsOptions, command: str) -> dict[str, Any]:
    """Train the decoder on ``options``, save it in ``options.out``; returns its provenance."""
    torch.manual_seed(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    data = options.data_dir or default_data_dir()
    cache = Path(options.cache_dir or default_cache_dir())
    model, encoder = load_checkpoint(options.checkpoint), SentenceEncoder()
    train_users = load_users(data, "train")[: options.max_users]
    held_users = load_users(data, "held_out")
    vocab, idf = vocabulary(train_users, options.min_users, options.vocabulary)
    index = {w: i for i, w in enumerate(vocab)}
    decoder = ItemWordDecoder(
        ItemWordsConfig(
            item_dim=model.config.item_dim,
            encoder_dim=model.config.encoder_dim,
            codebook_version=model.quantizer.version(model.config.item_encoder_id),
            vocabulary=vocab,
            idf=idf,
            rank=options.rank,
        )
    )
    train_set = ItemSet.of(item_texts(train_users, options.per_user), index, encoder, model, cache)
    held = ItemSet.of(
        item_texts(held_users, 2)[: options.held_out_items], index, encoder, model, cache
    )
    start = time.monotonic()
    history = fit(decoder, train_set, held, options)
    provenance = {
        "command": command,
        "items": {"train": len(train_set.wanted), "held_out": len(held.wanted)},
        "vocabulary": len(vocab),
        "history": history,
        "wall_s": round(time.monotonic() - start),
    }
    decoder.config = decoder.config.model_copy(update={"provenance": provenance})
    save_item_words(options.out, decoder)
    return provenance


def fit(
    decoder: ItemWordDecoder, train_set: ItemSet, held: ItemSet, options: WordsOptions
) -> list[dict[str, float]]:
    """Adam over shuffled batches for ``options.epochs``; held-out scores after each."""
    optimizer = torch.optim.Adam(decoder.parameters(), lr=options.lr)
    history = [{"epoch": 0, **held_out_scores(decoder, held)}]
    rows = list(range(len(train_set.wanted)))
    for epoch in range(1, options.epochs + 1):
        random.Random(options.seed + epoch).shuffle(rows)
        batches = range(0, len(rows), options.batch_size)
        for b in tqdm(batches, desc=f"epoch {epoch}/{options.epochs}", unit="batch"):
            batch = rows[b : b + options.batch_size]
            loss = loss_of(decoder, train_set.vectors[batch], [train_set.wanted[i] for i in batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append({"epoch": epoch, **held_out_scores(decoder, held)})
        tqdm.write(str(history[-1]))
    return history
