"""The input of a batch prediction: a UTF-8 JSONL file, one {"text": str, "id": str | int} object per line.

Pure Python: the API checks an upload with it before anything is stored or queued, and the worker reads the
stored file with it. Every error names the line and says what to fix. Texts are taken as they are (not
stripped), so a line is answered exactly as POST /v1/predict answers the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .jsonl import decode_utf8, numbered_lines, object_on_line
from .texts import unicode_problem

KEYS = ("id", "text")  # "text" is required; "id" is echoed in the answer (default: the line number)


class BatchInputError(ValueError):
    """The file cannot be answered as it is (the message names the line)."""


@dataclass(frozen=True)
class BatchLine:
    number: int  # its line in the file, from 1 (blank lines are skipped, but counted)
    id: str | int
    text: str


def read_batch_input(raw: bytes, *, max_lines: int, max_chars: int) -> list[BatchLine]:
    """The lines of a batch-prediction file, each checked; BatchInputError at the first bad one."""
    text = decode_utf8(raw, BatchInputError, "")
    lines: list[BatchLine] = []
    for number, line in numbered_lines(text):
        if len(lines) == max_lines:
            raise BatchInputError(f"line {number}: more than {max_lines} lines (DAS_MAX_BATCH_PREDICTION_LINES); "
                                  "split the file")
        lines.append(_line(line, number, max_chars))
    if not lines:
        raise BatchInputError('the file holds no lines (empty, or only blank lines); give one {"text": ...} '
                              "object per line")
    return lines


def _line(line: str, number: int, max_chars: int) -> BatchLine:
    record = object_on_line(line, number, BatchInputError, "", '{"text": ..., "id": ...}')
    unknown = sorted(record.keys() - set(KEYS))
    if unknown:
        raise BatchInputError(f"line {number} has unknown key(s) {', '.join(map(repr, unknown))}; "
                              'each line holds "text" and, optionally, "id"')
    if "text" not in record:
        raise BatchInputError(f'line {number} lacks "text"; each line holds "text" and, optionally, "id"')
    text = record["text"]
    if not isinstance(text, str):
        raise BatchInputError(f'line {number}: "text" must be a string, got {type(text).__name__}')
    if not text.strip():
        raise BatchInputError(f'line {number}: "text" is empty')
    if len(text) > max_chars:
        raise BatchInputError(f'line {number}: "text" has {len(text)} characters; the limit is {max_chars} '
                              "(DAS_MAX_TEXT_CHARS)")
    problem = unicode_problem(text)
    if problem:
        raise BatchInputError(f'line {number}: "text" {problem}')
    return BatchLine(number, _id(record.get("id", number), number), text)


def _id(value: object, number: int) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BatchInputError(f'line {number}: "id" must be a string or an integer, got {type(value).__name__}')
    if isinstance(value, str) and unicode_problem(value):
        raise BatchInputError(f'line {number}: "id" {unicode_problem(value)}')
    return value
