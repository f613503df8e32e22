"""One process that runs the example agent's turns on request, for benchmarks/prefix_cache.py.

    python benchmarks/agent_turn_worker.py --root CHECKOUT [--threads 1] [--prefix-cache-size N]

Imports curp-chain and examples/agent.py from ``CHECKOUT`` (this repository, or a checkout of
an earlier commit: the parent puts its packages first on PYTHONPATH), loads the default model
on llama.cpp once, then reads user ids from stdin, one per line, runs one agent turn for each
and writes one JSON line: ``{"seconds": ..., "calls": [...], "answer": ...}``. Only APIs that
every version since the layout commit has are used, so one script times them all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prefix-cache-size", type=int, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root / "examples"))
    import agent as example  # the checkout's examples/agent.py
    import torch
    from langchain.agents import create_agent

    import curp_chain
    from curp_chain import CurpChatModel
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend
    from curp_chain_integrations.langchain.agents import CurpUserMiddleware
    from curp_chain_stores import SQLHistoryStore

    if not Path(curp_chain.__file__).is_relative_to(args.root.resolve()):
        raise SystemExit(f"curp_chain came from {curp_chain.__file__}, not from {args.root}")
    torch.set_num_threads(args.threads)  # the encoder: the machine is shared
    options: dict[str, Any] = {"n_threads": args.threads}
    if args.prefix_cache_size is not None:
        options["prefix_cache_size"] = args.prefix_cache_size
    store = SQLHistoryStore("sqlite://")
    store.setup()
    model = CurpChatModel(backend=LlamaCppBackend(**options), history_store=store, max_tokens=128)
    for user_id, items in example.USERS.items():
        model.add_history(user_id, items)
    agent = create_agent(
        model,
        tools=[example.get_weather, example.add_reminder],
        context_schema=example.UserContext,
        middleware=[CurpUserMiddleware()],
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        result = agent.invoke(
            {"messages": [("user", example.REQUEST)]},
            context=example.UserContext(user_id=line.strip()),
        )
        seconds = time.perf_counter() - start
        calls = [c["name"] for m in result["messages"] for c in getattr(m, "tool_calls", [])]
        answer = str(result["messages"][-1].content)
        print(json.dumps({"seconds": seconds, "calls": calls, "answer": answer}), flush=True)


if __name__ == "__main__":
    main()
