"""Reading JSON Lines files: one reader, one error type, for every data file and cache.

Every JSONL file of the package goes through :func:`read_jsonl` (or :func:`iter_jsonl` for
text already in memory), so that all of them follow the same rules:

- lines end at "\\n" only ("\\r\\n" is accepted); U+2028, NEL or a form feed inside a line
  stay in it, as JSON allows them raw inside strings;
- bytes are decoded as UTF-8 line by line, and a byte-order mark before the first line is
  dropped;
- blank lines are skipped, but line numbers count every line, so that ``file:line`` points
  at the line an editor shows;
- each line holds one JSON object, or one ``model`` when a pydantic model is given.

A line that does not fit raises :class:`DataFormatError` naming ``file:line`` and the
problem. Caches appended to as a run goes pass ``skip_unreadable=True`` instead: a run killed
mid-write leaves a partial line (and the next run appends its first record to it), which is
logged and skipped so that its record is made again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, overload

from pydantic import BaseModel, ValidationError

from curp_chain.errors import CurpError

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class DataFormatError(CurpError, ValueError):
    """A data file does not follow its documented format.

    The message starts with ``file:line`` (or ``file``) when they are known, then names the
    problem; ``path``, ``line`` and ``problem`` hold the parts.
    """

    def __init__(self, problem: str, *, path: str | Path | None = None, line: int | None = None):
        where = "" if path is None else str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}" if where else problem)
        self.path = None if path is None else str(path)
        self.line = line
        self.problem = problem


class JsonLine(NamedTuple, Generic[T]):
    """One line of a JSONL file: its number and what it holds."""

    number: int
    """1-based line number in the file, blank lines counted."""
    value: T
    """The line's JSON object (a dict), or the ``model`` it was validated as."""


OnError = Callable[[DataFormatError], None]
"""Called with each bad line's error instead of raising it; the line is then skipped."""


def json_type(value: object) -> str:
    """How a JSON value is named in messages: "an object", "an array", "null", ..."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _validation_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return f"not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
    where = ".".join(str(part) for part in first["loc"]) or "line"
    return f"{where}: {first['msg']}"


def parse_line(text: str, model: type[BaseModel] | None = None) -> Any:
    """The JSON object on one line (a dict), or the ``model`` it holds.

    Raises ValueError naming the problem (no file or line: the caller adds them).
    """
    if model is not None:
        try:
            return model.model_validate_json(text)
        except ValidationError as error:
            raise ValueError(_validation_problem(error)) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as error:  # e.g. an integer too long to convert
        raise ValueError(f"not usable JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {json_type(value)}")
    return value


def _line_text(raw: str | bytes, number: int) -> str:
    """One line without its end, decoded when it is bytes (ValueError when not UTF-8)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"not UTF-8 text (byte {error.start + 1} of the line: {error.reason}); "
                "save the file as UTF-8"
            ) from None
    return raw.removesuffix("\n").removesuffix("\r")


def _report(error: DataFormatError, on_error: OnError | None) -> None:
    if on_error is None:
        raise error
    on_error(error)


def iter_lines(
    lines: Iterable[str | bytes], source: str, *, on_error: OnError | None = None
) -> Iterator[tuple[int, str]]:
    """(number, text) of each non-blank line, its end removed; ``lines`` are a file's lines
    as split on "\\n" (a file opened in binary mode, or ``text.split("\\n")``)."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = _line_text(raw, number)
        except ValueError as error:
            _report(DataFormatError(str(error), path=source, line=number), on_error)
            continue
        if text.strip():
            yield number, text


@overload
def iter_jsonl(
    lines: Iterable[str | bytes],
    source: str,
    model: None = None,
    *,
    on_error: OnError | None = None,
) -> Iterator[JsonLine[dict[str, Any]]]: ...
@overload
def iter_jsonl(
    lines: Iterable[str | bytes], source: str, model: type[M], *, on_error: OnError | None = None
) -> Iterator[JsonLine[M]]: ...
def iter_jsonl(
    lines: Iterable[str | bytes],
    source: str,
    model: type[BaseModel] | None = None,
    *,
    on_error: OnError | None = None,
) -> Iterator[JsonLine[Any]]:
    """Each non-blank line's object (see the module doc); ``source`` names the file in
    errors. A bad line raises :class:`DataFormatError`, or with ``on_error`` is passed to it
    and skipped (a caller that reports every bad line at once collects them so)."""
    for number, text in iter_lines(lines, source, on_error=on_error):
        try:
            value = parse_line(text, model)
        except ValueError as error:
            _report(DataFormatError(str(error), path=source, line=number), on_error)
            continue
        yield JsonLine(number, value)


def _skip(error: DataFormatError) -> None:
    logger.warning("%s; skipping the line", error)


@overload
def read_jsonl(
    path: str | Path, model: None = None, *, skip_unreadable: bool = False
) -> Iterator[JsonLine[dict[str, Any]]]: ...
@overload
def read_jsonl(
    path: str | Path, model: type[M], *, skip_unreadable: bool = False
) -> Iterator[JsonLine[M]]: ...
def read_jsonl(
    path: str | Path, model: type[BaseModel] | None = None, *, skip_unreadable: bool = False
) -> Iterator[JsonLine[Any]]:
    """The lines of the JSONL file at ``path``, read as they are iterated (see the module
    doc): a dict per line, or an instance of ``model``.

    Raises :class:`DataFormatError` at once when the file does not exist, and at the first
    bad line; with ``skip_unreadable``, bad lines are logged and skipped instead (for caches
    that a killed run may have left with a partial line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("not found", path=path)
    return _read(path, model, _skip if skip_unreadable else None)


def _read(path: Path, model: type[BaseModel] | None, on_error: OnError | None) -> Iterator[Any]:
    with path.open("rb") as handle:  # binary: split on b"\n" only, decode line by line
        yield from iter_jsonl(handle, str(path), model, on_error=on_error)
