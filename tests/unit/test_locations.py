"""Paths and default ids live at the bottom of the core, defined once, imported by all."""

from __future__ import annotations

import subprocess
import sys

from curp_chain.locations import DEFAULT_ENCODER_ID, DEFAULT_LLM_ID
from curp_chain.model.config import CurpConfig


def imported_modules(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_adapters_reach_the_paths_without_the_wiring_module() -> None:
    # curp_chain.runtime.defaults imports the adapters lazily; the adapters importing it back made
    # a circle. Now the stores and the backends only need curp_chain.locations.
    for module in ("curp_chain_stores.paths", "curp_chain_integrations.backends.hf"):
        loaded = imported_modules(module)
        assert "curp_chain.locations" in loaded
        assert "curp_chain.runtime.defaults" not in loaded, module
    assert not {
        m for m in imported_modules("curp_chain.locations") if m.startswith("curp_chain.")
    } - {
        "curp_chain.locations",
        "curp_chain._lazy",
    }


def test_default_ids_are_the_same_everywhere() -> None:
    from curp_chain_integrations.backends.gguf import SMOLLM2_ID

    assert SMOLLM2_ID == CurpConfig().llm_id == DEFAULT_LLM_ID
    assert CurpConfig().encoder_id == DEFAULT_ENCODER_ID
