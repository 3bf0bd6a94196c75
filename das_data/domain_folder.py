"""The domain folder format: one domain's unlabeled corpus and its labeled end task, read and written.

    DOMAIN/
      corpus.txt    UTF-8, one document per line
      train.jsonl   {"label": "...", "text": "..."} per line
      test.jsonl    same
      domain.json   {"name", "source", "licence", "labels", "notes"} (a "metric" is informational: the
                    evaluation reports macro-F1 and accuracy for every domain)

`read_domain` reads and validates any domain folder, built here or brought by a user. Its JSONL files
are read by `das_formats.task_data.read_labeled_jsonl`, the reader of `POST /v1/tasks` and `das task
add`, so a domain's files are accepted by both or by neither.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from das_formats.corpus import CorpusError, read_corpus
from das_formats.jsonl import JsonInputError, parse_json
from das_formats.task_data import MAX_LABELS, TaskDataError, read_labeled_jsonl
from das_settings import get_settings
from model_store.names import InvalidName, domain_name

from .text import clean, preview, rank

FORMAT_VERSION = 1
FILES = ("corpus.txt", "train.jsonl", "test.jsonl", "domain.json")
MAX_TRAIN = 2000  # end-task examples a built domain holds, and `das eval` scores by default, at most (balanced)
MAX_TEST = 1000


class DomainError(ValueError):
    """A domain folder cannot be used (or built); the message says what is wrong and where."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Domain:
    name: str
    folder: Path
    corpus: Path  # corpus.txt; read it with das_formats.corpus.read_corpus
    train: list[Example]
    test: list[Example]
    labels: list[str]
    meta: dict  # the whole domain.json
    corpus_documents: int


def read_domain(folder: str | Path, *, max_examples: int | None = None, max_chars: int | None = None) -> Domain:
    """Read and validate a domain folder; any problem raises DomainError naming the file and line.

    The train and test files follow the end-task upload's rules and bounds (by default the service's
    DAS_MAX_TASK_EXAMPLES and DAS_MAX_TASK_TEXT_CHARS)."""
    folder = Path(folder)
    if folder.is_file():
        raise DomainError(f"{folder} is a file; give a domain folder (docs/domains.md: corpus.txt, train.jsonl, "
                          "test.jsonl, domain.json)")
    if not folder.is_dir():
        raise DomainError(f"{folder}: no such domain folder")
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise DomainError(f"{folder}: missing {', '.join(missing)} (a domain folder holds {', '.join(FILES)})")
    meta = _read_meta(folder / "domain.json")
    labels = meta["labels"]
    settings = get_settings()
    bounds = {"max_examples": max_examples or settings.max_task_examples,
              "max_chars": max_chars or settings.max_task_text_chars}
    train = _read_examples(folder / "train.jsonl", **bounds)
    test = _read_examples(folder / "test.jsonl", **bounds)
    declared = set(labels)
    for split, examples in (("train", train), ("test", test)):
        unknown = sorted({e.label for e in examples} - declared)
        if unknown:
            raise DomainError(f"{folder / (split + '.jsonl')}: labels {unknown} are not in domain.json 'labels'")
    unseen = sorted({e.label for e in test} - {e.label for e in train})
    if unseen:
        raise DomainError(f"{folder / 'test.jsonl'}: labels {unseen} never occur in train.jsonl")
    try:
        docs = read_corpus(folder / "corpus.txt")
    except CorpusError as err:
        raise DomainError(str(err)) from None
    leaked = {clean(e.text) for e in test} & {clean(d) for d in docs}
    if leaked:
        raise DomainError(f"{folder / 'corpus.txt'}: {len(leaked)} test text(s) also occur as corpus documents, "
                          f"e.g. {preview(min(leaked))!r}; the corpus must not hold the test texts")
    return Domain(name=meta["name"], folder=folder, corpus=folder / "corpus.txt", train=train, test=test,
                  labels=list(labels), meta=meta, corpus_documents=len(docs))


