"""A tool as one short line, ``name(param: type, ...): description``, for the system message.

A tool's JSON Schema line costs about 65 to 85 tokens of SmolLM2's tokenizer; its signature
costs about a third of that. The tool list is read by every call (cached or not) and every
token decoded afterwards attends to it, so its length is what a call with many tools bound
pays beyond a call with one (docs/benchmarks.md, "Prefix cache"). The grammar built from the
full schema still decides what a call may contain: the line only has to tell the model which
tool does what and which arguments it takes.

Types read like TypeScript: ``string``, ``integer``, ``"fast" | "exact"`` for an enum,
``integer[]`` for an array, ``{day: string, hour?: integer}`` for an object; a ``?`` marks an
optional parameter, ``= value`` its default. A parameter's own description follows the
tool's, as ``name: description``. Schema keywords the grammar enforces (lengths, bounds,
patterns) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from curp_chain.chat.tools.specs import ToolSpec

MAX_DEPTH = 3
"""Nested objects deeper than this are written as ``object``."""


def type_text(schema: Mapping[str, Any], depth: int = 0) -> str:
    """The type of a JSON Schema, in TypeScript-like words."""
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_text(option, depth) for option in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(type_text({**schema, "type": k}, depth) for k in kind)
    if kind == "array":
        items = schema.get("items")
        inner = type_text(items, depth) if isinstance(items, Mapping) else "any"
        return f"({inner})[]" if " " in inner else f"{inner}[]"
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not properties or depth >= MAX_DEPTH:
            return "object"
        return "{" + ", ".join(_parameters(schema, depth + 1)) + "}"
    return str(kind) if kind else "any"


def _parameters(schema: Mapping[str, Any], depth: int) -> list[str]:
    required = set(schema.get("required") or ())
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        mark = "" if name in required else "?"
        if not isinstance(sub, Mapping):  # a boolean schema: anything (true) or nothing
            out.append(f"{name}{mark}: any")
            continue
        default = f" = {json.dumps(sub['default'])}" if "default" in sub else ""
        out.append(f"{name}{mark}: {type_text(sub, depth)}{default}")
    return out


def tool_signature(spec: ToolSpec) -> str:
    """``name(a: string, b?: integer = 3): What the tool does. a: what a means.``"""
    parameters = ", ".join(_parameters(spec.parameters, 0))
    line = f"{spec.name}({parameters})"
    notes = [spec.description.strip()] if spec.description.strip() else []
    notes += [
        f"{name}: {str(sub['description']).strip()}"
        for name, sub in (spec.parameters.get("properties") or {}).items()
        if isinstance(sub, Mapping) and str(sub.get("description", "")).strip()
    ]
    return f"{line}: {' '.join(_sentence(n) for n in notes)}" if notes else line


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."
