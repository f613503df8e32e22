"""curp-chain: personalize a local LLM with codebook-based continuous user representations.

The public names below load on first use, so ``import curp_chain.<module>`` (the training
and evaluation tools, a batch job on a GPU machine) does not pull in LangChain or the
chat model unless it uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curp_chain._lazy import lazy_exports

if TYPE_CHECKING:
    from curp_chain.chat.chat_model import CurpChatModel
    from curp_chain.errors import (
        BackendError,
        CheckpointError,
        ContextLengthError,
        CurpError,
        IncompatibleCheckpointError,
        InvalidGenerationParamsError,
        InvalidHistoryItemError,
        InvalidUserIdError,
        MissingDependencyError,
        QueueFullError,
        RequestTimeoutError,
        StoreError,
    )
    from curp_chain.interfaces.history import HistoryItem, NewHistoryItem
    from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
    from curp_chain.model.config import CurpConfig
    from curp_chain.model.user_model import CurpUserModel
    from curp_chain.personalization.personalizer import Personalizer

__version__ = "0.1.0"

_HOMES = {
    "CurpChatModel": "chat.chat_model",
    "DEFAULT_CHECKPOINT": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "CurpConfig": "model.config",
    "BackendError": "errors",
    "CheckpointError": "errors",
    "ContextLengthError": "errors",
    "CurpError": "errors",
    "IncompatibleCheckpointError": "errors",
    "InvalidGenerationParamsError": "errors",
    "InvalidHistoryItemError": "errors",
    "InvalidUserIdError": "errors",
    "MissingDependencyError": "errors",
    "QueueFullError": "errors",
    "RequestTimeoutError": "errors",
    "StoreError": "errors",
    "HistoryItem": "interfaces.history",
    "NewHistoryItem": "interfaces.history",
    "Personalizer": "personalization.personalizer",
    "CurpUserModel": "model.user_model",
}


__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "BackendError",
    "CheckpointError",
    "ContextLengthError",
    "CurpChatModel",
    "CurpConfig",
    "CurpError",
    "CurpUserModel",
    "HistoryItem",
    "IncompatibleCheckpointError",
    "InvalidGenerationParamsError",
    "InvalidHistoryItemError",
    "InvalidUserIdError",
    "MissingDependencyError",
    "NewHistoryItem",
    "Personalizer",
    "QueueFullError",
    "RequestTimeoutError",
    "StoreError",
    "__version__",
    "load_checkpoint",
    "save_checkpoint",
]
