"""A tiny LaMP-7 folder in the official layout, for the evaluation tests of both tiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curp_chain.tasks.lamp7 import LAMP7_INSTRUCTION

USERS: list[dict[str, Any]] = [
    {
        "id": "u1",
        "tweet": "Sunrise run done, 10k in the rain and I loved every minute of it",
        "gold": "10k at sunrise in the rain!! loved every minute",
        "profile": [
            "Morning run by the river, legs are toast",
            "New shoes came today, cannot wait to try them tomorrow",
            "Rainy days are the best days for long runs",
        ],
    },
    {
        "id": "u2",
        "tweet": "I finally finished reading the novel and the ending surprised me",
        "gold": "finished the novel... did NOT see that ending coming",
        "profile": [
            "Library haul this week: three mysteries and a cookbook",
            "Reading in bed with tea is my favourite thing",
        ],
    },
]


def write_lamp(folder: Path, users: list[dict[str, Any]] = USERS) -> Path:
    """A LaMP folder in the official layout (questions.json, outputs.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    questions = [
        {
            "id": u["id"],
            "input": LAMP7_INSTRUCTION + u["tweet"],
            "profile": [{"id": f"{u['id']}_{i}", "text": t} for i, t in enumerate(u["profile"])],
        }
        for u in users
    ]
    golds = [{"id": u["id"], "output": u["gold"]} for u in users]
    (folder / "questions.json").write_text(json.dumps(questions))
    (folder / "outputs.json").write_text(json.dumps({"task": "LaMP_7", "golds": golds}))
    return folder
