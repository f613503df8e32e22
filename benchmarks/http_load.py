"""Load over HTTP: concurrent streaming clients against `curp serve`, and the same requests
served in-process.

For each number of concurrent clients (``--clients``, default 1 4 16), ``--requests``
personalized streaming requests (the everyday users and requests of
benchmarks/everyday_*.json, greedy, ``--max-tokens`` tokens) are sent
  - in-process: ``CurpChatModel.astream`` on a llama.cpp backend built like the server's,
    one asyncio task per client;
  - over HTTP: ``POST /v1/chat/completions`` with ``"stream": true`` (httpx, server-sent
    events parsed as they arrive) to a `curp serve` process on loopback.
Both sides use the same GGUF, llama.cpp threads, workers and slots, torch at one thread and
the same history store. Rounds alternate which side goes first. Reported per side:
requests/s (median over rounds), p50 and p99 time to first token and to the last, errors;
and the HTTP side's throughput as a fraction of in-process: of the medians, and the median
of each round's pair (the two sides back to back, which cancels drift in a shared machine's
load). Every HTTP reply is checked
against the in-process reply to the same request.

With ``--restart-postgres`` (and a PostgreSQL ``--store``), one more HTTP round at the
largest client count restarts the local PostgreSQL one second in; its errors must be 0.

    python benchmarks/http_load.py --requests 16 --clients 1 4 16 --max-tokens 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from curp_chain import CurpChatModel
from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    """One request: seconds to the first text and to the end, the reply, or an error."""

    ttft: float
    total: float
    text: str
    error: str | None = None


@dataclass(frozen=True)
class Request:
    user: str
    question: str


def workload(count: int) -> tuple[dict[str, list[str]], list[Request]]:
    users = json.loads((HERE / "everyday_users.json").read_text())["users"]
    questions = [
        r["text"] for r in json.loads((HERE / "everyday_requests.json").read_text())["requests"]
    ]
    names = sorted(users)
    requests = [Request(names[i % len(names)], questions[i % len(questions)]) for i in range(count)]
    return users, requests


async def in_process(model: CurpChatModel, request: Request, max_tokens: int) -> Result:
    start = time.perf_counter()
    first = None
    parts = []
    async for chunk in model.astream(
        request.question, user_id=request.user, max_tokens=max_tokens, temperature=0.0
    ):
        text = str(chunk.content)
        if text and first is None:
            first = time.perf_counter()
        parts.append(text)
    end = time.perf_counter()
    return Result((first or end) - start, end - start, "".join(parts))


async def over_http(client: httpx.AsyncClient, request: Request, max_tokens: int) -> Result:
    start = time.perf_counter()
    first = None
    parts = []
    body = {
        "model": "curp",
        "messages": [{"role": "user", "content": request.question}],
        "user": request.user,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                return Result(
                    0.0, time.perf_counter() - start, "", f"{answer.status_code}: {answer.text}"
                )
            async for line in answer.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(0.0, time.perf_counter() - start, "", str(event["error"]))
                text = event["choices"][0]["delta"].get("content") if event["choices"] else None
                if text and first is None:
                    first = time.perf_counter()
                parts.append(text or "")
    except httpx.HTTPError as error:
        return Result(0.0, time.perf_counter() - start, "", f"{type(error).__name__}: {error}")
    end = time.perf_counter()
    return Result((first or end) - start, end - start, "".join(parts))


async def run_clients(
    requests: list[Request], clients: int, call: Callable[[Request], Awaitable[Result]]
) -> tuple[float, list[Result]]:
    """Wall seconds and results of ``requests`` sent by ``clients`` concurrent clients, each
    sending its next request when its last one ended."""
    results: list[Result | None] = [None] * len(requests)
    pending = iter(range(len(requests)))

    async def client() -> None:
        for index in pending:
            results[index] = await call(requests[index])

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, [r for r in results if r is not None]


def start_server(args: argparse.Namespace, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = 18000 + os.getpid() % 1000
    command = [sys.executable, "-m", "curp_chain.cli.serve", "--port", str(port)]
    command += [
        "--store",
        args.store,
        "--n-threads",
        str(args.n_threads),
        "--slots",
        str(args.slots),
    ]
    command += ["--max-queued", "256", "--log-level", "warning"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    environ = {**os.environ, "CURP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environ)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit("curp serve exited at start")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("curp serve was not ready in 5 minutes")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank): with 16 requests, p99 is the slowest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(
    label: str, clients: int, walls: list[float], results: list[Result], count: int
) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    return {
        "side": label,
        "clients": clients,
        "requests_per_s": statistics.median(count / wall for wall in walls),
        "ttft_p50": percentile([r.ttft for r in ok], 50) if ok else float("nan"),
        "ttft_p99": percentile([r.ttft for r in ok], 99) if ok else float("nan"),
        "total_p50": percentile([r.total for r in ok], 50) if ok else float("nan"),
        "total_p99": percentile([r.total for r in ok], 99) if ok else float("nan"),
        "errors": len(results) - len(ok),
    }


def restart_postgres() -> None:
    versions = sorted(Path("/etc/postgresql").glob("*/main"))
    tool = shutil.which("pg_ctlcluster")
    if tool is None or not versions:
        raise SystemExit("--restart-postgres needs a local cluster that pg_ctlcluster restarts")
    subprocess.run([tool, versions[-1].parent.name, "main", "restart"], check=True)


async def measure(args: argparse.Namespace, model: CurpChatModel, url: str) -> list[dict[str, Any]]:
    _, requests = workload(args.requests)
    rows: list[dict[str, Any]] = []
    mismatches = 0
    limits = httpx.Limits(max_connections=max(args.clients) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        def local(r: Request) -> Awaitable[Result]:
            return in_process(model, r, args.max_tokens)

        def remote(r: Request) -> Awaitable[Result]:
            return over_http(client, r, args.max_tokens)

        # Warm-up on both sides, and each request's reply alone (the reference).
        reference = {r: (await local(r)).text for r in set(requests)}
        for r in set(requests):
            await remote(r)
        for clients in args.clients:
            sides: dict[str, tuple[list[float], list[Result]]] = {
                "in-process": ([], []),
                "HTTP": ([], []),
            }
            for round_ in range(args.rounds):
                order = [("in-process", local), ("HTTP", remote)]
                for label, call in order if round_ % 2 == 0 else order[::-1]:
                    wall, results = await run_clients(requests, clients, call)
                    sides[label][0].append(wall)
                    sides[label][1].extend(results)
            for result, request in zip(sides["HTTP"][1], requests * args.rounds, strict=True):
                mismatches += result.error is None and result.text != reference[request]
            for label, (walls, results) in sides.items():
                rows.append(summary(label, clients, walls, results, len(requests)))
            # Rounds run back to back, so a paired ratio cancels drift in the machine's load.
            paired = [a / b for a, b in zip(sides["in-process"][0], sides["HTTP"][0], strict=True)]
            rows[-1]["paired_ratio"] = statistics.median(paired)
            print(json.dumps(rows[-2:]), flush=True)
        if args.restart_postgres:
            clients = max(args.clients)
            restart = asyncio.get_running_loop().run_in_executor(None, _restart_after, 1.0)
            wall, results = await run_clients(requests, clients, remote)
            await restart
            row = summary("HTTP, PostgreSQL restarted", clients, [wall], results, len(requests))
            rows.append(row)
            print(json.dumps(row), [r.error for r in results if r.error], flush=True)
    print(f"HTTP replies that differ from the in-process reply: {mismatches}")
    return rows


def _restart_after(delay: float) -> None:
    time.sleep(delay)
    started = time.perf_counter()
    restart_postgres()
    print(f"PostgreSQL restarted in {time.perf_counter() - started:.1f} s", flush=True)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | side | requests/s | HTTP / in-process | TTFT p50 s | TTFT p99 s "
        "| total p50 s | total p99 s | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["clients"]: r["requests_per_s"] for r in rows if r["side"] == "in-process"}
    for r in rows:
        ratio = f"{r['requests_per_s'] / base[r['clients']]:.2f}"
        if "paired_ratio" in r:
            ratio += f" (paired {r['paired_ratio']:.2f})"
        lines.append(
            f"| {r['clients']} | {r['side']} | {r['requests_per_s']:.2f} | {ratio} | "
            f"{r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['total_p50']:.2f} | "
            f"{r['total_p99']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per round")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n-threads", type=int, default=1, help="llama.cpp threads per worker")
    parser.add_argument("--workers", type=int, help="llama.cpp workers (default: one per core)")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--store", help="history store URL (default: a fresh SQLite file)")
    parser.add_argument("--restart-postgres", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="curp-http-load-"))
    args.store = args.store or f"sqlite:///{home / 'history.sqlite'}"
    backend = LlamaCppBackend(
        n_threads=args.n_threads, slots=args.slots, workers=args.workers, max_queued=256
    )
    model = CurpChatModel(backend=backend, store_url=args.store)
    users, _ = workload(args.requests)
    for user, items in users.items():
        model.forget_user(user)
        model.add_history(user, items)
    server, url = start_server(args, home)
    try:
        rows = asyncio.run(measure(args, model, url))
    finally:
        server.terminate()
        server.wait(60)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
