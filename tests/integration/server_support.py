"""A live `curp serve` process on loopback, for the server tests (tests/integration/test_server_*).

The server runs as its own process (``python -m curp_chain.cli.serve``), the way users run
it, so that signals, a kill -9 and real sockets are what the tests see. It uses the real
default model at one llama.cpp thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 240.0
"""Importing torch and loading the models takes 5-10 s on an idle 2-core machine; a busy
one can take many times that."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    """``http://127.0.0.1:PORT``."""
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as ``base_url``."""
        return self.url + "/v1"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.exited():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def gauge(self, name: str) -> float:
        """A metric's value from /metrics (a gauge or a counter without labels)."""
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name} in /metrics")


def start_server(workdir: Path, *options: str, env: dict[str, str] | None = None) -> LiveServer:
    """Start `curp serve` with ``options`` on a free port and wait until /readyz says ready."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CURP_SERVE_")},
        "CURP_HOME": str(workdir / "curp-home"),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "curp_chain.cli.serve",
        "--port",
        str(port),
        "--n-threads",
        "1",
        "--workers",
        "1",
        "--log-level",
        "warning",
        *options,
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environ)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.exited():
            raise AssertionError(f"curp serve exited at start:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise AssertionError(f"curp serve was not ready in {START_TIMEOUT_S} s:\n{server.log_text()}")


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster (skips the test where none can be restarted)."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if tool else []
    if tool is None or not versions:
        pytest.skip("needs a local PostgreSQL cluster that pg_ctlcluster can restart")
    version = versions[-1].parent.name
    subprocess.run([tool, version, "main", "restart"], check=True, timeout=120)
