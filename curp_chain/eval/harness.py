"""Run methods x users of a task: generate, score, measure cost, cache each result.

Each (method, user) result is one JSON line in ``<cache>/<method>-<fingerprint>.jsonl``,
written as soon as it is known. The file's fingerprint covers what shapes the output
besides the prompt (model file, generation settings, method settings, checkpoint weights);
every line records fingerprints of its example and of its exact prompt (text and soft
vectors). A rerun reuses exactly the results that are still valid, and an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from curp_chain.data.jsonl import read_jsonl
from curp_chain.eval.methods import (
    METHODS,
    Method,
    MethodSettings,
    Resources,
    parse_methods,
)
from curp_chain.eval.metrics import clean_reply, normalized, rouge
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain.locations import curp_home
from curp_chain.runtime.defaults import default_gguf_path
from curp_chain.runtime.scoring import collate, teacher_forced_example, token_losses
from curp_chain.tasks import TASKS, Task, TaskExample, get_task

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when a record's meaning changes: older cache files are then ignored."""


class EvalConfig(BaseModel):
    """One evaluation run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    """The task's data: the shared data folder (with ``<task>/`` inside) or the task's own
    folder (for lamp7, a folder in the official LaMP layout)."""
    task: str = "lamp7"
    """Which task (:data:`curp_chain.tasks.TASKS`)."""
    split: str = "dev"
    per_user: int | None = Field(default=None, ge=1)
    """Examples per user (the last ones of each user); the task's default when None."""
    methods: tuple[str, ...] = ("copy", "none", "rag", "profile", "curp")
    limit: int | None = Field(default=None, ge=1)
    """Evaluate the first ``limit`` examples only (all when None); examples are taken
    round-robin over users, so the first N cover as many users as they can."""
    seed: int = 0
    """Seeds sampling (when temperature > 0) and the user derangement of curp-shuffled."""
    max_tokens: int = Field(default=64, ge=1)
    """Longest reply generated."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0: greedy decoding."""
    gold_nll: bool = True
    """Score the gold reply's per-token loss under each method (loads the HF backend)."""
    cache_dir: Path | None = None
    """Where per-(method, user) results are cached; $CURP_HOME/eval-cache when None."""
    method_settings: MethodSettings = Field(default_factory=MethodSettings)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; choose from {', '.join(TASKS)}")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _known_methods(cls, value: Any) -> tuple[str, ...]:
        return tuple(parse_methods(value))

    def generation_params(self) -> GenerationParams:
        return GenerationParams(
            max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed
        )

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else curp_home() / "eval-cache"


@dataclass
class Record:
    """The result of one method on one user."""

    user: str
    example: str
    """Fingerprint of the example the record was made from."""
    prompt: str
    """Fingerprint of the prompt (text and soft vectors) the reply was generated from."""
    output: str
    """The reply as scored (after clean_reply)."""
    raw_output: str
    rouge1: float
    rougeL: float
    exact_copy: bool
    """The scored reply equals the input tweet (words only, case ignored)."""
    gold_nll: float | None
    """Mean per-token loss of the gold reply (and its end-of-turn token), teacher-forced."""
    gold_tokens: int
    prompt_tokens: int
    """Input positions of the request: text tokens plus soft tokens (0 for copy)."""
    soft_tokens: int
    base_prompt_tokens: int
    """Input positions of the same request under ``none``: the difference is what the
    method spends on the user."""
    output_tokens: int
    ttft_ms: float | None
    tokens_per_s: float | None
    finish_reason: str | None
    peak_rss_mb: float
    """Peak resident memory of the whole evaluation process so far."""

    @property
    def user_tokens(self) -> int:
        return self.prompt_tokens - self.base_prompt_tokens if self.prompt_tokens else 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    soft_tokens: int
    output_tokens: int
    ttft_ms: float
    tokens_per_s: float | None
    finish_reason: str | None


