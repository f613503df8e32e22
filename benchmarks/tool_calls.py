"""Tool calling on the default model: how often "auto" calls a tool, and what the grammar costs.

    python benchmarks/tool_calls.py [--threads 1] [--repeats 3]

1. Choice under tool_choice="auto": requests that clearly need one of three tools, and
   requests that clearly need none; how many of each get a call (greedy, so one run each).
2. Grammar cost: on the same prompt, a forced call decoded under the grammar against a plain
   reply cut to the same number of tokens (decode tokens/s, prefill excluded).
3. Scaling with the number of tools bound (1, 5, 20): grammar build time, prompt tokens,
   time to first token and decode tokens/s of a forced call.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from curp_chain import CurpChatModel
from curp_chain.chat_model import PreparedRequest
from curp_chain_integrations.llamacpp import LlamaCppBackend
from curp_chain_stores import SQLHistoryStore


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "sunny"


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


@tool
def current_time(zone: str) -> str:
    """Get the current time in a time zone."""
    return "12:00"


TOOLS = [get_weather, add_numbers, current_time]
NEEDS_TOOL = [
    "What is the weather in Paris right now?",
    "Is it raining in London today?",
    "What is 1234 plus 5678?",
    "Add 17 and 25.",
    "What time is it in Tokyo?",
    "Tell me the current time in UTC.",
    "How warm is it in Madrid at the moment?",
    "Compute 999 + 1.",
    "What's the weather like in Berlin?",
    "What time is it now in New York?",
]
NO_TOOL = [
    "Say hello.",
    "Write a haiku about autumn leaves.",
    "Thank you, that is all.",
    "What is your favourite colour?",
    "Tell me a short joke.",
    "Translate 'good morning' into French.",
    "Who wrote Romeo and Juliet?",
    "Give me one tip for sleeping better.",
    "What is the capital of Italy?",
    "Describe a cat in one sentence.",
]


def synthetic_tools(count: int) -> list[dict[str, Any]]:
    """``count`` distinct tools with two or three typed parameters each."""
    tools = []
    for i in range(count):
        properties: dict[str, Any] = {
            "query": {"type": "string", "description": "what to look up"},
            "limit": {"type": "integer"},
        }
        if i % 2:
            properties["mode"] = {"type": "string", "enum": ["fast", "exact"]}
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": f"tool_{i}",
                    "description": f"Look up records of kind {i}.",
                    "parameters": {
                        "type": "object",
                        "properties": properties,
                        "required": list(properties),
                    },
                },
            }
        )
    return tools


def choice_rates(model: CurpChatModel) -> dict[str, int]:
    bound = model.bind_tools(TOOLS)  # tool_choice None = "auto"
    called_needed = sum(bool(bound.invoke(q).tool_calls) for q in NEEDS_TOOL)
    called_not_needed = sum(bool(bound.invoke(q).tool_calls) for q in NO_TOOL)
    return {"needed": called_needed, "not_needed": called_not_needed}


def timed(request: PreparedRequest, backend: LlamaCppBackend) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds after it, output tokens) of one generation."""
    start = time.perf_counter()
    first = None
    usage: dict[str, int] = {}
    for piece in backend.stream(request.prompt, request.params):
        first = first or time.perf_counter()
        if piece.finish_reason is not None:
            usage = dict(piece.usage)
    end = time.perf_counter()
    assert first is not None
    return first - start, end - first, usage["output_tokens"]


def grammar_cost(model: CurpChatModel, backend: LlamaCppBackend, repeats: int) -> dict[str, Any]:
    messages = [HumanMessage("What is 1234 plus 5678?")]
    request = model._prepare(messages, None, {"tools": TOOLS, "tool_choice": "add_numbers"})
    calls = [timed(request, backend) for _ in range(repeats)]
    tokens = calls[0][2]
    plain_params = dataclasses.replace(
        request.params, json_schema=None, json_or_text=False, max_tokens=tokens
    )
    plain = dataclasses.replace(request, params=plain_params)
    plains = [timed(plain, backend) for _ in range(repeats)]

    def rate(runs: list[tuple[float, float, int]]) -> float:
        # The first piece comes after the first token: the rest took (tokens - 1) decodes.
        return statistics.median((n - 1) / after for _, after, n in runs)

    return {
        "call_tokens": tokens,
        "call_tok_s": rate(calls),
        "plain_tokens": plains[0][2],
        "plain_tok_s": rate(plains),
    }


def scaling(model: CurpChatModel, backend: LlamaCppBackend, repeats: int) -> list[dict[str, Any]]:
    rows = []
    messages = [HumanMessage("Look up five records about trail running.")]
    for count in (1, 5, 20):
        request = model._prepare(
            messages, None, {"tools": synthetic_tools(count), "tool_choice": "any"}
        )
        start = time.perf_counter()
        for _ in range(repeats):
            backend.constraint(request.params).close()  # type: ignore[union-attr]
        build = (time.perf_counter() - start) / repeats
        runs = [timed(request, backend) for _ in range(repeats)]
        prompt_tokens = backend.count_tokens(request.prompt.before + request.prompt.after)
        rows.append(
            {
                "tools": count,
                "grammar_build_ms": 1000 * build,
                "prompt_tokens": prompt_tokens,
                "ttft_s": statistics.median(r[0] for r in runs),
                "decode_tok_s": statistics.median((r[2] - 1) / r[1] for r in runs),
                "output_tokens": runs[0][2],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    backend = LlamaCppBackend(n_threads=args.threads)
    store = SQLHistoryStore("sqlite://")
    store.setup()
    model = CurpChatModel(backend=backend, history_store=store, max_tokens=64)
    rates = choice_rates(model)
    print(f"auto: called a tool for {rates['needed']}/{len(NEEDS_TOOL)} requests that need one")
    print(f"auto: called a tool for {rates['not_needed']}/{len(NO_TOOL)} requests that need none")
    cost = grammar_cost(model, backend, args.repeats)
    print(
        f"forced call: {cost['call_tokens']} tokens at {cost['call_tok_s']:.1f} tok/s; "
        f"plain reply: {cost['plain_tokens']} tokens at {cost['plain_tok_s']:.1f} tok/s"
    )
    print("| tools | grammar build (ms) | prompt tokens | TTFT (s) | decode tok/s | tokens |")
    print("|---|---|---|---|---|---|")
    for row in scaling(model, backend, args.repeats):
        print(
            f"| {row['tools']} | {row['grammar_build_ms']:.1f} | {row['prompt_tokens']} | "
            f"{row['ttft_s']:.3f} | {row['decode_tok_s']:.1f} | {row['output_tokens']} |"
        )


if __name__ == "__main__":
    main()
