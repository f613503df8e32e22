"""Summaries of an evaluation: results.json, a markdown table and a quality/cost plot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from curp_chain.errors import MissingDependencyError
from curp_chain.eval.harness import Record
from curp_chain.eval.metrics import EVAL_INSTALL

Summary = dict[str, Any]
"""{"rouge1", "rougeL", "gold_nll", "prompt_tokens", "ttft_ms", "tokens_per_s", "n"}."""


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _half_width(values: Sequence[float]) -> float:
    """Half-width of a normal 95% confidence interval of the mean."""
    return 1.96 * stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def summarize(records: Sequence[Record]) -> Summary:
    """One method's results, in the shape of results.json.

    Means over users. ``gold_nll`` is None when no reply was scored (copy, or the run
    skipped it); cost fields are 0 for copy, which runs no model.
    """
    return {
        "rouge1": _mean([r.rouge1 for r in records]) or 0.0,
        "rougeL": _mean([r.rougeL for r in records]) or 0.0,
        "gold_nll": _mean([r.gold_nll for r in records]),
        "prompt_tokens": _mean([float(r.prompt_tokens) for r in records]) or 0.0,
        "ttft_ms": _mean([r.ttft_ms for r in records]) or 0.0,
        "tokens_per_s": _mean([r.tokens_per_s for r in records]) or 0.0,
        "n": len(records),
    }


def results_json(records: Mapping[str, Sequence[Record]]) -> dict[str, Summary]:
    return {method: summarize(rows) for method, rows in records.items()}


def write_results(records: Mapping[str, Sequence[Record]], path: str | Path) -> Path:
    return write_json(results_json(records), path)


def write_json(results: Mapping[str, Any], path: str | Path) -> Path:
    out = Path(path)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(records: Mapping[str, Sequence[Record]]) -> str:
    """Quality and cost per method; ± is the 95% confidence half-width over users."""
    header = (
        "| method | n | ROUGE-1 | ROUGE-L | gold NLL | prompt tokens | user tokens "
        "| TTFT ms | tokens/s | exact copies | peak RSS MiB |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for method, rows in records.items():
        s = summarize(rows)
        model_free = all(r.prompt_tokens == 0 for r in rows)
        r1 = [r.rouge1 for r in rows]
        rl = [r.rougeL for r in rows]
        cells = [
            method,
            str(s["n"]),
            f"{s['rouge1']:.3f} ± {_half_width(r1):.3f}",
            f"{s['rougeL']:.3f} ± {_half_width(rl):.3f}",
            _number(s["gold_nll"], 3),
            "–" if model_free else f"{s['prompt_tokens']:.1f}",
            "–" if model_free else f"{_mean([float(r.user_tokens) for r in rows]) or 0.0:.1f}",
            "–" if model_free else f"{s['ttft_ms']:.0f}",
            "–" if model_free else f"{s['tokens_per_s']:.1f}",
            f"{sum(r.exact_copy for r in rows)}/{len(rows)}",
            "–" if model_free else f"{max(r.peak_rss_mb for r in rows):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(records: Mapping[str, Sequence[Record]], reference: str = "curp") -> str:
    """``reference`` against every other method on the users both ran: the mean per-user
    difference (reference minus other) ± its 95% half-width. Pairing removes what users
    share, so it separates methods that the per-method ± ranges cannot. Positive ROUGE and
    negative gold NLL favour the reference. Empty when the reference did not run."""
    if reference not in records:
        return ""
    # One user may have several examples (aeslc, assist): pair by user and example.
    ours = {(r.user, r.example): r for r in records[reference]}
    lines = [
        f"| {reference} minus | examples | ROUGE-1 | ROUGE-L | gold NLL |",
        "|---|---|---|---|---|",
    ]
    for method, rows in records.items():
        pairs = [(ours[r.user, r.example], r) for r in rows if (r.user, r.example) in ours]
        if method == reference or not pairs:
            continue
        cells = [method, str(len(pairs))]
        for field in ("rouge1", "rougeL", "gold_nll"):
            values = [(getattr(a, field), getattr(b, field)) for a, b in pairs]
            diffs = [a - b for a, b in values if a is not None and b is not None]
            cells.append(f"{fmean(diffs):+.4f} ± {_half_width(diffs):.4f}" if diffs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _sideways_offsets(summaries: Mapping[str, Mapping[str, Any]], step: float) -> dict[str, float]:
    """Offsets along the prompt-token axis for methods of about one prompt size (curp, task
    and the curp ablations, within half a ``step`` of each other), spread ``step`` apart
    around the group's centre so that no point hides another."""
    sized = sorted(
        (float(summary["prompt_tokens"]), method)
        for method, summary in summaries.items()
        if summary["prompt_tokens"]
    )
    groups: list[list[tuple[float, str]]] = []
    for tokens, method in sized:
        if groups and tokens - groups[-1][-1][0] <= step / 2:
            groups[-1].append((tokens, method))
        else:
            groups.append([(tokens, method)])
    offsets: dict[str, float] = {}
    for group in groups:
        centre = sum(tokens for tokens, _ in group) / len(group)
        for i, (tokens, method) in enumerate(group):
            offsets[method] = centre + step * (i - (len(group) - 1) / 2) - tokens
    return offsets


def pyplot() -> Any:
    """matplotlib.pyplot on a file-only backend; a clear error when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(f"--plot needs matplotlib; run: {EVAL_INSTALL}") from None
    return plt


def plot(records: Mapping[str, Sequence[Record]], path: str | Path) -> Path:
    """ROUGE-1, ROUGE-L and the gold reply's per-token loss against prompt tokens, one point
    per method (one colour per method, named in the legend); copy (no prompt) as a dashed
    floor."""
    plt = pyplot()
    summaries = results_json(records)
    colours = {method: f"C{i}" for i, method in enumerate(summaries)}
    widest = max((float(s["prompt_tokens"] or 0.0) for s in summaries.values()), default=0.0)
    offsets = _sideways_offsets(summaries, step=0.012 * widest)
    panels = (
        ("rouge1", "ROUGE-1 F1 (higher is better)"),
        ("rougeL", "ROUGE-L F1 (higher is better)"),
        ("gold_nll", "gold reply's loss per token (lower is better)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.6), constrained_layout=True)
    for axis, (metric, label) in zip(axes, panels, strict=True):
        for method, s in summaries.items():
            if s[metric] is None:  # copy has no gold loss
                continue
            if s["prompt_tokens"] == 0:
                axis.axhline(s[metric], linestyle="--", color="grey", linewidth=1)
                axis.annotate(
                    method,
                    (0, s[metric]),
                    xycoords=("axes fraction", "data"),
                    xytext=(4, 3),
                    textcoords="offset points",
                    color="grey",
                )
                continue
            x = float(s["prompt_tokens"]) + offsets[method]
            axis.scatter(x, s[metric], s=36, color=colours[method], label=method)
        axis.set_xlabel("prompt tokens per request (text + soft)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside right center", frameon=False)
    n = max((s["n"] for s in summaries.values()), default=0)
    figure.suptitle(
        f"LaMP-7: quality against prompt size ({n} users; "
        "methods of one prompt size are spread sideways)"
    )
    out = Path(path)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