def _read_meta(path: Path) -> dict:
    try:
        meta = parse_json(path.read_bytes())
    except JsonInputError as err:
        raise DomainError(f"{path}: {str(err).removeprefix('is ')}") from None
    if not isinstance(meta, dict):
        raise DomainError(f"{path}: must hold a JSON object")
    absent = [k for k in ("name", "source", "licence", "labels") if k not in meta]
    if absent:
        raise DomainError(f"{path}: missing field(s) {', '.join(absent)}")
    for key in ("name", "source", "licence"):
        if not isinstance(meta[key], str) or not meta[key].strip():
            raise DomainError(f"{path}: '{key}' must be a non-empty string")
    try:
        domain_name(meta["name"])
    except InvalidName as err:
        raise DomainError(f"{path}: {err}") from None
    labels = meta["labels"]
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels)):
        raise DomainError(f"{path}: 'labels' must be a list of at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise DomainError(f"{path}: 'labels' lists a label twice")
    if len(labels) > MAX_LABELS:
        raise DomainError(f"{path}: 'labels' lists {len(labels)} labels, more than the {MAX_LABELS} a task may have")
    if "notes" in meta and not isinstance(meta["notes"], dict):
        raise DomainError(f"{path}: 'notes' must be a JSON object")
    return meta


def _read_examples(path: Path, *, max_examples: int, max_chars: int) -> list[Example]:
    """The examples of a train or test file, by the end-task reader (the same rules as POST /v1/tasks)."""
    try:
        found = read_labeled_jsonl(path.read_bytes(), name=str(path), max_examples=max_examples,
                                   max_chars=max_chars)
    except TaskDataError as err:
        raise DomainError(str(err)) from None
    return [Example(text, label) for text, label in zip(found.texts, found.labels, strict=True)]


# --------------------------------------------------------------------------------------------
# writing


def _dumps(record: dict, indent: int | None = None) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, indent=indent)


def check_domain_target(folder: Path) -> None:
    """Refuse, before anything is fetched or written, a target `write_domain` cannot or must not replace: a file
    where a folder goes (the folder itself or a parent), a symbolic link, or a folder that holds anything but a
    domain folder's files (replacing it would delete them)."""
    folder = Path(folder)
    for parent in folder.parents:  # the nearest one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise DomainError(f"{parent} is a file, not a folder; choose another output folder (or move the "
                                  "file away)")
            break
    if folder.is_symlink():
        raise DomainError(f"{folder} is a symbolic link; a built domain replaces its folder, so remove the link "
                          "or choose another output folder")
    if folder.exists() and not folder.is_dir():
        raise DomainError(f"{folder} is a file, not a domain folder; remove it or choose another output folder")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if p.name not in FILES)
        if other:
            raise DomainError(f"{folder} exists and is not a domain folder (it holds {', '.join(other[:5])}"
                              f"{', ...' if len(other) > 5 else ''}); a built domain replaces its folder, so remove "
                              "it or choose another output folder")


def write_domain(folder: Path, *, name: str, corpus: list[str], train: list, test: list, labels: list[str],
                 source: str, licence: str, notes: dict) -> Path:
    """Write one domain folder atomically: into a hidden temporary folder beside it, then rename.

    An existing domain folder is replaced; anything else in the way is a DomainError (`check_domain_target`), and
    so is a failure to write (naming the path). `train` and `test` hold objects with `.text` and `.label`.
    domain.json gets "metric": "macro_f1", the metric the suite's tasks are reported in (informational: nothing
    reads it)."""
    folder = Path(folder)
    check_domain_target(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as err:
        raise DomainError(_cannot_write(folder, err)) from None
    try:
        _write_text(tmp / "corpus.txt", "".join(d + "\n" for d in corpus))
        for split, examples in (("train", train), ("test", test)):
            _write_text(tmp / f"{split}.jsonl",
                        "".join(_dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
        meta = {"name": name, "source": source, "licence": licence, "metric": "macro_f1", "labels": labels,
                "notes": {"format_version": FORMAT_VERSION, **notes}}
        _write_text(tmp / "domain.json", _dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _swap_in(tmp, folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise DomainError(_cannot_write(folder, err)) from None
        raise
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the written folder in place of the old one (if any), which is deleted; restored if the swap fails."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{rank(tmp)[:8]}")
        os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:
        if old is not None:
            os.rename(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old)


def _cannot_write(folder: Path, err: OSError) -> str:
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(folder) else ""
    return f"cannot write {folder}: {err.strerror or err}{where}; check the output folder, its permissions and " \
           "the free space"


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
