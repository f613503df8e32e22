"""`curp eval`: personalization methods compared on LaMP, quality and cost side by side."""

from curp_chain.eval.harness import EvalConfig, EvalRun, Record, run_eval
from curp_chain.eval.lamp import LampExample, load_lamp
from curp_chain.eval.methods import METHODS, MethodSettings
from curp_chain.eval.metrics import clean_reply, rouge
from curp_chain.eval.report import markdown_table, plot, results_json, write_results

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalRun",
    "LampExample",
    "MethodSettings",
    "Record",
    "clean_reply",
    "load_lamp",
    "markdown_table",
    "plot",
    "results_json",
    "rouge",
    "run_eval",
    "write_results",
]
