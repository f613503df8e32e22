"""Refusals on everyday chat: 50 fixed requests answered with no user and by three users.

Every request of ``benchmarks/everyday_requests.json`` is answered once with no user
(``none``: no soft tokens) and once per user of ``benchmarks/everyday_users.json``
(``curp``: that user's soft tokens), greedy, and each reply is checked by
:func:`curp_chain.data.refusal.is_refusal` and
:func:`curp_chain.data.refusal.is_degenerate` (a reply that answers nothing: the request
echoed, or mostly @mentions, hashtags and emoji, or the line of words an assist checkpoint
with item words places before the request, repeated). Prints
both per condition; ``--json`` keeps every reply; ``--rescore FILE`` re-counts a saved run.

By default the requests go through ``CurpChatModel.invoke`` exactly as an application sends
them (one user message, the model's own defaults, so its default system message). The
diagnostic options change one thing:

- ``--no-default-system`` sends no system message (``default_system_message=None``), so the
  chat template adds its own (SmolLM2: "You are a helpful AI assistant named SmolLM...");
- ``--system TEXT`` sends a system message before each request (``--system ""`` an empty
  one, which stops the chat template from adding its own default);
- ``--soft base`` replaces the user's soft tokens by the projector's learned base (what
  every user shares), ``--soft offset`` keeps only the user's offset from it.

    python benchmarks/everyday_chat.py --json docs/everyday-chat.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from curp_chain import CurpChatModel
from curp_chain.data.refusal import is_degenerate, refusal_reason
from curp_chain.model.item_words import WORDS_LEAD
from curp_chain.runtime.defaults import open_llamacpp_backend, open_store

HERE = Path(__file__).parent


def degenerate_or_words_echo(reply: str, request: str) -> bool:
    """Degenerate, or the item-words line repeated instead of an answer."""
    return is_degenerate(reply, request) or WORDS_LEAD.lower() in reply.lower()


def load_requests(path: Path) -> list[str]:
    return [r["text"] for r in json.loads(path.read_text())["requests"]]


def load_users(path: Path) -> dict[str, list[str]]:
    users: dict[str, list[str]] = json.loads(path.read_text())["users"]
    return users


def build_model(args: argparse.Namespace, users: dict[str, list[str]]) -> CurpChatModel:
    backend = open_llamacpp_backend(None, n_threads=args.threads)
    model = CurpChatModel(
        backend=backend,
        history_store=open_store("sqlite://"),
        max_tokens=args.max_tokens,
        temperature=0.0,
        checkpoint=args.checkpoint,
    )
    if args.no_default_system:
        model.default_system_message = None
    for user_id, history in users.items():
        model.add_history(user_id, history)
    return model


def messages_for(request: str, system: str | None) -> list[BaseMessage]:
    head: list[BaseMessage] = [] if system is None else [SystemMessage(system)]
    return [*head, HumanMessage(request)]


def reply_with_soft(
    model: CurpChatModel, messages: list[BaseMessage], user_id: str, part: str
) -> str:
    """The reply when the user's soft tokens are cut down to their base or offset part."""
    from dataclasses import replace

    # The product's own prompt (system message included), with only the soft tokens cut.
    prepared = model._prepare(messages, None, {"user_id": user_id})
    soft = prepared.prompt.soft
    assert soft is not None
    base = model.get_personalizer().user_model.projector.base[: len(soft)].detach().numpy()
    prompt = replace(prepared.prompt, soft=base if part == "base" else soft - base)
    params = replace(prepared.params, temperature=0.0)  # the words line's no_echo kept
    backend = prepared.backend
    return "".join(piece.text for piece in backend.stream(prompt, params))


def answer(
    model: CurpChatModel, request: str, user_id: str | None, args: argparse.Namespace
) -> str:
    messages = messages_for(request, args.system)
    if user_id is not None and args.soft != "full":
        return reply_with_soft(model, messages, user_id, args.soft)
    reply = model.invoke(messages, user_id=user_id)
    return str(reply.content)


