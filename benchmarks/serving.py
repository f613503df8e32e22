"""Generation speed and concurrency on llama.cpp with the bundled SmolLM2-135M GGUF.

Part 1, one request at a time, greedy, ``--max-tokens`` tokens, n-gram blocking off on
both sides so that the decoding work is alike: time to first token (TTFT) and decode
tokens/s of
  - plain llama-cpp-python ``Llama.create_chat_completion`` (``reset()`` before each call,
    so that it cannot reuse the previous prompt's KV cache),
  - CurpChatModel without a user (the same messages, no soft tokens),
  - CurpChatModel for a user with history (soft tokens: personalization included),
  - CurpChatModel with the user's newest 4 history items written into the prompt (rag).
Part 2, ``--requests`` personalized requests from 1, 4 or 16 concurrent users (threads)
against the same requests served one at a time: requests/s and latency p50/p99, every
reply checked against its reply served alone; ``--plot`` draws them.

    python benchmarks/serving.py --data ../shared/data/lamp7 --runs 5 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from curp_chain import CurpChatModel
from curp_chain_integrations.backends.gguf import smollm2_gguf_path
from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

SYSTEM = "You are a helpful assistant."
QUESTION = "Paraphrase the following tweet: heading out for a long run before work tomorrow"


def first_and_rate(chunks: Iterator[Any], count: Any) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) of a stream; ``count(chunks)`` gives its tokens."""
    start = time.perf_counter()
    first = None
    seen = []
    for chunk in chunks:
        if first is None and chunk_text(chunk):
            first = time.perf_counter()
        seen.append(chunk)
    end = time.perf_counter()
    tokens = count(seen)
    assert first is not None and tokens > 1
    return first - start, (tokens - 1) / (end - first)


