"""Ingest throughput: history items per second through encode + quantize + store.

Real tweets (the LaMP-7 profiles) go through ``Personalizer.add_history`` in batches, into
a fresh SQLite file, with the bundled checkpoint and MiniLM encoder. The time of each stage
is measured on the same batches: encoding (MiniLM + style features), quantizing
(codebook), storing (one transaction per batch).

    python benchmarks/ingest.py --data ../shared/data/lamp7 --items 2048 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.personalization.personalizer import Personalizer
from curp_chain_stores import SQLHistoryStore


def tweets(data: Path, count: int) -> list[str]:
    users = json.loads((data / "questions.json").read_text())
    texts = [item["text"] for user in users for item in user["profile"] if item["text"].strip()]
    return (texts * (count // len(texts) + 1))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lamp7"))
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    torch.set_num_threads(args.torch_threads)
    texts = tweets(args.data, args.items)
    user_model = load_checkpoint(str(DEFAULT_CHECKPOINT))
    encoder = SentenceEncoder(encoder_id=user_model.config.encoder_id)
    with tempfile.TemporaryDirectory() as folder:
        store = SQLHistoryStore(f"sqlite:///{folder}/history.sqlite")
        store.setup()
        personalizer = Personalizer(user_model, encoder, store)
        personalizer.add_history("warmup", texts[:32])
        stages = {"encode": 0.0, "quantize": 0.0, "store": 0.0}
        start = time.perf_counter()
        for at in range(0, len(texts), args.batch):
            batch = texts[at : at + args.batch]
            personalizer.add_history(f"user{at}", batch)
        total = time.perf_counter() - start
        # The same batches again, stage by stage.
        for at in range(0, len(texts), args.batch):
            batch = texts[at : at + args.batch]
            t0 = time.perf_counter()
            with torch.no_grad():
                vectors = personalizer.item_vectors(batch)
                t1 = time.perf_counter()
                codes = user_model.quantizer.encode(vectors).numpy().tolist()
            t2 = time.perf_counter()
            store.add_items(f"again{at}", batch, codes, personalizer.codebook_version)
            t3 = time.perf_counter()
            stages["encode"] += t1 - t0
            stages["quantize"] += t2 - t1
            stages["store"] += t3 - t2
        # Encoding alone, in the given order batch by batch (each batch padded to its
        # longest text) against one call that sorts all texts by length first.
        t0 = time.perf_counter()
        for at in range(0, len(texts), encoder.batch_size):
            encoder.encode(texts[at : at + encoder.batch_size])
        t1 = time.perf_counter()
        encoder.encode(texts)
        t2 = time.perf_counter()
        store.close()
    n = len(texts)
    print(f"MiniLM alone: {n / (t1 - t0):.0f} items/s unsorted, {n / (t2 - t1):.0f} sorted")
    print(f"{n} items, batches of {args.batch}, torch threads {args.torch_threads}")
    print(f"add_history: {total:.2f} s, {n / total:.0f} items/s")
    for name, seconds in stages.items():
        print(f"  {name}: {seconds:.2f} s ({n / seconds:.0f} items/s alone)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
