"""examples/agent.py runs offline and finishes its two-tool task for both users."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "agent.py"


@pytest.mark.slow
def test_the_agent_example_calls_both_tools_for_both_users() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sections = done.stdout.split("== ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["alice", "bob"]
    for section in sections:
        lines = [line.strip() for line in section.splitlines()[1:]]
        calls = [line for line in lines if line.startswith("call ")]
        assert [c.split("(")[0] for c in calls] == ["call get_weather", "call add_reminder"]
        for call in calls:  # arguments are a dict of the tool's string parameters
            args = ast.literal_eval(call[call.index("(") + 1 : -1])
            assert (
                isinstance(args, dict) and args and all(isinstance(v, str) for v in args.values())
            )
        assert set(ast.literal_eval(calls[0][calls[0].index("(") + 1 : -1])) == {"city", "day"}
        assert set(ast.literal_eval(calls[1][calls[1].index("(") + 1 : -1])) == {"day", "text"}
        # The answer follows both calls; it is free text and may run over several lines.
        answers = [i for i, line in enumerate(lines) if line.startswith("answer:")]
        assert answers and answers[-1] > lines.index(calls[-1])
        assert " ".join(lines[answers[-1] :]).removeprefix("answer:").strip()
