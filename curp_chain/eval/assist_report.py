"""`curp eval assist`'s own report: the personalization scores of every method's replies, the
teacher's beside them, a table, paired differences, the JSON fields and a plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import Any

from curp_chain.eval.assist import METRICS, AssistScorer, ReplyScores, paired, summary
from curp_chain.eval.harness import Record
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.assist import AnswerScores, AssistFilters, load_requests
from curp_chain.tasks.assist_task import read_answers
from curp_chain.tasks.base import TaskExample

TEACHER = "teacher"
"""The row of the teacher model's own answers (it reads the history as text)."""

LABELS = {
    "top1": "top-1 enc",
    "top1_lexical": "top-1 lex",
    "gain": "sim. gain",
    "copy": "copies",
    "on_request": "on request",
    "refusal": "refusals",
}


def teacher_replies(
    answers: str | Path, examples: Sequence[TaskExample], filters: AssistFilters
) -> tuple[list[str], list[TaskExample], list[bool], float]:
    """The teacher's answers to every evaluation pair of the evaluated users (kept or not:
    the kept ones alone would flatter it), the pairs as examples, whether the teacher's own
    copy check flagged each (copies are stored blank), and its mean prompt tokens."""
    by_user = {e.user_id: e for e in examples}
    requests = {r.id: r for r in load_requests("all")}
    replies, pairs, copied, tokens = [], [], [], []
    for record in read_answers(answers):
        example = by_user.get(record.get("user_id", ""))
        request = requests.get(record.get("request_id", ""))
        if record.get("split") != "eval" or example is None or request is None:
            continue
        turns = (*example.messages[:-1], ChatTurn("user", request.text))
        pairs.append(replace(example, id=f"{example.user_id}#{request.id}", messages=turns))
        replies.append(record.get("answer", ""))
        stored = AnswerScores.model_validate(record["scores"])
        copied.append(
            stored.copy_run > filters.max_copy_run or stored.copy_ratio > filters.max_copy_ratio
        )
        tokens.append(float(record["tokens"]["input"]))
    return replies, pairs, copied, fmean(tokens) if tokens else 0.0


def score_methods(
    records: Mapping[str, Sequence[Record]],
    examples: Sequence[TaskExample],
    answers: str | Path | None,
    encoder: SentenceEncoder,
) -> tuple[dict[str, list[ReplyScores]], dict[str, float], float]:
    """Per method (and the teacher, when its answers are found): the scores of each reply;
    the methods' mean prompt tokens; chance top-1."""
    filters = AssistFilters()
    scorer = AssistScorer(examples, encoder, filters)
    scores = {m: scorer.score([r.output for r in rows], examples) for m, rows in records.items()}
    tokens = {m: fmean(float(r.prompt_tokens) for r in rows) for m, rows in records.items()}
    if answers is not None:
        replies, pairs, copied, teacher_tokens = teacher_replies(answers, examples, filters)
        if replies:
            rows = scorer.score(replies, pairs)
            flagged = zip(rows, copied, strict=True)
            scores[TEACHER] = [replace(s, copy=max(s.copy, float(flag))) for s, flag in flagged]
            tokens[TEACHER] = teacher_tokens
    return scores, tokens, scorer.chance


def table(
    scores: Mapping[str, Sequence[ReplyScores]], tokens: Mapping[str, float], chance: float
) -> str:
    """Markdown: each method's scores with 95% half-widths and its prompt tokens."""
    header = "| method | n | prompt tokens | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for method, rows in scores.items():
        s = summary(rows)
        cells = [method, str(s["n"]), f"{tokens[method]:.0f}"]
        cells += [f"{s[m]:.3f} ± {s[m + '_ci']:.3f}" for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nChance top-1: {chance:.3f} ({round(1 / chance)} users).")
    return "\n".join(lines)


def paired_scores(scores: Mapping[str, Sequence[ReplyScores]], reference: str = "curp") -> str:
    """Markdown: ``reference`` minus every other method on the same pairs, for the two top-1
    measures and the gain (the teacher answered other pairs too, so it is left out)."""
    if reference not in scores:
        return ""
    metrics = ("top1", "top1_lexical", "gain")
    lines = [
        f"| {reference} minus | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for method, rows in scores.items():
        if method in (reference, TEACHER):
            continue
        cells = [method]
        for metric in metrics:
            mean, width = paired(scores[reference], rows, metric)
            cells.append(f"{mean:+.3f} ± {width:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def results(
    scores: Mapping[str, Sequence[ReplyScores]], tokens: Mapping[str, float], chance: float
) -> dict[str, Any]:
    """The JSON fields: per method, every metric's mean and half-width, n, prompt tokens."""
    out: dict[str, Any] = {"chance_top1": chance}
    for method, rows in scores.items():
        out[method] = {**summary(rows), "prompt_tokens": tokens[method]}
    return out


def plot(
    scores: Mapping[str, Sequence[ReplyScores]],
    tokens: Mapping[str, float],
    chance: float,
    path: str | Path,
) -> Path:
    """Top-1 identifiability (encoder: circles, lexical: squares, with 95% intervals) against
    prompt tokens, one colour per method; chance as a dashed line."""
    from curp_chain.eval.report import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (method, rows) in enumerate(scores.items()):
        s = summary(rows)
        for metric, marker, shift in (("top1", "o", 0.98), ("top1_lexical", "s", 1.02)):
            axes.errorbar(
                tokens[method] * shift,  # side by side, not on top of each other
                s[metric],
                yerr=s[metric + "_ci"],
                fmt=marker,
                color=f"C{index}",
                capsize=3,
                label=method if metric == "top1" else None,
            )
    axes.axhline(chance, linestyle="--", color="grey", label="chance")
    axes.set_xscale("symlog", linthresh=10)
    axes.set_xlabel("prompt tokens per request")
    axes.set_ylabel("reply identifies its user (top-1; o encoder, □ lexical)")
    axes.set_title("Everyday answers: whose are they? (held-out users and requests)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
