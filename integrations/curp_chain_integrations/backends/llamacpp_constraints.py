"""Decoding constraints of the llama.cpp backend: masks on each step's logits.

A constraint's ``allowed(logits)`` returns the logits with every forbidden token at -inf,
``accept(token)`` advances it past the sampled token, and ``close()`` frees what it holds
(the generation loop in ``curp_chain.runtime.generation`` drives them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from curp_chain.errors import BackendError, InvalidGenerationParamsError
from curp_chain.runtime.generation import Logits
from curp_chain_integrations.backends.llamacpp_native import TokenCandidates, import_llama_cpp


class JsonSchemaGrammar:
    """llama.cpp's grammar sampler for a JSON Schema, as a decoding constraint: every token
    that would make the reply stop matching the schema is masked. Freed on close."""

    def __init__(self, vocab: Any, n_vocab: int, schema: Mapping[str, Any]):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as error:  # the converter raises bare exceptions of several kinds
            raise InvalidGenerationParamsError(
                f"the JSON Schema cannot be turned into a grammar: {error}"
            ) from None
        self._lib = import_llama_cpp()
        self._candidates = TokenCandidates(n_vocab)
        self._sampler = self._lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self._sampler:
            raise InvalidGenerationParamsError("llama.cpp rejected the grammar of the JSON Schema")

    def allowed(self, logits: Logits) -> Logits:
        masked = self._candidates.filter(self._sampler, logits)
        if not np.isfinite(masked).any():  # accepting any token now would abort llama.cpp
            raise BackendError("the JSON Schema's grammar allows no next token")
        return masked

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None


class JsonOrText:
    """A JSON Schema grammar that the first token may opt out of: a first token starting
    with ``{`` commits the reply to the grammar, any other to free text (tool calling with
    ``tool_choice="auto"``: the model chooses between a call and a reply)."""

    def __init__(self, grammar: JsonSchemaGrammar, brace_tokens: np.ndarray):
        self._grammar = grammar
        self._brace = brace_tokens  # (n_vocab,) bool: the token's text starts with "{"
        self._json: bool | None = None

    def allowed(self, logits: Logits) -> Logits:
        if self._json is None:
            return np.where(self._brace, self._grammar.allowed(logits), logits)
        return self._grammar.allowed(logits) if self._json else logits

    def accept(self, token: int) -> None:
        if self._json is None:
            self._json = bool(self._brace[token])
        if self._json:
            self._grammar.accept(token)

    def close(self) -> None:
        self._grammar.close()


class NoJsonStart:
    """Masks every token starting with ``{`` at the first position only."""

    def __init__(self, brace_tokens: np.ndarray):
        self._brace = brace_tokens
        self._first = True

    def allowed(self, logits: Logits) -> Logits:
        return np.where(self._brace, -np.inf, logits) if self._first else logits

    def accept(self, token: int) -> None:
        self._first = False

    def close(self) -> None:
        pass


Constraint = JsonSchemaGrammar | JsonOrText | NoJsonStart
"""Any of the decoding constraints above."""
