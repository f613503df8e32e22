"""Tool calling on the default model: how often "auto" calls a tool, and what the grammar costs.

    python benchmarks/tool_calls.py [--threads 1] [--repeats 3] [--first-token]
        [--parts choice,speed,gate,pick,runon,hf-grammar]

1. Choice under tool_choice="auto" (benchmarks/tool_requests.json: 30 requests that clearly
   need one of three tools, 30 that clearly need none): the gate's threshold is chosen on
   one half, then the other half is run end to end (greedy, so one run each): how many get
   a call, to the right tool, with valid arguments.
2. Grammar cost: on the same prompt, a forced call decoded under the grammar against a plain
   reply cut to the same number of tokens (decode tokens/s, prefill excluded).
3. Scaling with the number of tools bound (1, 5, 20): grammar build time, prompt tokens,
   time to first token and decode tokens/s of a forced call.
4. gate: the relevance gate's false-call rate with 1, 5 and 20 tools bound (the three
   tools plus ``more_tools`` of the request file) on the 30 requests that need none and on
   the 84 held-out everyday requests of the assist task, and its call rate on the 30 that
   need one (their tool among those bound), for the fixed threshold alone and for the
   calibrated gate (decisions only: no LLM).
5. pick: tool_choice "any" on the 30 requests that need a tool, with 3 and with 20 tools
   bound: the right tool, valid and as-asked arguments, when the LLM picks among the listed
   tools (as JSON lines, the format before signatures, or as signatures) and when the encoder
   picks (the default).
6. runon: forced calls that fit nothing in the request, and "auto" end to end, on llama.cpp
   and transformers: how many tokens each decodes, and whether it ran to max_tokens.
7. hf-grammar: the grammar's cost on transformers (llguidance): a forced call under the
   grammar against a plain reply cut to the same number of tokens, and the grammar's build
   and per-token mask times.
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
from unittest.mock import patch

import numpy as np
import torch
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.tools import tool
from pydantic import ValidationError

from curp_chain import CurpChatModel
from curp_chain.chat.chat_model import PreparedRequest
from curp_chain.chat.tools import gate as gate_module
from curp_chain.chat.tools import prompt as tool_prompt
from curp_chain.chat.tools.gate import EVERYDAY_REQUESTS, NO_TOOL_INTENTS, decide, tool_scores
from curp_chain.chat.tools.signature import tool_signature
from curp_chain.chat.tools.specs import ToolSpec, tool_specs
from curp_chain.interfaces.protocols import SoftPromptBackend
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.assist import load_requests as load_assist_requests
from curp_chain_integrations.backends.hf import TransformersBackend
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


def calibrate(model: CurpChatModel, requests: list[Request]) -> tuple[float, float, float]:
    """(threshold, lowest, highest): the two-decimal thresholds from lowest to highest all
    decide the most requests right with the calibrated gate (a call when one is needed, text
    when none is); the threshold is the model's default when it lies among them, else the
    one farthest from every score."""
    specs = tool_specs(TOOLS)
    encode = model.get_personalizer().encoder.encode
    scores = []
    for request in requests:  # the gate's choice with no threshold: a call needs s >= t
        gate = decide([ChatTurn("user", request.text)], specs, encode, -1.0)
        scores.append(gate.scores[gate.call] if gate.call else -2.0)
    needs = [r.tool is not None for r in requests]

    def right(t: float) -> int:
        return sum((s >= t) == need for s, need in zip(scores, needs, strict=True))

    candidates = [c / 100 for c in range(-100, 101)]
    most = max(right(t) for t in candidates)
    best = [t for t in candidates if right(t) == most]
    default = model.auto_tool_threshold
    if default is not None and any(abs(t - default) < 1e-9 for t in best):
        return default, best[0], best[-1]
    chosen = max(best, key=lambda t: min(abs(s - t) for s in scores))
    return chosen, best[0], best[-1]


def choice_rates(model: CurpChatModel, requests: list[Request]) -> dict[str, int]:
    """Calls made under "auto" (end to end: gate, then grammar-constrained decoding)."""
    bound = model.bind_tools(TOOLS)  # tool_choice None = "auto"
    by_name = {t.name: t for t in TOOLS}
    counts = {"needed": 0, "called_needed": 0, "cut_short": 0, "right_tool": 0}
    counts |= {"valid_args": 0, "right_args": 0, "to_max_tokens": 0, "run_on": 0}
    counts |= {"not_needed": 0, "called_not_needed": 0}
    for request in requests:
        reply = bound.invoke(request.text)
        calls = reply.tool_calls
        tried = bool(calls or reply.invalid_tool_calls)  # a call, valid or not
        counts["to_max_tokens"] += tried and reply.response_metadata["finish_reason"] == "length"
        counts["run_on"] += "ran on" in reply.response_metadata.get("tool_call_error", "")
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
        f"as asked {counts['right_args']}; invalid calls {counts['cut_short']}); for "
        f"{counts['called_not_needed']}/{counts['not_needed']} that need none; calls that "
        f"ran to max_tokens {counts['to_max_tokens']}, calls stopped as run-ons "
        f"{counts['run_on']}"
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


def timed(request: PreparedRequest, backend: SoftPromptBackend) -> tuple[float, float, int]:
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


def grammar_cost(model: CurpChatModel, backend: SoftPromptBackend, repeats: int) -> dict[str, Any]:
    messages: list[BaseMessage] = [HumanMessage("What is 1234 plus 5678?")]
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
    messages: list[BaseMessage] = [HumanMessage("Look up five records about trail running.")]
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


def tool_pool() -> list[ToolSpec]:
    """The three tools, then the 17 ``more_tools`` of the request file."""
    more = json.loads(REQUESTS.read_text())["more_tools"]
    return list(tool_specs([*TOOLS, *({"type": "function", "function": t} for t in more)]))


def tool_sets(pool: list[ToolSpec], k: int, needed: str | None) -> list[list[ToolSpec]]:
    """The tool sets of size ``k`` a request is tried with: for a request that needs none,
    every run of ``k`` consecutive tools of the pool (cyclic: each tool in ``k`` of them);
    for one that needs a tool, that tool and the ``k - 1`` after it."""
    n = len(pool)
    if needed is not None:
        at = [spec.name for spec in pool].index(needed)
        return [[pool[(at + j) % n] for j in range(min(k, n))]]
    if k >= n:
        return [pool]
    return [[pool[(i + j) % n] for j in range(k)] for i in range(n)]


def cached(encode: Any) -> Any:
    """``encode`` one text at a time, each text once (the gate runs thousands of times)."""
    memo: dict[str, torch.Tensor] = {}

    def run(texts: Any) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, encode(missing), strict=True))
        return torch.stack([memo[t] for t in texts])

    return run


def everyday_requests() -> list[str]:
    """The assist task's held-out everyday requests (cooking, plans, gifts, books, trips,
    writing, money, ...; the gate's references hold its training requests): none asks for
    an action that a bound tool performs."""
    return [r.text for r in load_assist_requests("held_out")]


def gate_rows(
    decide_for: Any, gate: str, sets: dict[str, list[str]], needs: list[tuple[str, str]], k: int
) -> dict[str, Any]:
    """One row of ``gate_scaling``: ``decide_for(text, specs)`` -> the tool called, or None."""
    pool = tool_pool()
    row: dict[str, Any] = {"tools": k, "gate": gate}
    for name, none in sets.items():
        called = [(t, decide_for(t, sp)) for t in none for sp in tool_sets(pool, k, None)]
        false = [c is not None for _, c in called]
        row[name] = {
            "false_calls": sum(false),
            "tries": len(false),
            "false_rate": statistics.mean(false),
            "called_for": sorted({f"{t} -> {c}" for t, c in called if c}),
        }
    right = [decide_for(t, tool_sets(pool, k, tool)[0]) == tool for t, tool in needs]
    return row | {"right_calls": sum(right), "needed": len(right)}


def gate_scaling(model: CurpChatModel, threshold: float) -> list[dict[str, Any]]:
    """False-call and call rates of the gate with 1, 5 and 20 tools bound, on the 30
    requests of the file that need none, on the 84 held-out everyday requests and on the
    gate's own training references, each left out of the references while it is decided:
    the threshold alone, then the calibrated gate as it grew (its 40 everyday references;
    the assist training requests added; the request compared with its nearest everyday
    references, now)."""
    data = json.loads(REQUESTS.read_text())
    needs = [(r["request"], r["tool"]) for r in data["needs_tool"]]
    encode = cached(model.get_personalizer().encoder.encode)
    intents = encode(list(NO_TOOL_INTENTS))
    wider = gate_module.everyday_references()
    sets = {
        "file": [r["request"] for r in data["needs_none"]],
        "everyday": everyday_requests(),
        "references": wider[len(EVERYDAY_REQUESTS) :],
    }
    gates = {  # name: (calibrated, references, nearest references compared)
        "threshold only": (False, wider, 0),
        "calibrated, 40 references": (True, list(EVERYDAY_REQUESTS), 0),
        "calibrated, wider references (before)": (True, wider, 0),
        "calibrated, nearest references compared (now)": (
            True,
            wider,
            gate_module.EVERYDAY_NEIGHBOURS,
        ),
    }
    rows = []
    for gate, (calibrated, references, neighbours) in gates.items():

        def decide_for(text: str, specs: list[ToolSpec], on: bool = calibrated) -> str | None:
            # A training reference is left out while it is itself decided.
            kept = [r for r in references if r != text]  # noqa: B023
            with (
                patch.object(gate_module, "_references", lambda _: (encode(kept), intents)),
                patch.object(gate_module, "EVERYDAY_NEIGHBOURS", neighbours),  # noqa: B023
            ):
                turns = [ChatTurn("user", text)]
                return decide(turns, specs, encode, threshold, calibrated=on).call

        rows += [gate_rows(decide_for, gate, sets, needs, k) for k in (1, 5, 20)]
    return rows


MISFIT_CALLS = [
    ("How much is 40 dollars in yen?", "lookup_orders"),
    ("Say hello.", "add_numbers"),
    ("Write a haiku about autumn leaves.", "current_time"),
    ("Tell me a short joke.", "get_weather"),
    ("What is the capital of Italy?", "set_timer"),
    ("Give me one tip for sleeping better.", "track_package"),
]
"""Forced calls that fit nothing in the request (the first is the one that ran on)."""


def run_ons(models: dict[str, CurpChatModel], max_tokens: int) -> list[dict[str, Any]]:
    """Each misfit forced call on each backend: tokens decoded, and how it ended."""
    by_name = {spec.name: spec for spec in tool_pool()}
    rows = []
    for backend_name, model in models.items():
        for question, tool_name in MISFIT_CALLS:
            tool_dict = by_name[tool_name].as_openai()
            bound = model.bind_tools([tool_dict], tool_choice=tool_name)
            start = time.perf_counter()
            reply = bound.invoke(question, max_tokens=max_tokens)
            seconds = time.perf_counter() - start
            error = reply.response_metadata.get("tool_call_error", "")
            rows.append(
                {
                    "backend": backend_name,
                    "request": question,
                    "tool": tool_name,
                    "tokens": reply.usage_metadata["output_tokens"] if reply.usage_metadata else 0,
                    "finish": reply.response_metadata["finish_reason"],
                    "valid": bool(reply.tool_calls),
                    "run_on": "ran on" in error,
                    "args": reply.tool_calls[0]["args"] if reply.tool_calls else None,
                    "seconds": seconds,
                }
            )
    return rows


def hf_grammar(model: CurpChatModel, backend: TransformersBackend, repeats: int) -> dict[str, Any]:
    """Grammar cost on transformers: decode rates with and without it, build and mask times."""
    cost = grammar_cost(model, backend, repeats)
    messages: list[BaseMessage] = [HumanMessage("What is 1234 plus 5678?")]
    request = model._prepare(messages, None, {"tools": TOOLS, "tool_choice": "add_numbers"})
    tokens = [
        t for piece in backend.stream(request.prompt, request.params) for t in piece.token_ids
    ]
    engine = backend._grammars
    engine.tokenizer()  # built once per backend, before the first constrained request
    start = time.perf_counter()
    for _ in range(repeats):
        engine.constraint(request.params)
    cost["build_ms"] = 1000 * (time.perf_counter() - start) / repeats
    constraint = engine.constraint(request.params)
    assert constraint is not None
    logits = np.zeros(int(backend.model.config.vocab_size), dtype=np.float32)
    start = time.perf_counter()
    for token in tokens:
        constraint.allowed(logits)
        constraint.accept(token)
    cost["mask_ms_per_token"] = 1000 * (time.perf_counter() - start) / max(1, len(tokens))
    return cost


def gate_errors(model: CurpChatModel, requests: list[Request], threshold: float) -> list[str]:
    """The requests the calibrated gate decides wrong with the three tools."""
    specs = tool_specs(TOOLS)
    encode = model.get_personalizer().encoder.encode
    return [
        r.text
        for r in requests
        if (decide([ChatTurn("user", r.text)], specs, encode, threshold).call is not None)
        != (r.tool is not None)
    ]


def print_choice(model: CurpChatModel, first_token: bool) -> float:
    tuning, held_out = load_requests()
    threshold, low, high = calibrate(model, tuning)
    tuned = model.model_copy(update={"auto_tool_threshold": threshold})
    print(
        f"on the tuning half ({len(tuning)} requests) every threshold from {low:.2f} to "
        f"{high:.2f} decides the most right; chosen: {threshold:.2f}"
    )
    for label, requests in (("tuning half", tuning), ("held-out half", held_out)):
        print(f"{label}: gate errors {gate_errors(model, requests, threshold)}")
    print_rates("held-out, auto", choice_rates(tuned, held_out))
    if first_token:
        first = model.model_copy(update={"auto_tool_threshold": None})
        print_rates("held-out, first-token choice", choice_rates(first, held_out))
    return threshold


def print_speed(model: CurpChatModel, backend: LlamaCppBackend, repeats: int) -> None:
    cost = grammar_cost(model, backend, repeats)
    print(
        f"forced call: {cost['call_tokens']} tokens at {cost['call_tok_s']:.1f} tok/s; "
        f"plain reply: {cost['plain_tokens']} tokens at {cost['plain_tok_s']:.1f} tok/s"
    )
    print("| tools | grammar build (ms) | prompt tokens | TTFT (s) | decode tok/s | tokens |")
    print("|---|---|---|---|---|---|")
    for row in scaling(model, backend, repeats):
        print(
            f"| {row['tools']} | {row['grammar_build_ms']:.1f} | {row['prompt_tokens']} | "
            f"{row['ttft_s']:.3f} | {row['decode_tok_s']:.1f} | {row['output_tokens']} |"
        )


def print_gate(model: CurpChatModel, threshold: float) -> None:
    rows = gate_scaling(model, threshold)
    sets = ("file", "everyday", "references")
    print(
        f"| tools | gate (threshold {threshold:.2f}) | false calls: 30 of the file | "
        "84 held-out everyday | 343 references, each left out | right calls |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [
            f"{row[name]['false_calls']}/{row[name]['tries']} ({row[name]['false_rate']:.1%})"
            for name in sets
        ]
        print(
            f"| {row['tools']} | {row['gate']} | {' | '.join(cells)} | "
            f"{row['right_calls']}/{row['needed']} |"
        )
    for row in rows:
        for name in sets:
            print(f"  {row['tools']} tools, {row['gate']}, {name}: {row[name]['called_for']}")


def json_line(spec: ToolSpec) -> str:
    """A tool as the system message listed it before signatures: its JSON line."""
    entry = {"name": spec.name, "description": spec.description, "parameters": spec.parameters}
    return json.dumps(entry, ensure_ascii=False)


def forced_picks(model: CurpChatModel) -> list[dict[str, Any]]:
    """tool_choice "any" on the 60 requests' 30 that need a tool, with the three tools and
    with all 20 bound: which tool the call names, with valid and as-asked arguments, when the
    LLM picks from the listed tools (listed as JSON lines or as signatures) and when the
    encoder picks (the default)."""
    tuning, held_out = load_requests()
    needed = [r for r in tuning + held_out if r.tool is not None]
    more = json.loads(REQUESTS.read_text())["more_tools"]
    tool_sets: dict[str, list[Any]] = {
        "3": list(TOOLS),
        "20": [*TOOLS, *({"type": "function", "function": t} for t in more)],
    }
    variants = {
        "LLM picks, JSON lines": (False, json_line),
        "LLM picks, signatures": (False, tool_signature),
        "encoder picks (default)": (True, tool_signature),
    }
    by_name = {t.name: t for t in TOOLS}
    rows = []
    for label, (encoder_picks, listing) in variants.items():
        tool_prompt.tool_signature = listing  # the system message's format for this variant
        picking = model.model_copy(update={"encoder_picks_forced_tool": encoder_picks})
        for count, tools in tool_sets.items():
            bound = picking.bind_tools(tools, tool_choice="any")
            counts = {"right": 0, "valid": 0, "asked": 0}
            for request in needed:
                calls = bound.invoke(request.text).tool_calls
                if not calls or calls[0]["name"] != request.tool:
                    continue
                counts["right"] += 1
                try:
                    by_name[request.tool].args_schema.model_validate(calls[0]["args"])  # type: ignore[union-attr]
                except ValidationError:
                    continue
                counts["valid"] += 1
                counts["asked"] += request.right_arguments(calls[0]["args"])
            rows.append({"variant": label, "tools": count, "requests": len(needed), **counts})
    tool_prompt.tool_signature = tool_signature
    return rows


def print_picks(model: CurpChatModel) -> None:
    print("| who picks, tools listed as | tools bound | right tool | valid arguments | as asked |")
    print("|---|---|---|---|---|")
    for r in forced_picks(model):
        n = r["requests"]
        print(
            f"| {r['variant']} | {r['tools']} | {r['right']}/{n} | {r['valid']}/{n} | "
            f"{r['asked']}/{n} |"
        )


def print_run_ons(models: dict[str, CurpChatModel], max_tokens: int) -> None:
    print(f"| backend | request | forced tool | tokens (max {max_tokens}) | finish | ended as |")
    print("|---|---|---|---|---|---|")
    for row in run_ons(models, max_tokens):
        ended = "run-on, stopped" if row["run_on"] else "valid call" if row["valid"] else "invalid"
        print(
            f"| {row['backend']} | {row['request']} | {row['tool']} | {row['tokens']} | "
            f"{row['finish']} | {ended} |"
        )
        print(f"  args {row['args']}, {row['seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-token", action="store_true", help="also measure the old choice")
    parser.add_argument("--parts", default="choice,speed,gate,pick,runon,hf-grammar")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)  # the encoder and transformers too: the machine is shared
    backend = LlamaCppBackend(n_threads=args.threads)
    store = SQLHistoryStore("sqlite://")
    store.setup()
    model = CurpChatModel(backend=backend, history_store=store, max_tokens=64)
    threshold = model.auto_tool_threshold or 0.0
    if "choice" in parts:
        threshold = print_choice(model, args.first_token)
    if "speed" in parts:
        print_speed(model, backend, args.repeats)
    if "gate" in parts:
        print_gate(model, threshold)
    if "pick" in parts:
        print_picks(model)
    if parts & {"runon", "hf-grammar"}:
        hf_backend = TransformersBackend()
        hf_model = model.model_copy(update={"backend": hf_backend})
        hf_model._backend = None  # a copy keeps the built backend: use the one given
        if "runon" in parts:
            print_run_ons({"llama.cpp": model, "transformers": hf_model}, max_tokens=128)
        if "hf-grammar" in parts:
            cost = hf_grammar(hf_model, hf_backend, args.repeats)
            print(
                f"transformers: forced call {cost['call_tokens']} tokens at "
                f"{cost['call_tok_s']:.1f} tok/s; plain reply {cost['plain_tokens']} tokens at "
                f"{cost['plain_tok_s']:.1f} tok/s; grammar build {cost['build_ms']:.1f} ms, "
                f"mask {cost['mask_ms_per_token']:.2f} ms per token"
            )


if __name__ == "__main__":
    main()
