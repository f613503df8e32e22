"""`curp serve` through real clients: the openai SDK and LangChain's ChatOpenAI against a live
server on loopback, two tenants, the real default model (greedy, short replies)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field
from server_support import LiveServer, start_server

from curp_chain_stores import SQLHistoryStore

pytestmark = pytest.mark.slow

ACME_KEY = "acme-test-key-0123456789"
GLOBEX_KEY = "globex-test-key-0123456789"
INITECH_KEY = "initech-test-key-0123456789"
RUNNER = [
    "Sunrise trail run: 18 km and 900 m of climbing.",
    "Marathon week 12, long run 32 km.",
    "New carbon race shoes for hill repeats.",
    "Cold lake swim after a mountain ultra.",
]
READER = [
    "Finished a 1,200-piece castle puzzle.",
    "Rainy Sunday with tea and a fantasy novel.",
    "Sourdough crumb improving, crust still pale.",
]
QUESTION = "Suggest a plan for my Saturday."
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[LiveServer]:
    keys = workdir / "keys.txt"
    keys.write_text(
        f"# three tenants; initech remembers its users' turns\n{ACME_KEY} acme\n"
        f"{GLOBEX_KEY} globex\n{INITECH_KEY} initech remember_turns\n",
        encoding="utf-8",
    )
    live = start_server(
        workdir,
        "--api-keys",
        str(keys),
        "--store",
        f"sqlite:///{workdir / 'history.sqlite'}",
        "--default-max-tokens",
        str(MAX_TOKENS),
        "--max-tokens-limit",
        "400",
        "--max-body-bytes",
        "65536",
        "--max-items-per-request",
        "8",
        "--max-history-limit",
        "50",
    )
    for key, user, items in ((ACME_KEY, "alice", RUNNER), (GLOBEX_KEY, "alice", READER)):
        answer = httpx.post(
            f"{live.base_url}/users/{user}/items",
            json={"items": [{"text": text} for text in items]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert answer.status_code == 201, answer.text
    yield live
    live.stop()


def client(server: LiveServer, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def said(text: str) -> Any:
    """One user message (typed loosely: the SDK's TypedDicts add nothing to a test)."""
    return [{"role": "user", "content": text}]


def ask(server: LiveServer, key: str, user: str | None, **options: Any) -> Any:
    extra: dict[str, Any] = {"user": user} if user is not None else {}
    return client(server, key).chat.completions.create(
        model="curp", messages=said(QUESTION), **extra, **options
    )


@pytest.fixture(scope="module")
def alone(server: LiveServer) -> dict[tuple[str, str | None], str]:
    """Each user's greedy reply, asked alone (one request at a time)."""
    replies = {}
    for key, user in ((ACME_KEY, "alice"), (GLOBEX_KEY, "alice"), (ACME_KEY, None)):
        replies[key, user] = ask(server, key, user).choices[0].message.content
    return replies


def test_the_sdk_gets_a_reply_personalized_by_the_tenants_user_with_usage(
    server: LiveServer, alone: dict[tuple[str, str | None], str]
) -> None:
    reply = ask(server, ACME_KEY, "alice")
    assert reply.object == "chat.completion" and reply.model == "curp"
    assert reply.choices[0].message.content == alone[ACME_KEY, "alice"] != ""
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= MAX_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    curp = (reply.model_extra or {})["curp"]
    assert curp == {
        "personalized": True,
        "reason": None,
        "history_items": 4,
        "soft_tokens": 5,
        "mode": "assist",
    }
    unknown = ask(server, ACME_KEY, "nobody-here")
    assert (unknown.model_extra or {})["curp"]["personalized"] is False


def test_the_mode_extension_asks_for_a_text_written_as_the_user(server: LiveServer) -> None:
    reply = ask(server, ACME_KEY, "alice", extra_body={"mode": "write"})
    assert (reply.model_extra or {})["curp"]["mode"] == "write"


def test_the_same_user_id_in_two_tenants_is_personalized_by_each_tenants_history(
    server: LiveServer,
) -> None:
    first = {}
    for key, items in ((ACME_KEY, RUNNER), (GLOBEX_KEY, READER)):
        reply = ask(server, key, "alice", max_tokens=1, logprobs=True, top_logprobs=3)
        assert (reply.model_extra or {})["curp"]["history_items"] == len(items)
        first[key] = [
            (t.token, t.logprob) for t in reply.choices[0].logprobs.content[0].top_logprobs
        ]
    # Different histories, different soft tokens: the next-token distributions differ.
    assert first[ACME_KEY] != first[GLOBEX_KEY]


def test_a_streamed_reply_equals_the_whole_reply_and_ends_with_usage(
    server: LiveServer, alone: dict[tuple[str, str | None], str]
) -> None:
    chunks = list(
        ask(server, ACME_KEY, "alice", stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone[ACME_KEY, "alice"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= MAX_TOKENS


def test_concurrent_streams_each_equal_that_users_reply_alone(
    server: LiveServer, alone: dict[tuple[str, str | None], str]
) -> None:
    async def stream(key: str, user: str | None) -> str:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=key, max_retries=0, timeout=120
        ) as async_client:
            extra: dict[str, Any] = {"user": user} if user is not None else {}
            chunks = await async_client.chat.completions.create(
                model="curp",
                messages=said(QUESTION),
                stream=True,
                **extra,
            )
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(stream(key, user) for key, user in alone))

    replies = asyncio.run(all_at_once())
    assert dict(zip(alone, replies, strict=True)) == alone


def test_tenants_with_the_same_user_id_are_different_users_in_the_store_too(
    server: LiveServer, workdir: Path
) -> None:
    acme = {"Authorization": f"Bearer {ACME_KEY}"}
    globex = {"Authorization": f"Bearer {GLOBEX_KEY}"}
    url = f"{server.base_url}/users/carol/items"
    added = httpx.post(url, json={"items": [{"text": "Acme's Carol races bikes."}]}, headers=acme)
    assert added.status_code == 201 and added.json()["data"][0]["user"] == "carol"
    assert httpx.get(url, headers=globex).status_code == 404  # globex has no carol
    assert httpx.delete(f"{server.base_url}/users/carol", headers=globex).status_code == 404
    items = httpx.get(url, headers=acme).json()["data"]
    assert [item["text"] for item in items] == ["Acme's Carol races bikes."]
    # Globex's alice reads only globex's items, newest first, never acme's.
    texts = [
        i["text"]
        for i in httpx.get(f"{server.base_url}/users/alice/items", headers=globex).json()["data"]
    ]
    assert sorted(texts) == sorted(READER)
    with SQLHistoryStore(f"sqlite:///{workdir / 'history.sqlite'}") as store:
        stored = {user.user_id: user.n_items for user in store.list_users()}
    assert stored["acme:alice"] == len(RUNNER) and stored["globex:alice"] == len(READER)
    assert stored["acme:carol"] == 1 and "carol" not in stored and "alice" not in stored
    assert all(user_id.split(":")[0] in ("acme", "globex") for user_id in stored)
    deleted = httpx.delete(f"{server.base_url}/users/carol", headers=acme).json()
    assert deleted == {"id": "carol", "object": "user.deleted", "deleted": True, "items_deleted": 1}


def test_remember_turns_per_key_and_per_request_stores_the_users_message(
    server: LiveServer,
) -> None:
    def items(key: str, user: str) -> httpx.Response:
        return httpx.get(
            f"{server.base_url}/users/{user}/items", headers={"Authorization": f"Bearer {key}"}
        )

    ask(server, INITECH_KEY, "dave", max_tokens=2)  # initech's key remembers turns
    assert [(i["text"], i["kind"]) for i in items(INITECH_KEY, "dave").json()["data"]] == [
        (QUESTION, "chat")
    ]
    ask(server, ACME_KEY, "erin", max_tokens=2)  # acme's does not...
    assert items(ACME_KEY, "erin").status_code == 404
    ask(
        server, ACME_KEY, "erin", max_tokens=2, extra_body={"remember_turns": True}
    )  # ...unless asked
    assert [i["text"] for i in items(ACME_KEY, "erin").json()["data"]] == [QUESTION]


ADD_NUMBERS: Any = {
    "type": "function",
    "function": {
        "name": "add_numbers",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_tool_calls_through_the_sdk_and_langchain_match_the_tools_schema(
    server: LiveServer,
) -> None:
    reply = client(server).chat.completions.create(
        model="curp",
        messages=said("What is 17 plus 25?"),
        tools=[ADD_NUMBERS],
        tool_choice="required",
        max_tokens=32,
        user="alice",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "add_numbers"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
    llm = ChatOpenAI(base_url=server.base_url, api_key=ACME_KEY, model="curp", max_tokens=32)
    message = llm.bind_tools([add_numbers], tool_choice="add_numbers").invoke("What is 17 plus 25?")
    (langchain_call,) = message.tool_calls
    assert langchain_call["name"] == "add_numbers"
    assert set(langchain_call["args"]) == {"a", "b"}


class Plan(BaseModel):
    activity: str = Field(max_length=24)
    hours: int


def test_structured_output_through_the_sdk_and_langchain_parses_into_the_schema(
    server: LiveServer,
) -> None:
    parsed = (
        client(server)
        .chat.completions.parse(
            model="curp",
            messages=said(QUESTION),
            response_format=Plan,
            max_tokens=48,
            user="alice",
        )
        .choices[0]
        .message.parsed
    )
    assert isinstance(parsed, Plan)
    llm = ChatOpenAI(base_url=server.base_url, api_key=ACME_KEY, model="curp", max_tokens=48)
    assert isinstance(llm.with_structured_output(Plan).invoke(QUESTION), Plan)
    as_object = client(server).chat.completions.create(
        model="curp",
        messages=said(QUESTION),
        response_format={"type": "json_object"},
        max_tokens=48,
    )
    if as_object.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(as_object.choices[0].message.content or ""), dict)


def test_logprobs_come_in_openais_shape(server: LiveServer) -> None:
    reply = ask(server, ACME_KEY, "alice", logprobs=True, top_logprobs=2, max_tokens=4)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes) == entry.token.encode()
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest token


def test_langchain_chat_openai_invokes_and_streams_the_same_reply(
    server: LiveServer, alone: dict[tuple[str, str | None], str]
) -> None:
    llm = ChatOpenAI(
        base_url=server.base_url, api_key=ACME_KEY, model="curp", max_tokens=MAX_TOKENS
    )
    reply = llm.invoke(QUESTION, user="alice")
    assert reply.content == alone[ACME_KEY, "alice"]
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in llm.stream(QUESTION, user="alice"))
    assert streamed == alone[ACME_KEY, "alice"]


def test_requests_without_a_valid_key_get_401(server: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(server, "not-a-known-key-0123456789").models.list()
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        answer = httpx.post(f"{server.base_url}/users/alice/items", json={}, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "invalid_api_key"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200


def test_models_lists_the_served_model(server: LiveServer) -> None:
    assert [m.id for m in client(server).models.list()] == ["curp"]
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-4o", messages=said("hi"))


HI = [{"role": "user", "content": "hi"}]
BAD_CHAT_REQUESTS: list[tuple[Any, int, str | None]] = [
    (b'{"model": "curp", "messages": [', 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": HI}, 400, "model"),
    ({"model": "curp", "messages": HI, "temprature": 0.5}, 400, "temprature"),
    ({"model": "curp", "messages": HI, "temperature": -1}, 400, "temperature"),
    ({"model": "curp", "messages": HI, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "curp", "messages": HI, "max_tokens": 100_000}, 400, "max_tokens"),
    ({"model": "curp", "messages": HI, "n": 3}, 400, "n"),
    ({"model": "curp", "messages": HI, "user": " alice"}, 400, "user"),
    ({"model": "curp", "messages": HI, "user": "a" * 300}, 400, "user"),
    ({"model": "curp", "messages": HI, "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "curp", "messages": HI, "stop": ["a"] * 5}, 400, "stop"),
    ({"model": "curp", "messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    (
        {"model": "curp", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages[0].content",
    ),
    (
        {
            "model": "curp",
            "messages": HI,
            "tools": [ADD_NUMBERS],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
        400,
        "tool_choice",
    ),
    (
        {"model": "curp", "messages": HI, "response_format": {"type": "json_schema"}},
        400,
        "response_format",
    ),
    ({"model": "curp", "messages": HI, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"model": "gpt-4o", "messages": HI}, 404, "model"),
    (b"x" * 70_000, 413, None),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_CHAT_REQUESTS)
def test_every_bad_chat_request_gets_a_4xx_in_openais_error_shape(
    server: LiveServer, body: Any, status: int, param: str | None
) -> None:
    headers = {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(f"{server.base_url}/chat/completions", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


BAD_HISTORY_REQUESTS: list[tuple[str, str, Any, int, str | None]] = [
    ("POST", "alice", {"items": []}, 400, "items"),
    ("POST", "alice", {"items": [{"text": "ok"}, {"text": "  "}]}, 400, "items[1].text"),
    ("POST", "alice", {"items": [{"text": "x" * 20_001}]}, 400, "items[0].text"),
    ("POST", "alice", {"items": [{"text": "ok", "kind": ""}]}, 400, "items[0].kind"),
    (
        "POST",
        "alice",
        {"items": [{"text": "ok", "created_at": "3000-01-01T00:00:00Z"}]},
        400,
        "items[0].created_at",
    ),
    (
        "POST",
        "alice",
        {"items": [{"text": "ok", "created_at": "yesterday"}]},
        400,
        "items[0].created_at",
    ),
    ("POST", "alice", {"items": [{"text": "ok", "metadata": [1]}]}, 400, "items[0].metadata"),
    ("POST", "alice", {"items": [{"text": str(i)} for i in range(9)]}, 400, "items"),
    ("POST", "alice", {"items": [{"txt": "ok"}]}, 400, "items[0].text"),
    ("POST", "%20alice", {"items": [{"text": "ok"}]}, 400, "user_id"),
    ("GET", "alice/items?limit=0", None, 400, "limit"),
    ("GET", "alice/items?limit=51", None, 400, "limit"),
    ("GET", "nobody/items", None, 404, "user_id"),
    ("DELETE", "nobody", None, 404, "user_id"),
    ("PUT", "alice/items", None, 405, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), BAD_HISTORY_REQUESTS)
def test_every_bad_history_request_gets_a_4xx_in_openais_error_shape(
    server: LiveServer, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    url = f"{server.base_url}/users/{path}"
    if method == "POST":
        url += "/items"
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    answer = httpx.request(method, url, json=body, headers=headers, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_a_client_that_disconnects_stops_its_generation(server: LiveServer) -> None:
    body: dict[str, Any] = {"model": "curp", "messages": said("Tell a long story.")}
    body |= {"max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST", f"{server.base_url}/chat/completions", json=body, headers=headers
        ) as answer,
    ):
        lines = answer.iter_lines()
        events = 0
        while events < 3:
            events += next(lines).startswith("data:")
        assert server.gauge("curp_generations_active") == 1
    # Leaving the block closed the connection. 400 tokens take over 10 s here; the
    # generation stops within a token or two.
    deadline = time.monotonic() + 5
    while server.gauge("curp_generations_active") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.gauge("curp_generations_active") == 0
    assert server.gauge("curp_chat_requests_in_flight") == 0


def test_a_request_past_its_timeout_gets_504(server: LiveServer) -> None:
    body = {"model": "curp", "messages": HI, "max_tokens": 400, "timeout": 0.001}
    answer = httpx.post(
        f"{server.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=60,
    )
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["type"] == "timeout_error"


def test_metrics_count_requests_tokens_and_first_tokens(server: LiveServer) -> None:
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        'curp_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
        in metrics
    )
    assert 'curp_tokens_total{kind="completion"}' in metrics
    assert "curp_time_to_first_token_seconds_count" in metrics
    assert "curp_generation_queue_depth" in metrics
    assert "acme" not in metrics and "alice" not in metrics  # no tenant or user in labels
    assert httpx.get(server.url + "/readyz").json()["store"] == "reachable"
