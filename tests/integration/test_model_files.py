"""Broken model files: refused at load with a project error naming the file and the reason."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from curp_chain.errors import BackendError, CheckpointError, CurpError, ModelFileNotFoundError
from curp_chain.model.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from curp_chain.model.config import CurpConfig
from curp_chain.training.initialize import initial_model


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path, bad: float) -> None:
    save_checkpoint(initial_model(CurpConfig(num_subspaces=4, codebook_size=16), seed=0), tmp_path)
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    name = sorted(n for n, t in weights.items() if t.is_floating_point())[0]
    weights[name].view(-1)[0] = bad
    save_file(weights, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=rf"{name} holds 1 NaN or infinite"):
        load_checkpoint(tmp_path)


def test_missing_gguf_is_a_file_not_found_project_error(tmp_path: Path) -> None:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(ModelFileNotFoundError, match="nowhere.gguf") as caught:
        LlamaCppBackend(missing)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, CurpError)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"NOPE" + data[4:], "not a GGUF file"),
        (lambda data: data[:4096], "truncated"),
        (lambda data: data[:2], "not a GGUF file"),
        (lambda data: b"", "empty"),
    ],
)
def test_unloadable_gguf_is_a_backend_error_naming_file_and_reason(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(damage(smollm2_gguf_path().read_bytes()))
    with pytest.raises(BackendError, match=reason) as caught:
        LlamaCppBackend(broken, n_ctx=256, n_threads=1)
    assert str(broken) in str(caught.value)


def test_model_id_comes_from_the_gguf_metadata(tmp_path: Path) -> None:
    from curp_chain_integrations.backends.gguf import SMOLLM2_ID, smollm2_gguf_path
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    copy = tmp_path / "renamed-anything.gguf"
    shutil.copyfile(smollm2_gguf_path(), copy)
    backend = LlamaCppBackend(copy, n_ctx=256, n_threads=1)
    try:
        assert backend.model_id == SMOLLM2_ID  # not "renamed-anything"
    finally:
        backend.close()


def test_bundled_gguf_named_explicitly_is_accepted_by_the_bundled_checkpoint() -> None:
    from curp_chain.chat.chat_model import CurpChatModel
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path

    model = CurpChatModel(model_path=str(smollm2_gguf_path()), max_tokens=4)
    reply = model.invoke("Say hi.")
    assert isinstance(reply.content, str)


def test_scrambled_gguf_weights_give_a_backend_error_not_an_empty_reply(tmp_path: Path) -> None:
    from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(_scrambled_copy(tmp_path), n_ctx=256, n_threads=1)
    try:
        prompt = SoftPrompt("<|im_start|>user\nHi<|im_end|>\n", None, "<|im_start|>assistant\n")
        with pytest.raises(BackendError, match="NaN"):
            list(backend.stream(prompt, GenerationParams(max_tokens=4)))
    finally:
        backend.close()


def test_non_finite_soft_tokens_are_refused() -> None:
    from curp_chain.personalization.personalizer import check_soft_tokens

    soft = torch.zeros(2, 3).numpy()
    soft[1, 2] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        check_soft_tokens(soft)


@pytest.mark.slow
def test_broken_transformers_weights_cache_is_rebuilt() -> None:
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path
    from curp_chain_integrations.backends.hf import CACHE_MANIFEST, _cache_dir, load_gguf_as_hf

    gguf = smollm2_gguf_path()
    model, _ = load_gguf_as_hf(gguf)  # builds the cache, or reuses the session's
    cache = _cache_dir(gguf)
    assert (cache / CACHE_MANIFEST).is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp left
    weights = cache / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as file:  # what a kill during the save used to leave
        file.truncate(size // 3)
    stale = cache.parent / f".{cache.name}-killed"  # a killed save's temporary folder
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    rebuilt, _ = load_gguf_as_hf(gguf)
    assert weights.stat().st_size == size
    assert not stale.exists()
    name, expected = next(iter(model.state_dict().items()))
    assert torch.equal(rebuilt.state_dict()[name], expected)


def _scrambled_copy(tmp_path: Path) -> Path:
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path

    data = bytearray(smollm2_gguf_path().read_bytes())
    # 0xFF bytes over the second half (tensor data): f16 block scales become NaN.
    half = len(data) // 2
    data[half:] = b"\xff" * (len(data) - half)
    broken = tmp_path / "scrambled.gguf"
    broken.write_bytes(bytes(data))
    return broken


@pytest.mark.slow
def test_scrambled_gguf_weights_give_a_backend_error_through_transformers(tmp_path: Path) -> None:
    from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
    from curp_chain_integrations.backends.hf import TransformersBackend

    backend = TransformersBackend(_scrambled_copy(tmp_path), use_cache=False)
    prompt = SoftPrompt("<|im_start|>user\nHi<|im_end|>\n", None, "<|im_start|>assistant\n")
    with pytest.raises(BackendError, match="NaN"):
        list(backend.stream(prompt, GenerationParams(max_tokens=4)))


class _SilentModel:
    """The real SmolLM2 backend, except that its model ends every reply at once, as a
    model with damaged weights can: what CurpChatModel does with that is under test."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name: str):
        if name == "submit":  # generation goes through stream() below
            raise AttributeError(name)
        return getattr(self._backend, name)

    def stream(self, prompt, params):
        from curp_chain.interfaces.protocols import GenerationChunk

        n_input = self._backend.count_tokens(prompt.before + prompt.after)
        usage = {"input_tokens": n_input, "output_tokens": 0, "soft_tokens": 0}
        yield GenerationChunk("", finish_reason="stop", usage=usage)


def test_an_empty_generation_is_an_error_not_a_personalized_empty_reply(
    llama_backend,
    memory_store,
) -> None:
    from curp_chain.chat.chat_model import CurpChatModel

    model = CurpChatModel(backend=_SilentModel(llama_backend), history_store=memory_store)
    model.add_history("ana", ["Morning swim, 2 km in the lake."])
    with pytest.raises(BackendError, match="ended its reply before writing anything"):
        model.invoke("Plans for today?", user_id="ana")
    with pytest.raises(BackendError, match="ended its reply"):
        list(model.stream("Plans for today?", user_id="ana"))