def run(args: argparse.Namespace) -> dict[str, Any]:
    requests = load_requests(args.requests)
    if args.half is not None:  # choose settings on one half, report the other
        requests = requests[("even", "odd").index(args.half) :: 2]
    requests = requests[: args.limit]
    users = load_users(args.users)
    if args.user:
        users = {u: users[u] for u in args.user}
    model = build_model(args, users)
    conditions: list[tuple[str, str | None]] = [] if args.no_none else [("none", None)]
    conditions += [(f"curp:{u}", u) for u in users]
    results: dict[str, Any] = {}
    for name, user_id in conditions:
        start = time.perf_counter()
        rows = []
        for request in requests:
            text = answer(model, request, user_id, args)
            rows.append(
                {
                    "request": request,
                    "reply": text,
                    "refusal": refusal_reason(text),
                    "degenerate": degenerate_or_words_echo(text, request),
                }
            )
        refused = [r for r in rows if r["refusal"]]
        degenerate = sum(1 for r in rows if r["degenerate"])
        results[name] = {
            "refusals": len(refused),
            "requests": len(rows),
            "rate": len(refused) / len(rows),
            "kinds": dict(Counter(r["refusal"] for r in refused)),
            "degenerate": degenerate,
            "wall_s": round(time.perf_counter() - start, 1),
            "replies": rows,
        }
        print(
            f"{name:12s} refusals {len(refused):2d}/{len(rows)} ({len(refused) / len(rows):.0%})"
            f"  {dict(Counter(r['refusal'] for r in refused))}  degenerate {degenerate}"
            f"  {results[name]['wall_s']} s",
            flush=True,
        )
    curp = [results[n] for n, u in conditions if u is not None]
    total = sum(r["refusals"] for r in curp)
    count = sum(r["requests"] for r in curp)
    print(f"{'curp (all)':12s} refusals {total:2d}/{count} ({total / count:.0%})")
    return {
        "settings": {
            "system": args.system,
            "default_system_message": model.default_system_message,
            "soft": args.soft,
            "half": args.half,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "model": model.get_backend().model_id,
            "checkpoint": model.checkpoint or "bundled default",
        },
        "curp_all": {"refusals": total, "requests": count, "rate": total / count},
        "conditions": results,
    }


def rescore(path: Path) -> None:
    """Refusal rates of a saved run (``--json``) under the current detector."""
    report = json.loads(path.read_text())
    print(f"{path}: {report['settings']}")
    total = count = 0
    for name, result in report["conditions"].items():
        reasons = [refusal_reason(row["reply"]) for row in result["replies"]]
        refused = sum(r is not None for r in reasons)
        degenerate = sum(
            degenerate_or_words_echo(row["reply"], row["request"]) for row in result["replies"]
        )
        if name.startswith("curp:"):
            total, count = total + refused, count + len(reasons)
        kinds = dict(Counter(filter(None, reasons)))
        print(f"{name:12s} refusals {refused:2d}/{len(reasons)}  {kinds}  degenerate {degenerate}")
    print(f"{'curp (all)':12s} refusals {total:2d}/{count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=Path, default=HERE / "everyday_requests.json")
    parser.add_argument("--users", type=Path, default=HERE / "everyday_users.json")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--checkpoint", default=None, help="CURP checkpoint folder (default: the bundled one)"
    )
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--limit", type=int, default=None, help="first N requests only")
    parser.add_argument(
        "--half",
        choices=["even", "odd"],
        help="only the requests at even (0, 2, ...) or odd places",
    )
    parser.add_argument("--user", action="append", help="only these users (repeatable)")
    parser.add_argument("--no-none", action="store_true", help="skip the no-user condition")
    parser.add_argument("--system", default=None, help="a system message sent before each request")
    parser.add_argument(
        "--no-default-system",
        action="store_true",
        help="send no default system message (CurpChatModel(default_system_message=None)); "
        "the behaviour before it existed",
    )
    parser.add_argument("--soft", choices=["full", "base", "offset"], default="full")
    parser.add_argument("--show", type=int, default=3, help="example refusals shown per condition")
    parser.add_argument("--json", type=Path, default=None, help="write every reply here")
    parser.add_argument("--rescore", type=Path, help="re-count the refusals of a saved --json run")
    args = parser.parse_args()
    if args.rescore:
        rescore(args.rescore)
        return
    report = run(args)
    for name, result in report["conditions"].items():
        shown = [r for r in result["replies"] if r["refusal"]][: args.show]
        for row in shown:
            print(f"  [{name}] {row['request']!r} -> {row['reply'][:90]!r}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
