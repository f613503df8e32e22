"""CurpChatModel end to end: real SQLite, the bundled encoder and checkpoint, llama.cpp (and
transformers for structured output)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from pydantic import BaseModel
from typing_extensions import TypedDict

from curp_chain import CurpChatModel
from curp_chain.errors import (
    ContextLengthError,
    CurpError,
    IncompatibleCheckpointError,
    InvalidHistoryItemError,
    InvalidUserIdError,
)
from curp_chain.model.checkpoint import LAMP7_CHECKPOINT, save_checkpoint
from curp_chain.model.config import CurpConfig
from curp_chain.training.initialize import initial_model

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
    "Board game night: won Catan twice.",
]
QUESTION = "Suggest a plan for my Saturday."


@pytest.fixture
def model(llama_backend, memory_store) -> CurpChatModel:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=24)
    model.add_history("runner", RUNNER)
    model.add_history("reader", READER)
    return model


def test_two_users_get_different_soft_prompts(model: CurpChatModel) -> None:
    personalizer = model.get_personalizer()
    runner = personalizer.personalize("runner", QUESTION)
    reader = personalizer.personalize("reader", QUESTION)
    assert runner.soft is not None and reader.soft is not None
    assert runner.soft.shape == reader.soft.shape == (5, 576)
    assert abs(runner.soft - reader.soft).max() > 0
    curp = model.invoke(QUESTION, user_id="runner").response_metadata["curp"]
    assert curp["personalized"] is True and curp["history_items"] == 4
    assert curp["soft_tokens"] == 5
    assert curp["prototypes"] and all(0 <= p["prototype"] < 64 for p in curp["prototypes"])


def test_different_soft_prompts_reach_the_llm(llama_backend, memory_store, tmp_path) -> None:
    # A fresh initialisation starts with the history offset at zero (every user gets the
    # base prompt); randomising the offset's last layer makes soft tokens that differ
    # between users, so the runtime path is checked with such a model: each user's own soft
    # tokens must shape the model's next-token distribution. (Greedy replies can still
    # agree: a small model's likeliest words are often the same for both.)
    user_model = initial_model(CurpConfig(), seed=3)
    offset_layer = user_model.projector.mlp[2]
    assert isinstance(offset_layer, torch.nn.Linear)
    torch.nn.init.normal_(offset_layer.weight, std=0.05, generator=torch.Generator().manual_seed(3))
    save_checkpoint(user_model, tmp_path / "init")
    model = CurpChatModel(
        backend=llama_backend,
        history_store=memory_store,
        checkpoint=str(tmp_path / "init"),
        max_tokens=24,
    )
    model.add_history("runner", RUNNER)
    model.add_history("reader", READER)
    first = {
        user: model.invoke(
            QUESTION, user_id=user, max_tokens=1, logprobs=True, top_logprobs=5
        ).response_metadata["logprobs"]["content"][0]
        for user in ("runner", "reader")
    }
    runner = {t["token"]: t["logprob"] for t in first["runner"]["top_logprobs"]}
    reader = {t["token"]: t["logprob"] for t in first["reader"]["top_logprobs"]}
    shared = runner.keys() & reader.keys()
    assert runner.keys() != reader.keys() or max(abs(runner[t] - reader[t]) for t in shared) > 0.01


def test_logprobs_cover_the_reply_in_invoke_and_stream(model: CurpChatModel) -> None:
    bound = model.bind(user_id="runner", logprobs=True, top_logprobs=2)
    invoked = bound.invoke(QUESTION)
    entries = invoked.response_metadata["logprobs"]["content"]
    assert invoked.usage_metadata is not None
    assert len(entries) == invoked.usage_metadata["output_tokens"]
    assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 2 for e in entries)
    streamed: AIMessageChunk | None = None
    for chunk in bound.stream(QUESTION):
        # A bound model's stream is typed as whole messages; what it yields are chunks.
        assert isinstance(chunk, AIMessageChunk)
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert streamed.response_metadata["logprobs"]["content"] == entries
    assert "logprobs" not in model.invoke(QUESTION, user_id="runner").response_metadata


def test_a_user_sees_only_their_own_history(model: CurpChatModel) -> None:
    soft_before = model.get_personalizer().personalize("runner", QUESTION).soft
    model.add_history("reader", ["Knitting a scarf for my niece."])
    soft_after = model.get_personalizer().personalize("runner", QUESTION).soft
    assert soft_before is not None and soft_after is not None
    assert (soft_before == soft_after).all()
    assert [i.text for i in model.history("runner")] == RUNNER[::-1]  # newest first


def test_unknown_user_and_no_user_get_a_flagged_plain_reply(model: CurpChatModel) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"user_id": "nobody"}, "no history"),
        ({}, "no user_id"),
    ]
    for kwargs, reason in cases:
        result = model.invoke(QUESTION, **kwargs)
        curp = result.response_metadata["curp"]
        assert curp["personalized"] is False and reason in curp["reason"]
        assert curp["soft_tokens"] == 0
        assert result.content


def test_usage_metadata_and_model_name(model: CurpChatModel) -> None:
    result = model.invoke([SystemMessage("Be brief."), HumanMessage(QUESTION)], user_id="runner")
    usage = result.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 5 and 0 < usage["output_tokens"] <= 24
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert result.response_metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert result.response_metadata["finish_reason"] in ("stop", "length")


def test_stream_matches_invoke_and_bind_chooses_the_user(model: CurpChatModel) -> None:
    bound = model.bind(user_id="reader")
    invoked = bound.invoke(QUESTION)
    chunks = list(bound.stream(QUESTION))
    assert len(chunks) > 1
    assert "".join(str(c.content) for c in chunks) == invoked.content
    assert chunks[-1].response_metadata["curp"]["user_id"] == "reader"


def test_batch_keeps_each_users_reply_apart(model: CurpChatModel) -> None:
    singles = [model.invoke(QUESTION, user_id=u).content for u in ("runner", "reader")]
    batched = model.batch([QUESTION, QUESTION], user_id="runner")
    assert [m.content for m in batched] == [singles[0], singles[0]]


async def test_async_invoke_and_stream(model: CurpChatModel) -> None:
    result = await model.ainvoke(QUESTION, user_id="runner")
    pieces = [str(c.content) async for c in model.astream(QUESTION, user_id="runner")]
    assert "".join(pieces) == result.content
    assert result.response_metadata["curp"]["personalized"] is True


def test_stop_and_max_tokens_per_call(model: CurpChatModel) -> None:
    full = model.invoke(QUESTION, user_id="runner", max_tokens=30).content
    assert isinstance(full, str) and len(full.split()) > 3
    word = full.split()[2]
    cut = model.invoke(QUESTION, user_id="runner", max_tokens=30, stop=[word])
    assert word not in cut.content and full.startswith(str(cut.content))
    short = model.invoke(QUESTION, user_id="runner", max_tokens=3)
    assert short.usage_metadata is not None and short.usage_metadata["output_tokens"] <= 3


def test_bad_history_is_rejected_and_nothing_is_lost(model: CurpChatModel) -> None:
    before = [i.text for i in model.history("runner")]
    for bad in (["ok", "   "], [""], ["fine", "x" * 1_000_000]):
        with pytest.raises(InvalidHistoryItemError):
            model.add_history("runner", bad)
    with pytest.raises(InvalidHistoryItemError, match="20,000"):
        model.add_history("runner", ["y" * 1_000_000])
    assert [i.text for i in model.history("runner")] == before
    stored = model.add_history("runner", ["z" * 1_000_000], truncate=True)
    assert len(stored[0].text) == 20_000
    with pytest.raises(InvalidUserIdError):
        model.add_history("  ", ["hello"])


def test_a_prompt_longer_than_the_context_gets_a_clear_error(model: CurpChatModel) -> None:
    with pytest.raises(ContextLengthError, match="context window is 2048"):
        model.invoke("word " * 3000, user_id="runner")
    assert model.invoke(QUESTION, user_id="runner").content  # still serving


def test_a_checkpoint_for_another_llm_is_refused(llama_backend, memory_store, tmp_path) -> None:
    config = CurpConfig(llm_id="Qwen/Qwen2.5-0.5B-Instruct", llm_hidden_size=896)
    save_checkpoint(initial_model(config), tmp_path / "qwen")
    model = CurpChatModel(
        backend=llama_backend, history_store=memory_store, checkpoint=str(tmp_path / "qwen")
    )
    with pytest.raises(IncompatibleCheckpointError, match="896"):
        model.invoke("hi", user_id="runner")


def test_the_bundled_lamp7_checkpoint_serves_the_same_stored_history(
    model: CurpChatModel,
    llama_backend,
    memory_store,
) -> None:
    lamp7 = CurpChatModel(
        backend=llama_backend, history_store=memory_store, checkpoint=str(LAMP7_CHECKPOINT)
    )
    reply = lamp7.invoke(QUESTION, user_id="runner", max_tokens=4)
    assert reply.response_metadata["curp"]["personalized"] is True
    default_soft = model.get_personalizer().personalize("runner", QUESTION).soft
    lamp7_soft = lamp7.get_personalizer().personalize("runner", QUESTION).soft
    assert default_soft is not None and lamp7_soft is not None
    assert lamp7_soft.shape == default_soft.shape
    assert not torch.allclose(torch.as_tensor(lamp7_soft), torch.as_tensor(default_soft))


def test_conversation_history_in_messages_reaches_the_prompt(model: CurpChatModel) -> None:
    messages = [
        HumanMessage("My name is Ada."),
        AIMessage("Nice to meet you, Ada!"),
        HumanMessage("What is my name?"),
    ]
    result = model.invoke(messages, user_id="runner", max_tokens=16)
    assert result.usage_metadata is not None
    single = model.invoke("What is my name?", user_id="runner", max_tokens=16)
    assert single.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] > single.usage_metadata["input_tokens"]


def test_items_added_through_the_store_are_encoded_on_first_use(model: CurpChatModel) -> None:
    from curp_chain.interfaces.history import NewHistoryItem

    model.store.add_items("carol", [NewHistoryItem("Gardening all weekend, tomatoes first.")])
    personalizer = model.get_personalizer()
    assert personalizer.store.get_codes("carol", personalizer.codebook_version).stale
    result = model.invoke(QUESTION, user_id="carol", max_tokens=4)
    assert result.response_metadata["curp"]["personalized"] is True
    cached = personalizer.store.get_codes("carol", personalizer.codebook_version)
    assert not cached.stale and len(cached.encoded) == 1


def test_concurrent_requests_on_an_in_memory_store(model: CurpChatModel) -> None:
    from concurrent.futures import ThreadPoolExecutor

    users = ["runner", "reader"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(lambda u: model.get_personalizer().personalize(u, QUESTION), users))
    assert [p.history_items for p in found] == [4] * len(users)


@pytest.fixture(params=["llamacpp", "hf"])
def local_model(request: pytest.FixtureRequest, memory_store) -> CurpChatModel:
    """The model on each local backend: llama.cpp's grammars, then llguidance on transformers."""
    name = "llama_backend" if request.param == "llamacpp" else "hf_backend"
    backend = request.getfixturevalue(name)
    model = CurpChatModel(backend=backend, history_store=memory_store, max_tokens=24)
    model.add_history("runner", RUNNER)
    model.add_history("reader", READER)
    return model


