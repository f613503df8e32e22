"""The HTTP server's parts that need no model: settings, keys and tenants, request shapes,
errors in OpenAI's shape and the command line's refusals. The live server is tested in
tests/integration/test_server_*.py."""

from __future__ import annotations

import argparse
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from curp_chain.cli import serve as serve_command
from curp_chain.errors import (
    ContextLengthError,
    CurpError,
    InvalidHistoryItemError,
    InvalidUserIdError,
    QueueFullError,
    RequestTimeoutError,
    StoreError,
)
from curp_chain.interfaces.history import MAX_USER_ID_CHARS
from curp_chain.server.errors import from_curp_error, param_path
from curp_chain.server.messages import max_tokens_of, to_langchain
from curp_chain.server.schemas import ChatCompletionRequest
from curp_chain.server.settings import (
    ServerSettings,
    check_exposure,
    is_loopback,
    settings_from,
)
from curp_chain.server.tenants import LOCAL_TENANT, KeyRing, Tenant

ACME_KEY = "acme-0123456789abcdef"
GLOBEX_KEY = "globex-0123456789abcdef"


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(text, encoding="utf-8")
    return path


# --- settings -------------------------------------------------------------------------------


def test_settings_come_from_the_environment_and_the_command_line_wins() -> None:
    environ = {"CURP_SERVE_PORT": "9001", "CURP_SERVE_MAX_QUEUED": "3", "PATH": "/bin"}
    settings = settings_from(environ, {"port": 9002})
    assert settings.port == 9002
    assert settings.max_queued == 3
    assert settings.host == "127.0.0.1"


def test_a_bad_environment_value_names_its_variable() -> None:
    with pytest.raises(CurpError, match="^CURP_SERVE_PORT: "):
        settings_from({"CURP_SERVE_PORT": "eighty"})
    with pytest.raises(CurpError, match="^--slots: "):
        settings_from({}, {"slots": 0})


def test_an_unknown_server_variable_is_refused_with_the_known_ones() -> None:
    with pytest.raises(CurpError, match="unknown setting CURP_SERVE_PROT.*CURP_SERVE_PORT"):
        settings_from({"CURP_SERVE_PROT": "8000"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_keys_the_server_refuses_a_public_address() -> None:
    with pytest.raises(CurpError, match="--api-keys"):
        check_exposure(ServerSettings(host="0.0.0.0"))
    check_exposure(ServerSettings(host="0.0.0.0", api_keys="keys.txt"))
    check_exposure(ServerSettings(host="127.0.0.1"))


def test_curp_serve_refuses_a_public_address_without_keys_before_loading_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.perf_counter()
    assert serve_command.main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert time.perf_counter() - started < 5  # refused before the model would load
    assert "--api-keys" in capsys.readouterr().err


def test_curp_serve_registers_every_setting_as_an_option() -> None:
    parser = argparse.ArgumentParser(prog="curp")
    serve_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "9100", "--api-keys", "k.txt", "--slots", "2"])
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    assert given == {"port": 9100, "api_keys": "k.txt", "slots": 2}  # the rest from the env
    assert args.func is serve_command.cmd_serve


# --- keys and tenants -----------------------------------------------------------------------


def test_a_keys_file_maps_each_key_to_its_tenant(tmp_path: Path) -> None:
    path = keys_file(
        tmp_path,
        f"# comment\n\n{ACME_KEY} acme\n{GLOBEX_KEY}   globex remember_turns  # trailing\n",
    )
    keys = KeyRing.from_file(path)
    assert keys.tenants == ["acme", "globex"]
    assert keys.tenant_for(ACME_KEY) == Tenant("acme")
    assert keys.tenant_for(GLOBEX_KEY) == Tenant("globex", remember_turns=True)
    assert keys.tenant_for("acme-0123456789abcdeX") is None
    assert keys.tenant_for("") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"{ACME_KEY}", "expected 'KEY TENANT"),
        ("short acme", "shorter than 16"),
        (f"{ACME_KEY} Acme", "tenant 'Acme' must be lowercase"),
        (f"{ACME_KEY} ac:me", "tenant 'ac:me'"),
        (f"{ACME_KEY} acme remember", "unknown option 'remember'"),
        (f"{ACME_KEY} acme\n{ACME_KEY} globex", "already on an earlier line"),
    ],
)
def test_a_bad_keys_file_names_the_line_and_never_the_key(
    tmp_path: Path, line: str, message: str
) -> None:
    with pytest.raises(CurpError, match=message) as info:
        KeyRing.from_file(keys_file(tmp_path, line + "\n"))
    assert ACME_KEY not in str(info.value)
    assert "keys.txt:" in str(info.value)


def test_an_empty_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CurpError, match="holds no keys"):
        KeyRing.from_file(keys_file(tmp_path, "# nothing yet\n"))


def test_a_tenants_users_are_prefixed_and_the_local_tenants_are_not() -> None:
    assert Tenant("acme").store_id("alice") == "acme:alice"
    assert Tenant("globex").store_id("alice") == "globex:alice"
    assert LOCAL_TENANT.store_id("alice") == "alice"
    # A user id that looks prefixed stays inside its own tenant.
    assert Tenant("acme").store_id("globex:alice") == "acme:globex:alice"


