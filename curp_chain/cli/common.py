"""What several `curp` subcommands share: the chat model their options describe."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curp_chain.chat.chat_model import CurpChatModel


def open_chat_model(args: argparse.Namespace) -> CurpChatModel:
    """The chat model named by the common options (--checkpoint, --store, --backend,
    --model-path). Imported on use, so `curp --help` does not load LangChain."""
    from curp_chain.chat.chat_model import CurpChatModel

    return CurpChatModel(
        checkpoint=args.checkpoint,
        store_url=args.store,
        backend_kind=args.backend,
        model_path=args.model_path,
    )
