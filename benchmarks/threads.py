"""llama.cpp thread count, idle and with a competing busy process: seconds per short reply.

For each thread count, one LlamaCppBackend generates the same greedy reply ``--runs``
times (after one warm-up); then the same again while a separate process spins on one
core. Reports the median seconds per reply and tokens/s, and the busy/idle ratio.

    python benchmarks/threads.py --threads 1 2 --runs 5 --max-tokens 32
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nSuggest a plan for a rainy Saturday with friends.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def spin() -> None:
    while True:
        pass


def timed(backend: LlamaCppBackend, params: GenerationParams, runs: int) -> tuple[float, float]:
    """Median (seconds per reply, generated tokens per second) over ``runs`` replies."""
    prompt = SoftPrompt(PROMPT, None, "")
    list(backend.stream(prompt, params))  # warm-up
    seconds, rates = [], []
    for _ in range(runs):
        start = time.perf_counter()
        chunks = list(backend.stream(prompt, params))
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        rates.append(chunks[-1].usage["output_tokens"] / elapsed)
    return statistics.median(seconds), statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    params = GenerationParams(max_tokens=args.max_tokens, no_repeat_ngram_size=0)
    print(f"cores: {os.cpu_count()}, reply: {args.max_tokens} tokens, {args.runs} runs each")
    print("| threads | idle s/reply | idle tok/s | busy s/reply | busy tok/s | busy / idle |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        backend = LlamaCppBackend(n_ctx=1024, n_threads=threads, slots=1)
        idle, idle_rate = timed(backend, params, args.runs)
        rival = multiprocessing.Process(target=spin, daemon=True)
        rival.start()
        try:
            busy, busy_rate = timed(backend, params, args.runs)
        finally:
            rival.terminate()
            rival.join()
        backend.close()
        print(
            f"| {threads} | {idle:.2f} | {idle_rate:.0f} | {busy:.2f} | {busy_rate:.0f} "
            f"| {busy / idle:.1f}x |"
        )


if __name__ == "__main__":
    main()
