"""llama-cpp-python's native objects for the llama.cpp backend, owned and checked.

llama-cpp-python's public ``Llama`` has no input for embeddings, so the backend decodes
through the C bindings and the library's own owners of native handles: ``LlamaContext``,
``LlamaBatch`` and ``LlamaTokenDataArray`` from ``llama_cpp._internals``, and the
``LlamaModel`` a ``Llama`` keeps in ``_model``. Those are private API that may change in
any release: this module is the only one that touches them, and llama-cpp-python is
pinned (0.3.36). Every native call's result is checked; a failure raises BackendError
with the return code, where llama-cpp-python's wrappers raise RuntimeError or nothing.

llama_cpp is imported on first use, so that a missing install is reported by
:func:`import_llama_cpp` with the command that fixes it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from curp_chain.errors import BackendError, MissingDependencyError
from curp_chain.runtime.generation import Logits

LLAMACPP_INSTALL = "pip install 'curp-chain-integrations[llamacpp]'  (llama-cpp-python==0.3.36)"

# What llama_decode's return codes mean (llama.h).
_DECODE_FAILURES = {
    1: "no room left in the KV cache; raise n_ctx or lower slots",
    2: "the decode was aborted",
    -1: "the batch was invalid",
}


def import_llama_cpp() -> Any:
    """The llama_cpp module, or MissingDependencyError naming the install command."""
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(
            f"the llama.cpp backend needs llama-cpp-python; run: {LLAMACPP_INSTALL}"
        ) from None
    return llama_cpp


def _internals() -> Any:
    import_llama_cpp()
    from llama_cpp import _internals  # private API: the one import of it (module docstring)

    return _internals


def model_vocab(llama: Any) -> Any:
    """The native vocabulary of a loaded ``Llama`` (for samplers and end-of-generation)."""
    return llama._model.vocab


class NativeBatch:
    """A llama_batch of ``capacity`` token ids (``embd`` 0) or embeddings of ``embd``
    floats, for one sequence per position, in llama-cpp-python's ``LlamaBatch``; freed on
    close. Its fill methods set the sequence of every position, which ``LlamaBatch``'s own
    fill methods fix at 0."""

    def __init__(self, capacity: int, embd: int = 0):
        self.capacity = capacity
        try:
            self._owner = _internals().LlamaBatch(
                n_tokens=capacity, embd=embd, n_seq_max=1, verbose=False
            )
        except ValueError:
            self._owner = None
            raise BackendError(
                f"llama_batch_init returned no batch ({capacity} x {embd})"
            ) from None
        b = self._owner.batch
        data = b.embd if embd else b.token
        if not (data and b.pos and b.n_seq_id and b.seq_id and b.logits):  # a NULL allocation
            self.close()
            raise BackendError(
                f"llama_batch_init could not allocate a batch of {capacity} "
                + (f"embeddings of {embd} floats" if embd else "tokens")
            )
        self.batch = b

    def fill(
        self, seq: int, start_pos: int, tokens: Sequence[int] | None, embeds: np.ndarray | None
    ) -> None:
        """Consecutive tokens (or embeddings) of one sequence; logits for the last only."""
        count = len(tokens) if tokens is not None else len(embeds)  # type: ignore[arg-type]
        if count > self.capacity:
            raise ValueError(f"batch of {count} exceeds capacity {self.capacity}")
        b = self.batch
        b.n_tokens = count
        if embeds is not None:
            flat = np.ascontiguousarray(embeds, dtype=np.float32).reshape(-1)
            ctypes.memmove(b.embd, flat.ctypes.data, flat.nbytes)
        for i in range(count):
            if tokens is not None:
                b.token[i] = tokens[i]
            b.pos[i] = start_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i == count - 1

    def fill_tokens(self, tokens: Sequence[tuple[int, int, int]]) -> None:
        """One (token, position, sequence) per entry; logits for every one."""
        if len(tokens) > self.capacity:
            raise ValueError(f"batch of {len(tokens)} exceeds capacity {self.capacity}")
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (token, position, seq) in enumerate(tokens):
            b.token[i] = token
            b.pos[i] = position
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = True

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None


class SequenceState:
    """One KV-cache sequence's state as llama.cpp serializes it, in host memory; read-only
    once made, so several contexts may restore it at once."""

    __slots__ = ("data", "positions")

    def __init__(self, data: ctypes.Array[ctypes.c_uint8], positions: int):
        self.data = data
        self.positions = positions  # it holds positions 0 .. positions - 1

    @property
    def nbytes(self) -> int:
        return len(self.data)


class NativeContext:
    """A llama_context on a loaded ``Llama``'s model, in llama-cpp-python's
    ``LlamaContext`` (freed on close, and before its model in any case), with every call
    checked.

    Args:
        llama: the loaded ``Llama``.
        params: the ``llama_context_params`` to create it with.
        failure: what BackendError says when llama.cpp cannot create the context.
    """

    def __init__(self, llama: Any, params: Any, failure: str):
        self._lib = import_llama_cpp()
        self._n_vocab = int(llama.n_vocab())
        try:
            self._context = _internals().LlamaContext(
                model=llama._model, params=params, verbose=False
            )
        except ValueError:  # llama_init_from_model returned NULL
            raise BackendError(failure) from None
        if self._context.memory is None:
            self._context.close()
            raise BackendError(f"{failure} (llama_get_memory returned no KV cache)")
        self.ctx = self._context.ctx

    @property
    def n_ctx_seq(self) -> int:
        """Tokens one sequence holds."""
        return int(self._lib.llama_n_ctx_seq(self.ctx))

    @property
    def n_threads(self) -> int:
        return int(self._lib.llama_n_threads(self.ctx))

    def decode(self, batch: NativeBatch) -> None:
        code = self._lib.llama_decode(self.ctx, batch.batch)
        if code != 0:
            meaning = _DECODE_FAILURES.get(code, "llama.cpp failed")
            raise BackendError(f"llama_decode failed with return code {code}: {meaning}")

    def logits(self, index: int) -> Logits:
        """A copy of the logits of the last decode's ``index``-th position (-1: the last)."""
        pointer = self._lib.llama_get_logits_ith(self.ctx, index)
        if not pointer:
            raise BackendError(f"llama_get_logits_ith({index}) returned no logits")
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()

    def clear(self, seq: int) -> None:
        """Empty sequence ``seq`` of the KV cache."""
        if not self._lib.llama_memory_seq_rm(self._context.memory, seq, -1, -1):
            raise BackendError(f"llama_memory_seq_rm could not empty sequence {seq}")

    def positions(self, seq: int) -> int:
        """Positions sequence ``seq`` holds (its largest position + 1; 0 when empty)."""
        return int(self._lib.llama_memory_seq_pos_max(self._context.memory, seq)) + 1

    def save(self, seq: int) -> SequenceState:
        """A copy of sequence ``seq``'s KV cells (llama.cpp's per-sequence state: the cells'
        positions and their keys and values, no logits)."""
        size = int(self._lib.llama_state_seq_get_size(self.ctx, seq))
        data = (ctypes.c_uint8 * size)()
        written = int(self._lib.llama_state_seq_get_data(self.ctx, data, size, seq))
        if size == 0 or written != size:
            raise BackendError(
                f"llama_state_seq_get_data wrote {written} of {size} bytes of sequence {seq}"
            )
        return SequenceState(data, self.positions(seq))

    def restore(self, seq: int, state: SequenceState) -> None:
        """Replace sequence ``seq``'s cells with a copy of ``state`` (saved by a context of
        the same model and sequence count), at the same cell indices and positions."""
        read = int(self._lib.llama_state_seq_set_data(self.ctx, state.data, state.nbytes, seq))
        if read != state.nbytes:
            self.clear(seq)
            raise BackendError(
                f"llama_state_seq_set_data read {read} of {state.nbytes} bytes into sequence "
                f"{seq}: the saved state does not fit this context"
            )
        if self.positions(seq) != state.positions:
            self.clear(seq)
            raise BackendError(
                f"sequence {seq} holds {self.positions(seq)} positions after restoring a "
                f"state of {state.positions}"
            )

    def close(self) -> None:
        self._context.close()


class TokenCandidates:
    """Every token with its logit, as the ``llama_token_data_array`` a native sampler
    filters in place (llama-cpp-python's ``LlamaTokenDataArray``), reused step after step."""

    def __init__(self, n_vocab: int):
        self._lib = import_llama_cpp()
        self._array = _internals().LlamaTokenDataArray(n_vocab=n_vocab)

    def filter(self, sampler: Any, logits: Logits) -> Logits:
        """``logits`` with every token that ``sampler`` removes or masks set to -inf."""
        array = self._array
        array.copy_logits(logits)
        array.candidates.selected = -1
        self._lib.llama_sampler_apply(sampler, ctypes.byref(array.candidates))
        kept = array.candidates_data[: array.candidates.size]
        masked = np.full_like(logits, -np.inf)
        masked[kept["id"]] = kept["logit"]
        return masked
