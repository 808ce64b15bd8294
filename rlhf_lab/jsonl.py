"""JSON Lines files: one JSON object per line, the format of every data file in `data/`.

Reading checks each record against a small schema, `{field name: expected type(s)}`, and a bad
line raises a `DataFormatError` that names the file, the line and the field, so a learner who
edits `data/sft.jsonl` by hand sees exactly what to fix:

    data/sft.jsonl, line 17, field 'answer': expected a string, got 3

Writing is atomic: a crash (or Ctrl-C in a notebook) mid-write leaves the old file intact,
never a half-written one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

# A field's expected type: one type, or a tuple of allowed types (e.g. `(str, type(None))`).
Schema = dict[str, type | tuple[type, ...]]

# How an expected type is described in error messages: JSON words, not Python ones.
_TYPE_WORDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


class DataFormatError(ValueError):
    """A bad line in a JSONL file; the message names the file, the line number and the field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{self.path}, line {line}" + (f", field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Exceptions are pickled as `cls(*args)`; ours takes four arguments, not the message.
        return (DataFormatError, (self.path, self.line, self.field, self.problem))


def _describe_type(expected: type | tuple[type, ...]) -> str:
    """'a string', or 'a string or null' for a tuple of types."""
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_TYPE_WORDS.get(t, f"a {t.__name__}") for t in types)


def _show_value(value: object, limit: int = 60) -> str:
    """The value as it looked in the file (JSON), cut short so one huge field can't flood the message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_type(value: object, expected: type | tuple[type, ...]) -> bool:
    """isinstance, with JSON's view of numbers.

    - `true` is not an integer: Python's bool is a subclass of int, so isinstance(True, int) is True,
      but a label of `true` where a count belongs is a bug in the data.
    - `3` is a fine float: JSON has one number type and writes 3.0 as 3 in many tools.
    """
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _parse_line(
    path: Path, line_number: int, raw_line: bytes, fields: Schema, optional: Schema
) -> dict | DataFormatError | None:
    """One line -> its record, the DataFormatError that describes what is wrong, or None if blank."""
    try:
        text = raw_line.decode("utf-8-sig")  # -sig: tolerate the BOM some Windows editors put first
    except UnicodeDecodeError as error:
        return DataFormatError(path, line_number, None, f"not valid UTF-8 text ({error.reason})")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return DataFormatError(path, line_number, None, f"invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        return DataFormatError(path, line_number, None, f"expected a JSON object {{...}}, got {_show_value(record)}")
    for field in fields:
        if field not in record:
            return DataFormatError(path, line_number, field, "required field is missing")
    for field, expected in {**fields, **optional}.items():
        if field in record and not _has_type(record[field], expected):
            problem = f"expected {_describe_type(expected)}, got {_show_value(record[field])}"
            return DataFormatError(path, line_number, field, problem)
    return record


def _parse_file(path: Path, fields: Schema | None, optional: Schema | None) -> Iterator[dict | DataFormatError]:
    """Every non-blank line of the file, parsed: a record or the error that describes the line."""
    # Binary mode, decoded line by line: a bad byte is reported with its line number instead of
    # failing the whole file with a bare UnicodeDecodeError.
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            parsed = _parse_line(path, line_number, raw_line, fields or {}, optional or {})
            if parsed is not None:
                yield parsed


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSONL file")
    return path


def iter_jsonl(
    path: str | os.PathLike, fields: Schema | None = None, optional: Schema | None = None
) -> Iterator[dict]:
    """Stream the records of a JSONL file, one dict per non-blank line.

    `fields` are required: each must be present with the given type. `optional` fields may be
    missing, but must have the given type when present. Other keys pass through unchecked.
    The first bad line raises DataFormatError (when iteration reaches it).
    """
    # Not a generator itself, so a missing file raises here rather than at the first next().
    return _raise_first_error(_parse_file(_existing_file(path), fields, optional))


def _raise_first_error(parsed_lines: Iterator[dict | DataFormatError]) -> Iterator[dict]:
    for parsed in parsed_lines:
        if isinstance(parsed, DataFormatError):
            raise parsed
        yield parsed


def read_jsonl(path: str | os.PathLike, fields: Schema | None = None, optional: Schema | None = None) -> list[dict]:
    """All records of a JSONL file as a list; see `iter_jsonl` for the checks.

    >>> read_jsonl("data/sft.jsonl", fields={"prompt": str, "answer": str})  # doctest: +SKIP
    """
    return list(iter_jsonl(path, fields, optional))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically, creating parent folders as needed.

    The records go to a temporary file in the same folder, which is flushed to disk (fsync) and
    then renamed over `path` with os.replace. A rename within one folder is atomic, so readers see
    either the old file or the complete new one, even if the process dies halfway.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: os.replace is only atomic within one file system.
    temporary_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary_path, "x", encoding="utf-8", newline="\n") as file:
            for index, record in enumerate(records):
                if not isinstance(record, dict):
                    raise TypeError(f"{path}: record {index} is a {type(record).__name__}, expected a dict")
                try:
                    line = json.dumps(record, ensure_ascii=False)
                except (TypeError, ValueError) as error:
                    raise TypeError(f"{path}: record {index} cannot be written as JSON: {error}") from error
                file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, path)
    finally:
        # Only still there if something failed before the rename: don't leave debris behind.
        temporary_path.unlink(missing_ok=True)
