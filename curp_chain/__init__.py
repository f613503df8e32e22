"""curp-chain: personalize a local LLM with codebook-based continuous user representations."""

from curp_chain.chat_model import CurpChatModel
from curp_chain.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from curp_chain.config import CurpConfig
from curp_chain.errors import (
    BackendError,
    CheckpointError,
    ContextLengthError,
    CurpError,
    IncompatibleCheckpointError,
    InvalidHistoryItemError,
    InvalidUserIdError,
    MissingDependencyError,
    StoreError,
)
from curp_chain.history import HistoryItem, NewHistoryItem
from curp_chain.personalizer import Personalizer
from curp_chain.user_model import CurpUserModel

__version__ = "0.1.0"

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
    "InvalidHistoryItemError",
    "InvalidUserIdError",
    "MissingDependencyError",
    "NewHistoryItem",
    "Personalizer",
    "StoreError",
    "__version__",
    "load_checkpoint",
    "save_checkpoint",
]