def chunk_text(chunk: Any) -> str:
    if isinstance(chunk, dict):
        return str(chunk["choices"][0]["delta"].get("content") or "")
    return str(chunk.content)


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def single_requests(model: CurpChatModel, histories: dict[str, list[str]], args: Any) -> None:
    from llama_cpp import Llama

    plain = Llama(
        str(smollm2_gguf_path()), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    user = next(iter(histories))
    rag_question = "Tweets I wrote:\n" + "\n".join(f"- {t}" for t in histories[user][:4])
    rag_question += "\n\n" + QUESTION
    options = {"max_tokens": args.max_tokens, "no_repeat_ngram_size": 0}

    def plain_call() -> tuple[float, float]:
        plain.reset()  # no KV-cache reuse from the previous call
        stream = plain.create_chat_completion(
            messages, max_tokens=args.max_tokens, temperature=0.0, stream=True
        )
        return first_and_rate(iter(stream), lambda seen: len(seen) - 2)  # role + stop chunks

    def ours(question: str, user_id: str | None) -> tuple[float, float]:
        chat = [("system", SYSTEM), ("user", question)]
        stream = model.stream(chat, user_id=user_id, **options)
        return first_and_rate(stream, lambda seen: seen[-1].usage_metadata["output_tokens"])

    cases = {
        "plain llama-cpp-python": plain_call,
        "CurpChatModel, no user": lambda: ours(QUESTION, None),
        "CurpChatModel, soft tokens": lambda: ours(QUESTION, user),
        "CurpChatModel, rag prompt (4 items)": lambda: ours(rag_question, None),
    }
    results = {}
    for call in cases.values():
        call()  # warm-up
    for _ in range(args.runs):  # interleaved, so that load changes hit every case alike
        for name, call in cases.items():
            results.setdefault(name, []).append(call())
    base_ttft, base_rate = medians(results["plain llama-cpp-python"])
    print("| case | TTFT ms | vs plain | decode tok/s | vs plain |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        ttft, rate = medians(runs)
        print(
            f"| {name} | {ttft * 1000:.0f} | {ttft / base_ttft:.2f}x | {rate:.0f} "
            f"| {rate / base_rate:.2f}x |"
        )
    plain.close()


def concurrency(model: CurpChatModel, users: list[str], args: Any) -> list[dict[str, float]]:
    """Requests/s and latency for 1 and ``args.users`` concurrent users; every reply must
    equal the same request's reply served one at a time (isolation)."""

    def request(i: int) -> tuple[float, str]:
        start = time.perf_counter()
        reply = model.invoke(QUESTION, user_id=users[i % len(users)], max_tokens=args.max_tokens)
        return time.perf_counter() - start, str(reply.content)

    print(f"\n{args.requests} requests of {args.max_tokens} tokens, personalized")
    print("| users at once | requests/s | vs one at a time | latency p50 s | latency p99 s |")
    print("|---|---|---|---|---|")
    rows: list[dict[str, float]] = []
    alone: list[str] = []
    for workers in [1, *args.users]:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(request, range(args.requests)))
        rate = args.requests / (time.perf_counter() - start)
        latencies = [seconds for seconds, _ in results]
        replies = [reply for _, reply in results]
        alone = alone or replies
        if replies != alone:
            changed = sum(a != b for a, b in zip(alone, replies, strict=True))
            raise SystemExit(f"isolation broken: {changed} replies differ at {workers} users")
        row = {
            "users": workers,
            "rate": rate,
            "p50": statistics.median(latencies),
            "p99": statistics.quantiles(latencies, n=100)[98],
        }
        rows.append(row)
        label = "1 (one at a time)" if workers == 1 else str(workers)
        print(
            f"| {label} | {rate:.2f} | {rate / rows[0]['rate']:.2f}x "
            f"| {row['p50']:.2f} | {row['p99']:.2f} |"
        )
    print(f"every reply identical to the same request served one at a time ({len(alone)})")
    return rows


def plot_concurrency(rows: list[dict[str, float]], path: Path) -> None:
    """Requests/s and latency against concurrent users, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [int(r["users"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(users, [r["rate"] for r in rows], "o-")
    left.set(xlabel="concurrent users", ylabel="requests / s", xscale="log", xticks=users)
    left.set_xticklabels([str(u) for u in users])
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    right.plot(users, [r["p50"] for r in rows], "o-", label="p50")
    right.plot(users, [r["p99"] for r in rows], "s--", label="p99")
    right.set(xlabel="concurrent users", ylabel="latency s", xscale="log", xticks=users)
    right.set_xticklabels([str(u) for u in users])
    right.set_ylim(bottom=0)
    right.set_title("latency per request")
    right.legend()
    fig.suptitle("CurpChatModel on llama.cpp, SmolLM2-135M: workers of 1 thread, batched decoding")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lamp7"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--users", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--slots", type=int, help="requests decoded at once; default max(--users)")
    parser.add_argument("--workers", type=int, help="llama.cpp workers; default one per core")
    parser.add_argument("--skip-single", action="store_true", help="only the concurrency part")
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--skip-concurrency", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the concurrency plot (PNG) here")
    args = parser.parse_args()
    args.slots = args.slots or max(args.users)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)  # the encoder and the CURP user model
    people = json.loads((args.data / "questions.json").read_text())[:16]
    histories = {f"user{i}": [p["text"] for p in u["profile"]] for i, u in enumerate(people)}
    backend = LlamaCppBackend(n_ctx=2048, n_threads=1, slots=args.slots, workers=args.workers)
    with tempfile.TemporaryDirectory() as folder:
        model = CurpChatModel(backend=backend, store_url=f"sqlite:///{folder}/h.sqlite")
        for user, items in histories.items():
            model.add_history(user, items)
        print(
            f"llama.cpp 1 thread, {backend.workers} workers, torch {torch.get_num_threads()} "
            f"threads, {args.slots} slots, {args.runs} runs, medians"
        )
        if not args.skip_single:
            single_requests(model, histories, args)
        if not args.skip_concurrency:
            rows = concurrency(model, list(histories), args)
            if args.plot:
                plot_concurrency(rows, args.plot)
    backend.close()


if __name__ == "__main__":
    main()
