"""Reading a corpus file: UTF-8 text (one document per line) or JSONL with a `text` field.

Pure Python (no torch), so the API can check an upload before it queues a job.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from .jsonl import decode_utf8, is_json_object, numbered_lines, object_on_line
from .texts import unicode_problem

MAX_DOCUMENT_CHARS = 1_000_000
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CorpusError(ValueError):
    """The corpus file cannot be used; the message says what to fix."""


def read_corpus(path: str | Path) -> list[str]:
    """Documents of a UTF-8 text file (one per line) or of JSONL with a `text` field per line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    text = decode_utf8(path.read_bytes(), CorpusError, f"{path}: ", what="UTF-8 text or JSONL")
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    docs = _jsonl_documents(path, text) if _is_jsonl(path, first) else [ln.strip() for ln in lines if ln.strip()]
    if not docs:
        raise CorpusError(f"{path}: holds no documents (empty, or only blank lines)")
    too_long = next((i for i, d in enumerate(docs) if len(d) > MAX_DOCUMENT_CHARS), None)
    if too_long is not None:
        raise CorpusError(f"{path}: document {too_long + 1} exceeds {MAX_DOCUMENT_CHARS} characters")
    return docs


def _is_jsonl(path: Path, first: str) -> bool:
    """JSONL if the name says so or the first line is a JSON object; a text line that merely starts with `{` is text.

    A file meant as JSONL (either way) is then read strictly: a broken later line is an error with its number.
    """
    return path.suffix.lower() in JSONL_SUFFIXES or is_json_object(first)


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for number, line in numbered_lines(text):
        record = object_on_line(line, number, CorpusError, f"{path}: ", '{"text": ...}')
        if not isinstance(record.get("text"), str):
            raise CorpusError(f"{path}: line {number} has no string field 'text'")
        problem = unicode_problem(record["text"])
        if problem:
            raise CorpusError(f"{path}: line {number}: 'text' {problem}")
        if record["text"].strip():
            docs.append(record["text"].strip())
    return docs


def split_by_hash(documents: list[str], salt: str, fraction: float, max_documents: int) -> tuple[list[str], list[str]]:
    """(held out, the rest): the held-out documents are the first ceil(fraction * distinct) distinct texts (at most
    max_documents, at least 1) in sha256(salt, text) order, a choice that does not depend on the corpus' order;
    every copy of a held-out text leaves the rest. Both keep the corpus' order."""
    distinct = list(dict.fromkeys(documents))
    n = max(1, min(max_documents, math.ceil(fraction * len(distinct))))
    ranked = sorted(distinct, key=lambda d: hashlib.sha256(f"{salt}\0{d}".encode()).hexdigest())
    chosen = set(ranked[:n])
    return [d for d in distinct if d in chosen], [d for d in documents if d not in chosen]
