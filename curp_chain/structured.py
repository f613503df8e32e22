"""Structured output: a schema becomes the JSON Schema that constrains decoding and the
parser that turns the reply into the caller's type."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import BaseOutputParser
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel

from curp_chain.errors import CurpError
from curp_chain.prompt import ChatTurn

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
"""What ``json_mode`` constrains the reply to."""


def is_pydantic_class(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def schema_and_parser(
    schema: Any, method: StructuredOutputMethod
) -> tuple[dict[str, Any], BaseOutputParser[Any]]:
    """(JSON Schema for the grammar, parser of the reply) for ``schema``: a Pydantic class
    (parsed into an instance), a TypedDict or a JSON Schema dict (parsed into a dict).

    ``json_schema`` and ``function_calling`` both constrain the reply to the schema; there
    is no separate tool-calling channel. ``json_mode`` only asks for a JSON object, and
    needs no schema.
    """
    if method not in ("json_schema", "function_calling", "json_mode"):
        raise CurpError(
            f"unknown structured-output method {method!r}; "
            "choose json_schema, function_calling or json_mode"
        )
    if schema is None and method != "json_mode":
        raise CurpError(f"method {method!r} needs a schema; pass one or use json_mode")
    parser: BaseOutputParser[Any] = (
        PydanticOutputParser(pydantic_object=schema)
        if is_pydantic_class(schema)
        else JsonOutputParser()
    )
    if method == "json_mode":
        return ANY_JSON_OBJECT, parser
    if is_pydantic_class(schema):
        return schema.model_json_schema(), parser
    if isinstance(schema, dict) and ("properties" in schema or "type" in schema):
        return schema, parser  # already a JSON Schema
    try:
        return convert_to_json_schema(schema), parser
    except (ValueError, TypeError) as error:
        raise CurpError(f"cannot read {schema!r} as a schema: {error}") from None


def with_format_instruction(
    turns: Sequence[ChatTurn], json_schema: Mapping[str, Any]
) -> list[ChatTurn]:
    """``turns`` with the schema named in the system message: the grammar guarantees the
    structure, but a small model fills the fields far better when it is told them."""
    text = "Reply with JSON only, matching this JSON Schema: " + json.dumps(
        json_schema, separators=(",", ":")
    )
    if turns and turns[0].role == "system":
        return [ChatTurn("system", f"{turns[0].content}\n\n{text}"), *turns[1:]]
    return [ChatTurn("system", text), *turns]
