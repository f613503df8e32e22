"""LaMP-7 data, kept importable from here: the loader lives in :mod:`curp_chain.tasks.lamp7`."""

from __future__ import annotations

from curp_chain.tasks.lamp7 import (
    LAMP7_INSTRUCTION,
    OUTPUTS_FILE,
    QUESTIONS_FILE,
    LampDataError,
    LampExample,
    ProfileItem,
    load_lamp,
    source_text,
)

__all__ = [
    "LAMP7_INSTRUCTION",
    "OUTPUTS_FILE",
    "QUESTIONS_FILE",
    "LampDataError",
    "LampExample",
    "ProfileItem",
    "load_lamp",
    "source_text",
]
