"""`curp serve` under faults: kill -9, a full server, SIGTERM during a stream, and a
PostgreSQL restart while requests run. Each test starts its own server process."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import LiveServer, restart_postgres, start_server

from curp_chain_stores import SQLHistoryStore

pytestmark = pytest.mark.slow

QUESTION = "Suggest a plan for my Saturday."
ITEMS = ["Sunrise trail run: 18 km.", "Marathon week 12, long run 32 km.", "New race shoes."]


def chat(server: LiveServer, **fields: Any) -> httpx.Response:
    body = {"model": "curp", "messages": [{"role": "user", "content": QUESTION}], **fields}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)


def test_history_acknowledged_before_a_kill_9_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    server = start_server(tmp_path, "--store", url, "--default-max-tokens", "4")
    try:
        added = httpx.post(
            f"{server.base_url}/users/ana/items",
            json={"items": [{"text": text} for text in ITEMS]},
            timeout=120,
        )
        assert added.status_code == 201
        remembered = chat(server, user="ana", remember_turns=True)
        assert remembered.status_code == 200
    finally:
        server.process.kill()  # SIGKILL: no shutdown, no flush
        server.process.wait(30)
    with SQLHistoryStore(url) as store:
        texts = [item.text for item in store.get_items("ana")]
    assert sorted(texts) == sorted([*ITEMS, QUESTION])


def test_a_full_server_answers_429_and_sigterm_ends_it_within_30_s(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        "--store",
        f"sqlite:///{tmp_path / 'history.sqlite'}",
        "--slots",
        "1",
        "--max-queued",
        "0",
        "--shutdown-timeout",
        "5",
    )
    events: list[str] = []
    opened = threading.Event()

    def long_stream() -> None:
        body: dict[str, Any] = {"model": "curp", "max_tokens": 2000, "stream": True}
        body["messages"] = [{"role": "user", "content": "Tell a long story."}]
        try:
            with httpx.stream(
                "POST", f"{server.base_url}/chat/completions", json=body, timeout=120
            ) as answer:
                for line in answer.iter_lines():
                    events.append(line)
                    opened.set()
        except httpx.HTTPError as error:
            events.append(f"closed: {type(error).__name__}")
        opened.set()

    reader = threading.Thread(target=long_stream)
    reader.start()
    try:
        assert opened.wait(120), "the stream did not begin"
        assert server.gauge("curp_chat_requests_in_flight") == 1, events
        full = chat(server, max_tokens=2)
        assert full.status_code == 429
        assert full.headers["Retry-After"] == "1"
        assert full.json()["error"]["type"] == "rate_limit_error"
        asked = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(server.url + "/healthz", timeout=5)
        assert server.process.wait(30) == 0
        assert time.monotonic() - asked < 30
    finally:
        server.stop()
        reader.join(60)
    # The stream had begun and was cut at the shutdown timeout (2000 tokens take far longer
    # than 5 s).
    assert any(event.startswith("data: {") for event in events)
    assert "data: [DONE]" not in events


@pytest.mark.postgres
def test_a_postgresql_restart_while_requests_run_fails_none(
    tmp_path: Path, postgres_database_url: str
) -> None:
    server = start_server(tmp_path, "--store", postgres_database_url, "--default-max-tokens", "6")
    try:
        for user in ("ana", "ben"):
            added = httpx.post(
                f"{server.base_url}/users/{user}/items",
                json={"items": [{"text": text} for text in ITEMS]},
                timeout=120,
            )
            assert added.status_code == 201
        alone = {
            user: chat(server, user=user).json()["choices"][0]["message"]["content"]
            for user in ("ana", "ben")
        }
        answers: list[tuple[str, int, str]] = []
        stop = threading.Event()

        def keep_asking(user: str) -> None:
            while not stop.is_set():
                answer = chat(server, user=user)
                content = (
                    answer.json()["choices"][0]["message"]["content"]
                    if answer.is_success
                    else answer.text
                )
                answers.append((user, answer.status_code, content))

        askers = [threading.Thread(target=keep_asking, args=(u,)) for u in ("ana", "ben")]
        for asker in askers:
            asker.start()
        time.sleep(1)
        before = len(answers)
        restart_postgres()
        time.sleep(2)
        stop.set()
        for asker in askers:
            asker.join(120)
        assert len(answers) > before  # requests ran across the restart
        assert [a for a in answers if a[1] != 200] == []
        assert all(content == alone[user] for user, _, content in answers)
        late = httpx.post(
            f"{server.base_url}/users/ana/items", json={"items": [{"text": "after"}]}, timeout=60
        )
        assert late.status_code == 201
    finally:
        server.stop()
