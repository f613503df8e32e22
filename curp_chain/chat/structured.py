"""Structured output: a schema becomes the JSON Schema that constrains decoding and the
parser that turns the reply into the caller's type."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import BaseOutputParser
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from curp_chain.errors import CurpError
from curp_chain.runtime.prompt import ChatTurn

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
"""What ``json_mode`` constrains the reply to."""


def is_pydantic_class(schema: Any) -> bool:
    """A Pydantic v2 class, or a v1 class (``pydantic.v1``), as LangChain accepts both."""
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def schema_and_parser(
    schema: Any, method: StructuredOutputMethod
) -> tuple[dict[str, Any], BaseOutputParser[Any]]:
    """(JSON Schema for the grammar, parser of the reply) for ``schema``: a Pydantic class
    (parsed into an instance), a TypedDict or a JSON Schema dict (parsed into a dict).

    ``json_schema`` and ``function_calling`` both constrain the reply to the schema; there
    is no separate tool-calling channel. ``json_mode`` without a schema asks for any JSON
    object; with one, it constrains the reply to it as well (a small model fills a schema it
    is held to far more reliably than one it is only told about).
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
    if schema is None:  # json_mode
        return ANY_JSON_OBJECT, parser
    if is_pydantic_class(schema):
        if hasattr(schema, "model_json_schema"):
            return schema.model_json_schema(), parser
        return convert_to_json_schema(schema), parser  # Pydantic v1
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
    if dict(json_schema) == ANY_JSON_OBJECT:  # json_mode: naming the schema would get it copied
        text = "Reply with one JSON object only."
    else:
        text = "Reply with JSON only, matching this JSON Schema: " + json.dumps(
            json_schema, separators=(",", ":")
        )
    if turns and turns[0].role == "system":
        return [ChatTurn("system", f"{turns[0].content}\n\n{text}"), *turns[1:]]
    return [ChatTurn("system", text), *turns]
