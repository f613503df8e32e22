"""Tool calling on the default model: how often "auto" calls a tool, and what the grammar costs.

    python benchmarks/tool_calls.py [--threads 1] [--repeats 3] [--first-token] [--choice-only]

1. Choice under tool_choice="auto" (benchmarks/tool_requests.json: 30 requests that clearly
   need one of three tools, 30 that clearly need none): the gate's threshold is chosen on
   one half, then the other half is run end to end (greedy, so one run each): how many get
   a call, to the right tool, with valid arguments.
2. Grammar cost: on the same prompt, a forced call decoded under the grammar against a plain
   reply cut to the same number of tokens (decode tokens/s, prefill excluded).
3. Scaling with the number of tools bound (1, 5, 20): grammar build time, prompt tokens,
   time to first token and decode tokens/s of a forced call.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from pydantic import ValidationError

from curp_chain import CurpChatModel
from curp_chain.chat.chat_model import PreparedRequest
from curp_chain.chat.tools.gate import tool_scores
from curp_chain.chat.tools.specs import tool_specs
from curp_chain_integrations.backends.llamacpp import LlamaCppBackend
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
REQUESTS = Path(__file__).with_name("tool_requests.json")


@dataclass(frozen=True)
class Request:
    text: str
    tool: str | None
    """The tool it clearly needs; None: it needs none."""
    arguments: dict[str, Any] | None = None
    """Expected arguments: a number, or strings of which the value must contain one."""

    def right_arguments(self, args: dict[str, Any]) -> bool:
        for key, expected in (self.arguments or {}).items():
            value = args.get(key)
            if isinstance(expected, list):
                text = str(value).lower()
                if not any(option.lower() in text for option in expected):
                    return False
            elif value != expected:
                return False
        return True


def load_requests() -> tuple[list[Request], list[Request]]:
    """(tuning half, held-out half): even and odd positions of each list in the file."""
    data = json.loads(REQUESTS.read_text())
    needs = [Request(r["request"], r["tool"], r["arguments"]) for r in data["needs_tool"]]
    none = [Request(r["request"], None) for r in data["needs_none"]]
    return needs[0::2] + none[0::2], needs[1::2] + none[1::2]


def best_scores(model: CurpChatModel, requests: list[Request]) -> list[tuple[str, float]]:
    """(best tool, its similarity) per request, as the gate of "auto" sees them."""
    specs = tool_specs(TOOLS)
    encode = model.get_personalizer().encoder.encode
    out = []
    for request in requests:
        scores = tool_scores(request.text, specs, encode)
        best = max(scores, key=scores.__getitem__)
        out.append((best, scores[best]))
    return out


def calibrate(model: CurpChatModel, requests: list[Request]) -> float:
    """The threshold (two decimals) that decides the most requests right: a call when one
    is needed, text when none is; ties go to the one farthest from every score."""
    scores = [score for _, score in best_scores(model, requests)]
    needs = [r.tool is not None for r in requests]

    def right(t: float) -> int:
        return sum((s >= t) == need for s, need in zip(scores, needs, strict=True))

    candidates = [c / 100 for c in range(-100, 101)]
    return max(candidates, key=lambda t: (right(t), min(abs(s - t) for s in scores)))


def choice_rates(model: CurpChatModel, requests: list[Request]) -> dict[str, int]:
    """Calls made under "auto" (end to end: gate, then grammar-constrained decoding)."""
    bound = model.bind_tools(TOOLS)  # tool_choice None = "auto"
    by_name = {t.name: t for t in TOOLS}
    counts = {"needed": 0, "called_needed": 0, "cut_short": 0, "right_tool": 0}
    counts |= {"valid_args": 0, "right_args": 0}
    counts |= {"not_needed": 0, "called_not_needed": 0}
    for request in requests:
        reply = bound.invoke(request.text)
        calls = reply.tool_calls
        if request.tool is None:
            counts["not_needed"] += 1
            counts["called_not_needed"] += bool(calls or reply.invalid_tool_calls)
            continue
        counts["needed"] += 1
        counts["called_needed"] += bool(calls)
        counts["cut_short"] += bool(reply.invalid_tool_calls)
        if calls and calls[0]["name"] == request.tool:
            counts["right_tool"] += 1
            schema = by_name[request.tool].args_schema
            try:
                schema.model_validate(calls[0]["args"])  # type: ignore[union-attr]
                counts["valid_args"] += 1
                counts["right_args"] += request.right_arguments(calls[0]["args"])
            except ValidationError:
                pass
    return counts


def print_rates(label: str, counts: dict[str, int]) -> None:
    print(
        f"{label}: called a tool for {counts['called_needed']}/{counts['needed']} requests that "
        f"need one (right tool {counts['right_tool']}, arguments valid {counts['valid_args']}, "
        f"as asked {counts['right_args']}; calls cut short by max_tokens "
        f"{counts['cut_short']}); for {counts['called_not_needed']}/{counts['not_needed']} "
        "that need none"
    )


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
    parser.add_argument("--first-token", action="store_true", help="also measure the old choice")
    parser.add_argument("--choice-only", action="store_true", help="skip the speed sections")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the encoder too: the machine is shared
    backend = LlamaCppBackend(n_threads=args.threads)
    store = SQLHistoryStore("sqlite://")
    store.setup()
    model = CurpChatModel(backend=backend, history_store=store, max_tokens=64)
    tuning, held_out = load_requests()
    threshold = calibrate(model, tuning)
    tuned = model.model_copy(update={"auto_tool_threshold": threshold})
    print(f"threshold chosen on the tuning half ({len(tuning)} requests): {threshold:.2f}")
    for label, requests in (("tuning half", tuning), ("held-out half", held_out)):
        gate = best_scores(tuned, requests)
        wrong = [
            (r.text, round(s, 3))
            for r, (_, s) in zip(requests, gate, strict=True)
            if (s >= threshold) != (r.tool is not None)
        ]
        print(f"{label}: gate errors {wrong}")
    print_rates("held-out, auto", choice_rates(tuned, held_out))
    if args.first_token:
        first = model.model_copy(update={"auto_tool_threshold": None})
        print_rates("held-out, first-token choice", choice_rates(first, held_out))
    if args.choice_only:
        return
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
