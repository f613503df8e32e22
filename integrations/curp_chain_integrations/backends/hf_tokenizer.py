"""The tokenizer half of the backend protocol, for backends with a Hugging Face tokenizer.

The transformers and vLLM backends tokenize with the same ``transformers`` tokenizer and
read the chat template and special tokens from it; this mixin is that code, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class HFTokenizerMixin:
    """``chat_template``, ``special_tokens``, ``tokenize``, ``count_tokens`` and
    ``detokenize`` from the transformers tokenizer in ``self.tokenizer``."""

    tokenizer: Any
    """A transformers tokenizer (``PreTrainedTokenizerBase``), set by the backend."""

    @property
    def chat_template(self) -> str:
        return str(self.tokenizer.chat_template or "")

    @property
    def special_tokens(self) -> Mapping[str, str]:
        return {
            "bos_token": self.tokenizer.bos_token or "",
            "eos_token": self.tokenizer.eos_token or "",
        }

    def tokenize(self, text: str) -> list[int]:
        """Token ids of already-templated text (special tokens parsed, none added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``, special tokens left out."""
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))
