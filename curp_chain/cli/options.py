"""Command lines built from pydantic option models.

Every ``curp`` command declares its options as a pydantic model whose fields carry
docstrings. ``add_options`` gives a parser one ``--option`` per field (a positional argument
where the field is annotated with :class:`Arg`), with the field's docstring and default as
its help; ``parse_options`` turns the parsed arguments back into the validated model, with
errors that name the option. ``curp train`` adds a ``--config`` file on top (see
``curp_chain.cli.train``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from curp_chain.errors import CurpError

ModelT = TypeVar("ModelT", bound=BaseModel)

PROG = "_prog"
"""Namespace key of the command's name (``curp eval lamp7``), for error messages."""


class CommandOptions(BaseModel):
    """Base of a command's options: unknown keys are refused, and each field's docstring is
    its ``--help``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@dataclass(frozen=True)
class Arg:
    """How a field appears on the command line when it is not a plain ``--option``; put it in
    the field's annotation: ``file: Annotated[str, Arg(positional=True)]``."""

    positional: bool = False
    """an argument without a flag, in field order"""
    flag: str | None = None
    """the option's name where it differs from the field's (``--json`` for ``json_path``,
    as a field cannot be called ``json`` on a pydantic model)"""
    short: str | None = None
    """a one-letter alias, e.g. ``-v``"""
    choices: tuple[str, ...] | None = None
    """the accepted values, where a Literal cannot name them (a registry known at run time)"""
    metavar: str | None = None
    """the value's name in the usage line"""


def _arg(info: FieldInfo) -> Arg:
    return next((m for m in info.metadata if isinstance(m, Arg)), Arg())


def option_name(model: type[BaseModel], name: str) -> str:
    """The command-line name of ``model``'s field ``name``: ``--max-steps`` for max_steps."""
    info = model.model_fields.get(name)
    arg = _arg(info) if info is not None else Arg()
    if arg.positional:
        return name
    return arg.flag or "--" + name.replace("_", "-")


def field_help(model: type[BaseModel], name: str, note: str = "") -> str:
    """The field's docstring as one line, then ``note``, then its default unless the text
    already says it."""
    info = model.model_fields[name]
    text = " ".join(f"{info.description or ''} {note}".split())
    default = info.default
    if info.is_required() or default is None or default is False or "(default" in text:
        return text.replace("%", "%%")
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{text} (default {shown})".replace("%", "%%")


def _value_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None, str | None]:
    """(argparse type, choices, nargs) of a field's annotation: X | None -> X; Literal ->
    choices; list[X] -> one or more X."""
    if get_origin(annotation) is Literal:
        return str, get_args(annotation), None
    if get_origin(annotation) is list:
        return get_args(annotation)[0], None, "+"
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args:
        return _value_type(args[0])
    return annotation, None, None


def add_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    typed_only: bool = False,
    notes: Mapping[str, str] | None = None,
) -> None:
    """One argument per field of ``model``, in field order.

    ``typed_only`` leaves what the command line did not give out of the namespace
    (``argparse.SUPPRESS``, no option required), so that a config file can fill it and a
    typed option can be told from a default. ``notes`` adds text known only when the parser
    is built (e.g. a default that depends on the task) to a field's help.
    """
    for name, info in model.model_fields.items():
        arg = _arg(info)
        text = field_help(model, name, (notes or {}).get(name, ""))
        default = argparse.SUPPRESS if typed_only else info.get_default()
        if arg.positional:
            kind, choices, nargs = _value_type(info.annotation)
            parser.add_argument(
                name, type=kind, nargs=nargs, choices=arg.choices or choices, help=text
            )
            continue
        flags = [*([arg.short] if arg.short else []), option_name(model, name)]
        if info.annotation is bool:
            action: Any = argparse.BooleanOptionalAction if info.default else "store_true"
            parser.add_argument(*flags, action=action, dest=name, default=default, help=text)
            continue
        kind, choices, nargs = _value_type(info.annotation)
        parser.add_argument(
            *flags,
            dest=name,
            type=kind,
            nargs=nargs,
            choices=arg.choices or choices,
            default=default,
            required=info.is_required() and not typed_only,
            metavar=arg.metavar,
            help=text,
        )


def add_command(
    subparsers: Any,
    name: str,
    model: type[BaseModel],
    func: Callable[[argparse.Namespace], int],
    *,
    typed_only: bool = False,
    notes: Mapping[str, str] | None = None,
    **parser_kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand whose options are ``model``'s fields and which runs ``func``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, **parser_kwargs)
    add_options(parser, model, typed_only=typed_only, notes=notes)
    parser.set_defaults(func=func, **{PROG: parser.prog})
    return parser


def problems(error: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's errors as option names and messages."""
    parts = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["loc"]:
            name = option_name(model, str(item["loc"][0]))
            message = f"{name}: {message}" if item["type"] != "extra_forbidden" else name
        parts.append(message)
    return "; ".join(parts)


def validate_options(model: type[ModelT], values: Mapping[str, Any], command: str | None) -> ModelT:
    """``model`` from ``values``; a value that does not fit raises a CurpError naming the
    option and the command."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        where = f"`{command}`: " if command else ""
        raise CurpError(f"{where}{problems(error, model)}") from None


def parse_options(args: argparse.Namespace, model: type[ModelT]) -> ModelT:
    """The command's typed options from parsed arguments (those that are ``model``'s
    fields)."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    return validate_options(model, values, getattr(args, PROG, None))