def scored(record: Record, example: TaskExample, task: Task) -> Record:
    """The record with its reply cleaned and scored again from ``raw_output``: cached results
    always follow the current clean-up and metrics."""
    output = clean_reply(record.raw_output, label=task.reply_label, whole=task.whole_reply)
    scores = rouge(output, example.gold)
    return replace(
        record,
        output=output,
        rouge1=scores.rouge1,
        rougeL=scores.rougeL,
        exact_copy=normalized(output) == normalized(example.source),
    )


def prompt_fingerprint(prompt: SoftPrompt | None) -> str:
    """Changes whenever the prompt's text or soft vectors change ("" for no prompt)."""
    if prompt is None:
        return ""
    digest = hashlib.sha256(json.dumps([prompt.before, prompt.after]).encode("utf-8"))
    if prompt.soft is not None:
        digest.update(np.ascontiguousarray(prompt.soft, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(llm: Any, prompt: SoftPrompt, params: GenerationParams) -> Generation:
    """Stream one reply, timing the first chunk and the tokens after it."""
    pieces: list[str] = []
    usage: dict[str, int] = {}
    finish = None
    start = time.perf_counter()
    first: float | None = None
    for chunk in llm.stream(prompt, params):
        if first is None:
            first = time.perf_counter()
        pieces.append(chunk.text)
        if chunk.finish_reason is not None:
            finish, usage = chunk.finish_reason, dict(chunk.usage)
    end = time.perf_counter()
    first = first if first is not None else end
    produced = usage.get("output_tokens", 0)
    rate = (produced - 1) / (end - first) if produced > 1 and end > first else None
    return Generation(
        "".join(pieces),
        usage.get("input_tokens", 0),
        usage.get("soft_tokens", 0),
        produced,
        (first - start) * 1000.0,
        rate,
        finish,
    )


@torch.no_grad()
def gold_nll(scorer: Any, prompt: SoftPrompt, gold: str) -> tuple[float, int]:
    """(mean per-token loss, tokens scored) of ``gold`` as the reply to ``prompt``."""
    soft = torch.from_numpy(prompt.soft) if prompt.soft is not None else None
    example = teacher_forced_example(scorer, prompt.before, soft, prompt.after, gold)
    total, count = token_losses(scorer.model, collate([example]))
    return float(total[0]) / max(int(count[0]), 1), int(count[0])


class ResultCache:
    """Append-only JSONL files of records, one file per method fingerprint."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, method: str, fingerprint: dict[str, Any]) -> Path:
        key = json.dumps({"format": CACHE_FORMAT, **fingerprint}, sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.folder / f"{method}-{digest}.jsonl"

    @staticmethod
    def load(path: Path) -> dict[tuple[str, str, str], Record]:
        """(user, example, prompt fingerprints) -> record; a torn line (a crash) is logged
        and skipped, a record of another shape skipped."""
        records: dict[tuple[str, str, str], Record] = {}
        if not path.is_file():
            return records
        for _, data in read_jsonl(path, skip_unreadable=True):
            try:
                record = Record.from_json(data)
            except TypeError:  # fields missing: written by another version
                continue
            records[(record.user, record.example, record.prompt)] = record
        return records

    @staticmethod
    def append(path: Path, record: Record) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            handle.flush()


@dataclass
class EvalRun:
    """Records per method, in the order the methods were asked for."""

    config: EvalConfig
    records: dict[str, list[Record]]
    generated: int
    """Results computed in this run (the others came from the cache)."""
    checkpoint_trained: bool | None
    """Whether the CURP checkpoint says it was trained (None when no curp method ran)."""
    examples: list[TaskExample] = field(default_factory=list)
    """The examples evaluated, in the order of every method's records."""


class Harness:
    """Builds the methods of a config and runs them over its users."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.task = get_task(config.task)
        population = self.task.eval_examples(config.data, config.split, config.per_user)
        self.examples = population[: config.limit] if config.limit else population
        self.resources = Resources(config.method_settings, population, self.task)
        self.methods: list[Method] = [METHODS[name](self.resources) for name in config.methods]
        self.cache = ResultCache(config.resolved_cache_dir())
        self.params = config.generation_params()

    def model_fingerprint(self) -> dict[str, Any]:
        path = self.config.method_settings.model_path
        if path is None:
            path = default_gguf_path()
        stat = path.stat()
        return {
            "llm": self.resources.llm.model_id,
            "model_file": [str(path.resolve()), stat.st_size, stat.st_mtime_ns],
            "params": asdict(self.params),
            "gold_nll": self.config.gold_nll,
        }

    def fingerprint(self, method: Method) -> dict[str, Any]:
        if not method.uses_llm:
            return method.fingerprint()
        return {**method.fingerprint(), **self.model_fingerprint()}

    def evaluate(self, method: Method, example: TaskExample, prompt: SoftPrompt | None) -> Record:
        """Generate and score the reply to ``prompt``, the prompt of ``method`` for ``example``."""
        key = (example.id, example.fingerprint(), prompt_fingerprint(prompt))
        if prompt is None:  # copy: no model
            return scored(Record(
                *key, "", example.source, 0.0, 0.0,
                exact_copy=False, gold_nll=None, gold_tokens=0, prompt_tokens=0, soft_tokens=0,
                base_prompt_tokens=0, output_tokens=0, ttft_ms=None, tokens_per_s=None,
                finish_reason=None, peak_rss_mb=peak_rss_mb(),
            ), example, self.task)  # fmt: skip
        llm = self.resources.llm
        params = replace(self.params, no_echo=method.no_echo(example))
        generation = generate(llm, prompt, params)
        nll, gold_tokens = (None, 0)
        if self.config.gold_nll:
            nll, gold_tokens = gold_nll(self.resources.scorer, prompt, example.gold)
        base = method.base_prompt(example)
        return scored(Record(
            *key, "", generation.text, 0.0, 0.0, exact_copy=False,
            gold_nll=nll, gold_tokens=gold_tokens, prompt_tokens=generation.prompt_tokens,
            soft_tokens=generation.soft_tokens,
            base_prompt_tokens=llm.count_tokens(base.before + base.after) if base else 0,
            output_tokens=generation.output_tokens, ttft_ms=generation.ttft_ms,
            tokens_per_s=generation.tokens_per_s, finish_reason=generation.finish_reason,
            peak_rss_mb=peak_rss_mb(),
        ), example, self.task)  # fmt: skip

    def _plan(self) -> Iterator[tuple[Method, Path, dict[tuple[str, str, str], Record]]]:
        for method in self.methods:
            method.prepare()
            path = self.cache.path(method.name, self.fingerprint(method))
            yield method, path, self.cache.load(path)

    def run(self, *, progress: bool = True) -> EvalRun:
        # Prepare every method first: a missing checkpoint fails before any generation.
        plan = list(self._plan())
        if self.config.gold_nll and any(m.uses_llm for m in self.methods):
            _ = self.resources.scorer
        total = len(plan) * len(self.examples)
        records: dict[str, list[Record]] = {}
        generated = 0
        with tqdm(total=total, desc="eval", unit="reply", disable=not progress) as bar:
            for method, path, cached in plan:
                bar.set_postfix_str(method.name)
                rows = []
                for example in self.examples:
                    prompt = method.prompt(example)
                    key = (example.id, example.fingerprint(), prompt_fingerprint(prompt))
                    record = cached.get(key)
                    if record is None:
                        record = self.evaluate(method, example, prompt)
                        self.cache.append(path, record)
                        generated += 1
                    rows.append(scored(record, example, self.task))
                    bar.update()
                records[method.name] = rows
                logger.info("%s: %d results (%s)", method.name, len(rows), path)
        curp_ran = any(m.name.startswith("curp") for m in self.methods)
        trained = self.resources.user_model.config.trained if curp_ran else None
        return EvalRun(self.config, records, generated, trained, list(self.examples))


def run_eval(config: EvalConfig, *, progress: bool = True) -> EvalRun:
    """Evaluate ``config.methods`` on the first ``config.limit`` examples of the task."""
    return Harness(config).run(progress=progress)