def test_a_user_id_must_fit_beside_the_tenant_prefix() -> None:
    fits = "u" * (MAX_USER_ID_CHARS - len("acme:"))
    assert len(Tenant("acme").store_id(fits)) == MAX_USER_ID_CHARS
    with pytest.raises(InvalidUserIdError, match=f"limit for this API key's tenant is {len(fits)}"):
        Tenant("acme").store_id(fits + "u")
    with pytest.raises(InvalidUserIdError):
        Tenant("acme").store_id(" alice")


@given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,8}", fullmatch=True), st.text(min_size=1))
def test_two_tenants_never_share_a_stored_user_id(tenant: str, user: str) -> None:
    try:
        mine = Tenant(tenant).store_id(user)
    except InvalidUserIdError:
        return
    other = tenant + "x"
    assert mine != Tenant(other).store_id(user)
    assert mine == f"{tenant}:{unicodedata.normalize('NFC', user)}"


# --- request shapes -------------------------------------------------------------------------


def request(**fields: object) -> ChatCompletionRequest:
    body = {"model": "curp", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_logprobs": 3}, None),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "4"}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages"),
        ({"functions": []}, "functions"),
    ],
)
def test_settings_this_server_cannot_honour_are_refused(
    fields: dict[str, object], where: str | None
) -> None:
    with pytest.raises(ValidationError) as info:
        request(**fields)
    if where is not None:
        assert info.value.errors()[0]["loc"][0] == where


def test_neutral_values_of_unsupported_settings_are_accepted() -> None:
    body = request(n=1, presence_penalty=0, frequency_penalty=0.0, logit_bias={}, store=False)
    assert body.n == 1


def test_max_completion_tokens_wins_and_the_limit_is_enforced() -> None:
    assert max_tokens_of(request(max_tokens=10, max_completion_tokens=20), 64, 100) == 20
    assert max_tokens_of(request(), 64, 100) == 64
    assert max_tokens_of(request(), 256, 100) == 100
    with pytest.raises(Exception, match="at most 100") as info:
        max_tokens_of(request(max_tokens=101), 64, 100)
    assert getattr(info.value, "param", None) == "max_tokens"


def test_openai_messages_become_langchain_messages_with_their_tool_calls() -> None:
    body = request(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "17 "}, {"type": "text", "text": "+ 25?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 17, "b": 25}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
    )
    system, user, assistant, tool = to_langchain(body.messages)
    assert (system.type, system.content) == ("system", "Be brief.")
    assert user.content == "17 + 25?"
    assert assistant.tool_calls == [  # type: ignore[attr-defined]
        {"name": "add", "args": {"a": 17, "b": 25}, "id": "call_1", "type": "tool_call"}
    ]
    assert (tool.type, tool.tool_call_id) == ("tool", "call_1")  # type: ignore[attr-defined]


def test_tool_call_arguments_that_are_not_an_object_name_their_place() -> None:
    body = request(
        messages=[
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            }
        ]
    )
    with pytest.raises(Exception) as info:
        to_langchain(body.messages)
    assert getattr(info.value, "param", None) == "messages[0].tool_calls[0].function.arguments"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "messages", 0, "content"), "messages[0].content"),
        (("body", "temperature"), "temperature"),
        (("query", "limit"), "limit"),
        (("body",), None),
        (("body", "messages", 2, "function-after[_fields_of_role()]"), "messages[2]"),
        (("body", "messages", 0, "content", "str"), "messages[0].content"),
        (("body", "messages", 0, "content", "list[dict[str,any]]", 1), "messages[0].content[1]"),
        (("body", "tool_choice", "NamedToolChoice", "function"), "tool_choice.function"),
    ],
)
def test_validation_locations_become_openai_params(loc: tuple[int | str, ...], param: str) -> None:
    assert param_path(loc) == param


@pytest.mark.parametrize(
    ("error", "status", "param"),
    [
        (InvalidHistoryItemError("item 2 is empty", index=2, rule="text"), 400, "items[2].text"),
        (InvalidHistoryItemError("no items", rule="batch"), 400, "items"),
        (InvalidUserIdError("bad"), 400, "user"),
        (ContextLengthError("too long"), 400, "messages"),
        (QueueFullError("full"), 429, None),
        (RequestTimeoutError("slow"), 504, None),
        (StoreError("get_codes failed on postgresql://app@db/prod: gone"), 503, None),
        (CurpError("unsupported content"), 400, "user"),
    ],
)
def test_project_errors_get_their_http_status(error: CurpError, status: int, param: str) -> None:
    answer = from_curp_error(error, param="user", retry_after=2)
    body = answer.body()["error"]
    assert answer.status == status
    assert body["param"] == param
    assert set(body) == {"message", "type", "param", "code"}
    if status in (429, 503):
        assert answer.headers["Retry-After"] == "2"
    assert "postgresql://" not in body["message"]  # internals stay in the log
