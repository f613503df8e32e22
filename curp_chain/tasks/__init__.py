"""The tasks curp-chain trains and evaluates on, one module each.

Each task module holds its data loader (the layout of ``../shared/data/<task>/``) and its
request builder, shared by training and evaluation: a soft prompt is evaluated on exactly
the request it was trained with. Every task writes the generic format of
:mod:`curp_chain.data.generic` (``curp data export TASK``).
"""

from __future__ import annotations

from curp_chain.errors import CurpError
from curp_chain.tasks.aeslc import AeslcTask
from curp_chain.tasks.assist_task import AssistTask
from curp_chain.tasks.base import MAX_SOURCE_CHARS, Task, TaskDataError, TaskExample, cut
from curp_chain.tasks.lamp7 import PARAPHRASE_SYSTEM, Lamp7Task, paraphrase_turns
from curp_chain.tasks.personachat import PersonaChatTask
from curp_chain.tasks.reddit import RedditTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (Lamp7Task, RedditTask, AeslcTask, PersonaChatTask, AssistTask)
}
"""Every task by name."""


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error naming the choices otherwise."""
    if name not in TASKS:
        raise CurpError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = [
    "MAX_SOURCE_CHARS",
    "PARAPHRASE_SYSTEM",
    "TASKS",
    "AeslcTask",
    "AssistTask",
    "Lamp7Task",
    "PersonaChatTask",
    "RedditTask",
    "Task",
    "TaskDataError",
    "TaskExample",
    "cut",
    "get_task",
    "paraphrase_turns",
]
