"""What several `curp` subcommands share: the options that name a chat model, and the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from curp_chain.cli.options import CommandOptions

if TYPE_CHECKING:
    from curp_chain.chat.chat_model import CurpChatModel


class ModelOptions(CommandOptions):
    """The options of every command that opens the chat model and its history store."""

    store: str | None = None
    """SQLAlchemy URL of the history store (default: SQLite in $CURP_HOME or the user data
    directory)"""
    checkpoint: str | None = None
    """CURP checkpoint folder (default: the bundled one)"""
    backend: Literal["llamacpp", "hf"] = "llamacpp"
    """LLM backend"""
    model_path: str | None = None
    """GGUF model file (default: SmolLM2-135M-Instruct)"""


def open_chat_model(options: ModelOptions) -> CurpChatModel:
    """The chat model named by the common options (--checkpoint, --store, --backend,
    --model-path). Imported on use, so `curp --help` does not load LangChain."""
    from curp_chain.chat.chat_model import CurpChatModel

    return CurpChatModel(
        checkpoint=options.checkpoint,
        store_url=options.store,
        backend_kind=options.backend,
        model_path=options.model_path,
    )