class Plan(BaseModel):
    activity: str
    hours: int


class PlanDict(TypedDict):
    activity: str
    hours: int


def test_structured_output_fills_a_pydantic_class_for_the_user(
    local_model: CurpChatModel,
) -> None:
    model = local_model
    structured = model.with_structured_output(Plan, include_raw=True)
    result = structured.invoke(QUESTION, user_id="runner", max_tokens=64)
    assert result["parsing_error"] is None and isinstance(result["parsed"], Plan)
    curp = result["raw"].response_metadata["curp"]
    assert curp["personalized"] is True and curp["soft_tokens"] == 5
    bound = model.with_structured_output(Plan).bind(user_id="reader", max_tokens=64)
    assert isinstance(bound.invoke(QUESTION), Plan)
    streamed = list(bound.stream(QUESTION))
    assert streamed and isinstance(streamed[-1], Plan)


def test_structured_output_takes_typed_dicts_json_schemas_and_json_mode(
    local_model: CurpChatModel,
) -> None:
    model = local_model
    for schema in (PlanDict, Plan.model_json_schema()):
        parsed = model.with_structured_output(schema).invoke(
            QUESTION, user_id="runner", max_tokens=64
        )
        assert set(parsed) == {"activity", "hours"} and isinstance(parsed["hours"], int)
    anything = model.with_structured_output(method="json_mode").invoke(
        QUESTION, user_id="runner", max_tokens=64
    )
    assert isinstance(anything, dict)


def test_a_structured_reply_cut_short_is_a_parsing_error(local_model: CurpChatModel) -> None:
    structured = local_model.with_structured_output(Plan, include_raw=True)
    result = structured.invoke(QUESTION, user_id="runner", max_tokens=3)
    assert result["parsed"] is None and result["parsing_error"] is not None
    assert result["raw"].response_metadata["finish_reason"] == "length"


def test_structured_output_refuses_what_it_cannot_do(local_model: CurpChatModel) -> None:
    model = local_model
    with pytest.raises(CurpError, match="unknown structured-output method"):
        model.with_structured_output(Plan, method="xml")  # type: ignore[arg-type]  # on purpose
    with pytest.raises(CurpError, match="needs a schema"):
        model.with_structured_output(None)
    with pytest.raises(CurpError, match="cannot be turned into a grammar"):
        model.invoke(QUESTION, user_id="runner", json_schema={"type": "nonsense"})
