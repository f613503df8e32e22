"""The prefix cache: personalized tool calls with 1, 5 and 20 tools, and the example agent's turn.

    python benchmarks/prefix_cache.py [--threads 1] [--repeats 5] [--max-tokens 8]
                                      [--backends llamacpp hf] [--agent-turns 6] [--skip-agent]

1. Calls: a personalized forced call (``tool_choice="any"``, a user with history, so soft
   tokens follow the system message and the tool list) with 1, 5 and 20 synthetic tools
   bound, on llama.cpp and transformers, cut at ``--max-tokens`` (8: every call decodes as
   many tokens, whatever it writes). Each repetition runs the call cold (prefix cache
   emptied first) and then warm (its prefix cached by the cold run), interleaved so that
   load drift hits both alike; medians of the repetitions. Times: to the first piece of
   the reply, and the whole call (prefill, grammar and decoding); the request is prepared
   (personalized) beforehand, as in benchmarks/tool_calls.py. Both runs' replies are
   compared (they must be equal).
2. The example agent (examples/agent.py: two tools, the relevance gate, two users): whole
   user turns (tool call, tool result, tool call, tool result, answer) on llama.cpp with
   the prefix cache off and on, alternating the backends turn by turn; the cache is warm
   from the second turn on.
"""

from __future__ import annotations

import argparse
import statistics
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
        request = model._prepare(
            [HumanMessage(QUESTION)],
            None,
            {"tools": synthetic_tools(count), "tool_choice": "any", "user_id": "runner"},
        )
        assert request.prompt.soft is not None  # personalized: the prefix ends at soft tokens
        cold, warm = [], []
        for _ in range(repeats):
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
                "warm_step": statistics.median((w[1] - w[0]) / max(1, w[3] - 1) for w in warm),
            }
        )
    return rows


def print_calls(label: str, rows: list[dict[str, Any]]) -> None:
    one = rows[0]
    print(f"\n{label}")
    print(
        "| tools | prompt tokens | prefix tokens | first piece cold (s) | first piece warm (s) "
        "| call cold (s) | call warm (s) | warm call / warm call with 1 tool | tokens "
        "| warm ms per token after the first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tools']} | {r['prompt']} | {r['prefix']} | {r['cold_first']:.2f} | "
            f"{r['warm_first']:.2f} | {r['cold_call']:.2f} | {r['warm_call']:.2f} | "
            f"{r['warm_call'] / one['warm_call']:.2f} | {r['tokens']} | "
            f"{1000 * r['warm_step']:.0f} |"
        )


def agent_turns(threads: int, turns: int) -> dict[str, list[float]]:
    """Seconds per user turn of the example agent, without and with the prefix cache."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import agent as example  # examples/agent.py
    from langchain.agents import create_agent

    from curp_chain_integrations.langchain.agents import CurpUserMiddleware

    store = SQLHistoryStore("sqlite://")
    store.setup()
    agents: dict[str, Any] = {}
    for label, size in (("off", 0), ("on", None)):
        backend = open_backend("llamacpp", threads, size)
        model = CurpChatModel(backend=backend, history_store=store, max_tokens=128)
        agents[label] = create_agent(
            model,
            tools=[example.get_weather, example.add_reminder],
            context_schema=example.UserContext,
            middleware=[CurpUserMiddleware()],
        )
    for user_id, items in example.USERS.items():
        model.add_history(user_id, items)  # one store for both
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    users = list(example.USERS)
    for turn in range(turns):
        user = users[turn % len(users)]
        for label in ("off", "on"):
            start = time.perf_counter()
            result = agents[label].invoke(
                {"messages": [("user", example.REQUEST)]},
                context=example.UserContext(user_id=user),
            )
            seconds[label].append(time.perf_counter() - start)
            made = [c["name"] for m in result["messages"] for c in getattr(m, "tool_calls", [])]
            print(f"turn {turn + 1} ({user}), cache {label}: {seconds[label][-1]:.1f} s, {made}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["llamacpp", "hf"])
    parser.add_argument("--agent-turns", type=int, default=6)
    parser.add_argument("--skip-agent", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # transformers and the encoder: the machine is shared
    store = SQLHistoryStore("sqlite://")
    store.setup()
    for kind in args.backends:
        backend = open_backend(kind, args.threads)
        model = CurpChatModel(backend=backend, history_store=store, max_tokens=args.max_tokens)
        model.add_history("runner", HISTORY)
        start = time.perf_counter()
        rows = calls(model, args.repeats)
        print_calls(f"{kind} ({time.perf_counter() - start:.0f} s)", rows)
        getattr(backend, "close", lambda: None)()
    if args.skip_agent:
        return
    seconds = agent_turns(args.threads, args.agent_turns)
    off, on = seconds["off"], seconds["on"]
    print("\n| prefix cache | first turn (s) | later turns, median (s) |")
    print("|---|---|---|")
    for label, times in (("off", off), ("on", on)):
        print(f"| {label} | {times[0]:.1f} | {statistics.median(times[1:]):.1f} |")
    print(f"later turns, off / on: {statistics.median(off[1:]) / statistics.median(on[1:]):.2f}")


if __name__ == "__main__":
    main()
