"""JSON from outside, read one way: corpora, task data and batch inputs (JSONL), cursors and results files.

`json.loads` raises more than JSONDecodeError on hostile input: an integer of more than 4,300 digits is a
ValueError, and nesting a few thousand levels deep is a RecursionError. `parse_json` turns every one into a
`JsonInputError` with a one-line reason, so a caller refuses the input (a 4xx, an exit 2) instead of failing.
JSONL is UTF-8 (a BOM allowed), split on "\\n" only (str.splitlines would also cut at U+2028 and friends, which
JSON strings may hold), blank lines skipped but counted, so every error names its line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

MAX_DEPTH = 100  # nesting levels of arrays and objects: far above any format here, far below the parser's limit


class JsonInputError(ValueError):
    """Input that is not the JSON it should be; the message says where and why (no traceback needed)."""


def _depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (a linear scan; refusing deep input before the parser does)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """json.loads, with every way hostile input can fail it raised as JsonInputError. Bytes are UTF-8 (JSON's
    encoding; a BOM is allowed), never guessed as UTF-16 or UTF-32."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise JsonInputError(f"is not UTF-8 (invalid byte at offset {err.start})") from None
    deepest = _depth(text)
    if deepest > MAX_DEPTH:
        raise JsonInputError(f"nests {deepest} levels deep, more than the {MAX_DEPTH} allowed")
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise JsonInputError(f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise JsonInputError(f"nests too deep to read (keep it within {MAX_DEPTH} levels)") from None
    except ValueError as err:  # an integer over sys.get_int_max_str_digits(); the message says so
        raise JsonInputError(f"is not readable JSON ({str(err).split(';')[0]})") from None


def decode_utf8(raw: bytes, error: type[ValueError], prefix: str, *, what: str = "UTF-8 JSONL") -> str:
    """The text of an uploaded file; `error(prefix + reason)` for a binary or non-UTF-8 one, naming the line."""
    nul = raw.find(b"\x00")  # the whole file (a C scan), not only its start
    if nul >= 0:
        raise error(f"{prefix}looks binary (a NUL byte at offset {nul}, line {_line_at(raw, nul)}); give {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{prefix}not UTF-8 (invalid byte at offset {err.start}, line {_line_at(raw, err.start)}); "
                    "re-encode the file as UTF-8") from None


def _line_at(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-blank line of a JSONL text."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def object_on_line(line: str, number: int, error: type[ValueError], prefix: str, shape: str,
                   object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> dict[str, Any]:
    """One JSONL line as an object; `error(prefix + 'line N ...')` when it is not JSON or not an object. `shape`
    says what a line should hold, e.g. '{"text": ...}'."""
    try:
        record = parse_json(line, object_pairs_hook=object_pairs_hook)
    except JsonInputError as err:
        raise error(f"{prefix}line {number} {_on_one_line(str(err))}") from None
    if not isinstance(record, dict):
        raise error(f"{prefix}line {number} is not a JSON object; write {shape}")
    return record


def _on_one_line(reason: str) -> str:
    """A parse_json reason for one line: its 'line 1' is the file's line, named already."""
    return reason.replace(" at line 1 column ", " at column ")


def is_json_object(line: str) -> bool:
    """Whether a line is a JSON object (anything unreadable, however hostile, is not)."""
    if not line.startswith("{"):
        return False
    try:
        return isinstance(parse_json(line), dict)
    except JsonInputError:
        return False
