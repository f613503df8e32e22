"""The prefix cache: personalized tool calls with 1, 5 and 20 tools, and the example agent's turn.

    python benchmarks/prefix_cache.py [--threads 1] [--repeats 5] [--max-tokens 8]
                                      [--backends llamacpp hf] [--agent-turns 6] [--skip-agent]
                                      [--today CHECKOUT]

1. Calls: a personalized forced call (``tool_choice="any"``, a user with history, so soft
   tokens follow the system message and the tool list) with 1, 5 and 20 synthetic tools
   bound, on llama.cpp and transformers, the LLM picking the tool from the whole list
   (``encoder_picks_forced_tool=False``) and the encoder picking it (the default: the
   prompt lists only that tool), cut at ``--max-tokens`` (8: every call decodes as
   many tokens, whatever it writes). Each repetition runs the call cold (prefix cache
   emptied first) and then warm (its prefix cached by the cold run), interleaved so that
   load drift hits both alike; medians of the repetitions. Times: to the first piece of
   the reply, and the whole call (prefill, grammar and decoding); the request's preparation
   (personalization, and the encoder's pick) is timed apart. Both runs' replies are
   compared (they must be equal).
2. The example agent (examples/agent.py: two tools, the relevance gate, two users): whole
   user turns (tool call, tool result, tool call, tool result, answer) on llama.cpp with
   the prefix cache off and on, and with ``--today`` the same turns on a checkout of the
   code before the cache (its own examples/agent.py and prompts), each in its own process
   (benchmarks/agent_turn_worker.py), taking turns; the cache is warm from the second turn
   on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import HumanMessage
from tool_calls import synthetic_tools  # benchmarks/tool_calls.py, beside this script

from curp_chain import CurpChatModel
from curp_chain.chat.chat_model import PreparedRequest
from curp_chain_stores import SQLHistoryStore

HISTORY = ["Sunrise trail run: 18 km.", "Marathon week 12, long run 32 km."]
QUESTION = "Look up five records about trail running."


def open_backend(kind: str, threads: int, cache_size: int | None = None) -> Any:
    options: dict[str, Any] = {} if cache_size is None else {"prefix_cache_size": cache_size}
    if kind == "llamacpp":
        from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(n_threads=threads, **options)
    from curp_chain_integrations.backends.hf import TransformersBackend

    return TransformersBackend(device="cpu", **options)


def timed_call(request: PreparedRequest) -> tuple[float, float, str, int]:
    """(seconds to the first piece, seconds for the whole call, reply text, its tokens)."""
    start = time.perf_counter()
    first = None
    text = ""
    tokens = 0
    for piece in request.backend.stream(request.prompt, request.params):
        first = first or time.perf_counter()
        text += piece.text
        tokens = piece.usage.get("output_tokens", tokens)
    assert first is not None
    return first - start, time.perf_counter() - start, text, tokens


def calls(model: CurpChatModel, repeats: int) -> list[dict[str, Any]]:
    backend: Any = model.get_backend()
    rows = []
    for count in (1, 5, 20):
        options = {"tools": synthetic_tools(count), "tool_choice": "any", "user_id": "runner"}
        cold, warm, prepare = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()  # personalization, and the encoder's pick of a tool
            request = model._prepare([HumanMessage(QUESTION)], None, options)
            prepare.append(time.perf_counter() - start)
            assert request.prompt.soft is not None  # personalized: the prefix ends there
            backend.prefix_cache.clear()
            cold.append(timed_call(request))
            warm.append(timed_call(request))
        assert all(c[2] == w[2] for c, w in zip(cold, warm, strict=True)), "warm != cold"
        rows.append(
            {
                "tools": count,
                "prompt": backend.count_tokens(request.prompt.before + request.prompt.after)
                + len(request.prompt.soft),
                "prefix": backend.count_tokens(request.prompt.before),
                "cold_first": statistics.median(c[0] for c in cold),
                "warm_first": statistics.median(w[0] for w in warm),
                "cold_call": statistics.median(c[1] for c in cold),
                "warm_call": statistics.median(w[1] for w in warm),
                "tokens": warm[0][3],
                "prepare": statistics.median(prepare),
                "warm_step": statistics.median((w[1] - w[0]) / max(1, w[3] - 1) for w in warm),
            }
        )
    return rows


def print_calls(label: str, rows: list[dict[str, Any]]) -> None:
    one = rows[0]
    print(f"\n{label}")
    print(
        "| tools | prompt tokens | prefix tokens | prepare (s) | first piece cold (s) "
        "| first piece warm (s) | call cold (s) | call warm (s) | warm call / warm call with "
        "1 tool | with prepare | tokens | warm ms per token after the first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        whole = (r["prepare"] + r["warm_call"]) / (one["prepare"] + one["warm_call"])
        print(
            f"| {r['tools']} | {r['prompt']} | {r['prefix']} | {r['prepare']:.2f} | "
            f"{r['cold_first']:.2f} | {r['warm_first']:.2f} | {r['cold_call']:.2f} | "
            f"{r['warm_call']:.2f} | {r['warm_call'] / one['warm_call']:.2f} | {whole:.2f} | "
            f"{r['tokens']} | {1000 * r['warm_step']:.0f} |"
        )


class TurnWorker:
    """A benchmarks/agent_turn_worker.py process on ``root``'s code; ``turn`` runs one turn."""

    def __init__(self, root: Path, threads: int, cache_size: int | None):
        command = [sys.executable, str(Path(__file__).with_name("agent_turn_worker.py"))]
        command += ["--root", str(root), "--threads", str(threads)]
        command += [] if cache_size is None else ["--prefix-cache-size", str(cache_size)]
        packages = [root, root / "stores", root / "integrations"]  # before the installed ones
        path = os.pathsep.join([*map(str, packages), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path}
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._read()  # {"ready": true} once the model is loaded

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the agent worker stopped (exit code {self._process.wait()})")
        return dict(json.loads(line))

    def turn(self, user_id: str) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(user_id + "\n")
        self._process.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait()


def agent_turns(threads: int, turns: int, today: Path | None) -> dict[str, list[float]]:
    """Seconds per user turn of the example agent: this code without and with the prefix
    cache, and (with ``today``) a checkout of the code before the cache, in turn."""
    here = Path(__file__).resolve().parents[1]
    variants = {"off": (here, 0), "on": (here, None)}
    if today is not None:
        variants = {"today": (today.resolve(), None), **variants}
    workers = {label: TurnWorker(root, threads, size) for label, (root, size) in variants.items()}
    seconds: dict[str, list[float]] = {label: [] for label in workers}
    users = ["alice", "bob"]  # examples/agent.py
    for turn in range(turns):
        user = users[turn % len(users)]
        for label, worker in workers.items():
            result = worker.turn(user)
            seconds[label].append(result["seconds"])
            print(
                f"turn {turn + 1} ({user}), {label}: {result['seconds']:.1f} s, "
                f"{result['calls']}, answer {result['answer'][:60]!r}"
            )
    for worker in workers.values():
        worker.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--backends", nargs="*", default=["llamacpp", "hf"])
    parser.add_argument("--agent-turns", type=int, default=6)
    parser.add_argument("--skip-agent", action="store_true")
    parser.add_argument(
        "--today",
        type=Path,
        help="a checkout of the code to compare the agent's turn with (git worktree add "
        "../today e09b967: the commit before the prefix cache)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # transformers and the encoder: the machine is shared
    store = SQLHistoryStore("sqlite://")
    store.setup()
    for kind in args.backends:
        backend = open_backend(kind, args.threads)
        model = CurpChatModel(backend=backend, history_store=store, max_tokens=args.max_tokens)
        model.add_history("runner", HISTORY)
        for picks, label in (
            (False, "the LLM picks, every tool listed"),
            (True, "the encoder picks"),
        ):
            start = time.perf_counter()
            rows = calls(
                model.model_copy(update={"encoder_picks_forced_tool": picks}), args.repeats
            )
            print_calls(f"{kind}, {label} ({time.perf_counter() - start:.0f} s)", rows)
        getattr(backend, "close", lambda: None)()
    if args.skip_agent:
        return
    seconds = agent_turns(args.threads, args.agent_turns, args.today)
    later = {label: statistics.median(times[1:]) for label, times in seconds.items()}
    print("\n| code | first turn (s) | later turns, median (s) | later turns / cache on |")
    print("|---|---|---|---|")
    for label, times in seconds.items():
        ratio = later[label] / later["on"]
        print(f"| {label} | {times[0]:.1f} | {later[label]:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
