"""`curp eval`: personalization methods compared on LaMP, quality and cost side by side.

The names below load on first use, so importing one submodule (the metrics, say) does
not import the whole harness and its optional dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curp_chain._lazy import lazy_exports

if TYPE_CHECKING:
    from curp_chain.eval.harness import EvalConfig, EvalRun, Record, run_eval
    from curp_chain.eval.methods import METHODS, MethodSettings
    from curp_chain.eval.metrics import clean_reply, rouge
    from curp_chain.eval.report import (
        markdown_table,
        paired_table,
        plot,
        results_json,
        write_results,
    )

_HOMES = {
    "EvalConfig": "harness",
    "EvalRun": "harness",
    "Record": "harness",
    "run_eval": "harness",
    "METHODS": "methods",
    "MethodSettings": "methods",
    "clean_reply": "metrics",
    "rouge": "metrics",
    "markdown_table": "report",
    "paired_table": "report",
    "plot": "report",
    "results_json": "report",
    "write_results": "report",
}


__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalRun",
    "MethodSettings",
    "Record",
    "clean_reply",
    "markdown_table",
    "paired_table",
    "plot",
    "results_json",
    "rouge",
    "run_eval",
    "write_results",
]
