"""Decoding constraints of the transformers and vLLM backends, through llguidance.

The three constraints the llama.cpp backend takes from its own grammar engine
(``llamacpp_constraints``) are written here once, as one Lark grammar each:

- a JSON Schema (tool calls, structured output, ``json_mode``): ``start: %json {...}``;
- JSON or text (tool_choice "auto" without the gate): the schema's JSON, or free text whose
  first character is not ``{``;
- no JSON start (tool_choice "none"): free text whose first character is not ``{``.

The transformers backend runs the grammar with llguidance as a mask on each step's logits
(`GuidanceConstraint`); the vLLM backend hands the same text to vLLM's structured outputs,
whose "guidance" backend is the same engine. llguidance was chosen over xgrammar because it
is one 3 MB wheel with no dependencies (xgrammar pulls in triton and a TVM runtime, of no
use on a CPU) and reads the SmolLM2 tokenizer as it is.

As with llama.cpp's JSON Schema converter, an object that lists ``properties`` and says
nothing of ``additionalProperties`` takes no other keys, and whitespace between JSON tokens
is at most one space: a small model cannot pad a reply with blank lines until ``max_tokens``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from curp_chain.errors import BackendError, InvalidGenerationParamsError, MissingDependencyError
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.runtime.generation import Logits

JSON_WHITESPACE = "[ ]?"
"""Whitespace allowed between JSON tokens (llama.cpp's converter allows a little more)."""

TEXT_NOT_JSON = r"/[^{](.|\n)*/"
"""A Lark terminal: free text that does not start with ``{``."""


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
"""Keywords whose value maps names to subschemas."""
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = (
    "items",
    "additionalProperties",
    "additionalItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)


def closed_objects(schema: Any) -> Any:
    """``schema`` with ``"additionalProperties": false`` on every object that lists
    ``properties`` and does not say (what llama.cpp's JSON Schema converter does)."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), Mapping):
            out[key] = {name: closed_objects(sub) for name, sub in schema[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [closed_objects(sub) for sub in schema[key]]
    for key in _SUBSCHEMAS:
        if isinstance(schema.get(key), Mapping):
            out[key] = closed_objects(schema[key])
    if isinstance(schema.get("properties"), Mapping) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _json_rule(schema: Mapping[str, Any]) -> str:
    closed = closed_objects(schema)
    options = closed.get("x-guidance") if isinstance(closed.get("x-guidance"), dict) else {}
    # lenient: keywords llguidance does not implement (an unknown string "format") are
    # ignored, as llama.cpp's converter ignores them, instead of failing the request.
    closed["x-guidance"] = {"whitespace_pattern": JSON_WHITESPACE, "lenient": True, **options}
    return "%json " + json.dumps(closed, ensure_ascii=False)


def constraint_grammar(params: GenerationParams) -> str | None:
    """The Lark grammar (llguidance's dialect) of the constraint ``params`` ask for, or None
    when the reply is free."""
    if params.json_schema is None:
        return f"start: TEXT\nTEXT: {TEXT_NOT_JSON}\n" if params.no_json_start else None
    rule = _json_rule(params.json_schema)
    if params.json_or_text:
        return f"start: reply | TEXT\nreply: {rule}\nTEXT: {TEXT_NOT_JSON}\n"
    return f"start: {rule}\n"


def import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise MissingDependencyError(
            "tool calls and structured output on the transformers backend decode under "
            "llguidance; run: pip install 'curp-chain-integrations[hf]'"
        ) from None
    return llguidance


class GuidanceConstraint:
    """One request's grammar, as a decoding constraint (``TokenConstraint``): every token
    that would break the grammar is masked, and end of turn only where the grammar may end."""

    def __init__(self, matcher: Any, n_vocab: int):
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._mask = np.zeros((1, (n_vocab + 31) // 32), dtype=np.int32)

    def allowed(self, logits: Logits) -> Logits:
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if self._matcher.is_error():
            raise BackendError(f"the grammar failed: {self._matcher.get_error()}")
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little").astype(bool)
        allowed = np.zeros(len(logits), dtype=bool)
        shared = min(len(logits), self._n_vocab)
        allowed[:shared] = bits[:shared]
        if not allowed.any():
            raise BackendError("the grammar allows no next token")
        return np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise BackendError(
                f"the grammar refused token {token}: {self._matcher.get_error() or 'not allowed'}"
            )

    def close(self) -> None:
        pass


class GrammarEngine:
    """Builds `GuidanceConstraint` objects for one Hugging Face tokenizer. Its llguidance
    tokenizer (about 0.5 s to build) is made on the first constrained request."""

    def __init__(self, hf_tokenizer: Any, end_ids: Iterable[int], n_vocab: int):
        self._hf_tokenizer = hf_tokenizer
        self._end_ids = sorted(end_ids)
        self._n_vocab = n_vocab
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def tokenizer(self) -> Any:
        """The llguidance tokenizer (built once)."""
        with self._lock:
            if self._tokenizer is None:
                import_llguidance()  # a clear error when it is missing
                from llguidance.hf import from_tokenizer

                self._tokenizer = from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._n_vocab, eos_token=self._end_ids
                )
            return self._tokenizer

    def constraint(self, params: GenerationParams) -> GuidanceConstraint | None:
        """The constraint ``params`` ask for, or None; InvalidGenerationParamsError for a
        JSON Schema that cannot become a grammar."""
        grammar = constraint_grammar(params)
        if grammar is None:
            return None
        llguidance = import_llguidance()
        matcher = llguidance.LLMatcher(
            self.tokenizer(), llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
        )
        if matcher.is_error():
            raise InvalidGenerationParamsError(
                f"the JSON Schema cannot be turned into a grammar: {matcher.get_error()}"
            )
        return GuidanceConstraint(matcher, self._n_vocab)


def check_grammar(grammar: str) -> None:
    """InvalidGenerationParamsError when llguidance cannot compile ``grammar`` (checked
    without a tokenizer: for engines that compile it elsewhere, such as vLLM's)."""
    llguidance = import_llguidance()
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.LLMatcher.grammar_from_lark(grammar)
    )
    if failed:
        raise InvalidGenerationParamsError(
            f"the JSON Schema cannot be turned into a grammar: {messages[0]}"
        )
