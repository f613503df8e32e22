"""Exception types raised by curp-chain for user mistakes and missing parts.

Each message names what was wrong and how to fix it, so that a caller never has to
read a traceback from deep inside torch, SQLAlchemy or llama.cpp.
"""

from __future__ import annotations


class CurpError(Exception):
    """Base class of every error curp-chain raises on purpose."""


class InvalidHistoryItemError(CurpError, ValueError):
    """A history item was empty, too long, or otherwise unusable. Nothing was stored.

    ``index`` is the position of the bad item in its batch (None when the batch itself is
    wrong) and ``rule`` a short name of the rule it broke (e.g. "text", "kind",
    "created_at", "metadata", "batch"), so a caller such as `curp ingest` can point at the
    line it came from.
    """

    def __init__(self, message: str, *, index: int | None = None, rule: str | None = None):
        super().__init__(message)
        self.index = index
        self.rule = rule


class InvalidUserIdError(CurpError, ValueError):
    """A user id was empty, too long, not a string, or broke the user id policy."""


class CheckpointError(CurpError):
    """A checkpoint folder is missing, malformed, or was made for other parts."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint was made for another LLM, encoder or hidden size than the one in use."""


class ContextLengthError(CurpError, ValueError):
    """A prompt (text plus soft tokens) does not fit the model's context window."""


class InvalidGenerationParamsError(CurpError, ValueError):
    """A generation setting was out of range or contradicted another."""


class MissingDependencyError(CurpError, ImportError):
    """An optional package is needed for this feature; the message names the install command."""


class ModelFileNotFoundError(CurpError, FileNotFoundError):
    """A model or weights file named by the caller does not exist."""


class StoreError(CurpError):
    """The history store failed; the call's changes were rolled back."""


class InvalidStoreOperationError(CurpError, ValueError):
    """A LangGraph store operation the history cannot carry out: a namespace without a user
    id in it, a value that is not a dict of plain JSON, an unknown filter operator."""


class BackendError(CurpError, RuntimeError):
    """The LLM backend failed (a native call returned an error code)."""


class QueueFullError(CurpError):
    """Too many requests are waiting for the model; retry later or raise the queue size."""


class RequestTimeoutError(CurpError, TimeoutError):
    """A request did not finish within its timeout; its generation was stopped."""
