"""End-task data and settings, checked before any work starts (pure Python: the API checks an
upload with it before anything is stored). The fitting lives in `das_engine.endtask` (torch).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .jsonl import decode_utf8, numbered_lines, object_on_line
from .texts import unicode_problem

FIELDS = ("text", "label")  # each JSONL line holds exactly these
MAX_LABEL_CHARS = 200  # a label is repeated in every answer (a score per label per text): it stays short
MAX_LABELS = 1000  # classes per task: every answer holds a score for each

TaskKind = Literal["probe", "finetune"]
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class TaskSettings:
    """How a task model is fitted. Probe: `l2`, `max_iter`; finetune: `lr`, `epochs`, `batch_size`.

    The one home of the end-task defaults: `endtask.ProbeConfig`, `endtask.FinetuneConfig` and `das eval`'s
    `ScoringSettings` take theirs from these fields."""

    max_length: int = field(default=128, metadata={"help": "finetune: tokens per text, specials included (a probe "
                                                   "reads texts as the service does: up to 512 tokens)",
                                                   "bounds": (8, 512)})
    seed: int = field(default=0, metadata={"help": "seed of the fit", "bounds": (0, MAX_SEED)})
    l2: float = field(default=1e-3, metadata={"help": "probe: L2 penalty of the logistic regression",
                                              "bounds": (0.0, 100.0)})
    max_iter: int = field(default=200, metadata={"help": "probe: optimiser iterations", "bounds": (1, 5000)})
    lr: float = field(default=3e-5, metadata={"help": "finetune: AdamW peak learning rate", "bounds": (1e-7, 1.0)})
    epochs: int = field(default=3, metadata={"help": "finetune: passes over the train set", "bounds": (1, 50)})
    batch_size: int = field(default=16, metadata={"help": "finetune: texts per step", "bounds": (1, 256)})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            low, high = f.metadata["bounds"]
            value = getattr(self, f.name)
            integer = f.type == "int"  # annotations are strings here
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ValueError(f"task setting {f.name} must be {'an integer' if integer else 'a number'}, "
                                 f"got {value!r}")
            if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"task setting {f.name} must be within {low}..{high}, got {value}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown task settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- labeled data -------------------------------------------------------------------------------


class TaskDataError(ValueError):
    """A task's labeled data cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class LabeledSet:
    """Texts and their labels, one label (a string) per text."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"LabeledSet needs one label per text, got {len(self.texts)} texts "
                             f"and {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The distinct labels, sorted (as strings: "10" sorts before "2"); index i is class id i."""
        return tuple(sorted(set(self.labels)))

    def label_ids(self, label_names: Sequence[str]) -> list[int]:
        """Each example's label as its index in `label_names` (a label not in it is a TaskDataError)."""
        return label_ids(self.labels, label_names)


def label_ids(labels: Sequence[str], label_names: Sequence[str]) -> list[int]:
    """Each label as its index in `label_names` (a label not in it is a TaskDataError)."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise TaskDataError(f"label(s) {_quoted(unknown)} are not among the task's labels {_quoted(label_names)}")
    return [index[label] for label in labels]


def read_labeled_jsonl(raw: bytes, *, name: str, max_examples: int, max_chars: int) -> LabeledSet:
    """Examples of a UTF-8 JSONL file: each non-blank line is {"text": str, "label": str | int}.

    Texts are stripped and must be non-empty and at most `max_chars` characters; integer labels
    become strings. Every error names the file (`name`) and, where there is one, the line.
    """
    text = decode_utf8(raw, TaskDataError, f"{name}: ")
    texts: list[str] = []
    labels: list[str] = []
    for number, line in numbered_lines(text):
        if len(texts) == max_examples:
            raise TaskDataError(f"{name}: more than {max_examples} examples (line {number} is one too many); "
                                f"keep at most {max_examples}")
        record = _json_object(line, name, number)
        texts.append(_example_text(record, name, number, max_chars))
        labels.append(_example_label(record, name, number))
    if not texts:
        raise TaskDataError(f"{name}: holds no examples (empty, or only blank lines); "
                            'give one {"text": ..., "label": ...} object per line')
    return LabeledSet(tuple(texts), tuple(labels))


def check_task_sets(train: LabeledSet, eval: LabeledSet | None) -> None:
    """Refuse a train/eval pair a classifier cannot be trained or scored on (TaskDataError)."""
    counts = Counter(train.labels)
    if len(counts) < 2:
        raise TaskDataError(f"train holds {len(counts)} label(s) {_quoted(sorted(counts))}; "
                            "a task needs at least 2 labels")
    if len(counts) > MAX_LABELS:
        raise TaskDataError(f"train holds {len(counts)} distinct labels, more than the {MAX_LABELS} allowed (every "
                            "answer holds a score for each); merge the rare ones")
    rare = sorted(label for label, count in counts.items() if count < 2)
    if rare:
        raise TaskDataError(f"train has fewer than 2 examples of label(s) {_quoted(rare)}; "
                            "give every label at least 2 train examples, or drop it")
    if eval is None:
        return
    if len(eval) == 0:
        raise TaskDataError("eval holds no examples; give some, or none at all")
    unknown = sorted(set(eval.labels) - counts.keys())
    if unknown:
        raise TaskDataError(f"eval has label(s) {_quoted(unknown)} that train lacks; "
                            "a classifier can only predict the labels it was trained on")


def _json_object(line: str, name: str, number: int) -> dict:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise TaskDataError(f"{name}: line {number} repeats key(s) {_quoted(repeated)}")
        return dict(pairs)

    record = object_on_line(line, number, TaskDataError, f"{name}: ", '{"text": ..., "label": ...}', no_duplicates)
    unknown = sorted(record.keys() - set(FIELDS))
    if unknown:
        raise TaskDataError(f'{name}: line {number} has unknown key(s) {_quoted(unknown)}; '
                            'each line holds exactly "text" and "label"')
    missing = [key for key in FIELDS if key not in record]
    if missing:
        raise TaskDataError(f"{name}: line {number} lacks {_quoted(missing)}; "
                            'each line holds exactly "text" and "label"')
    return record


def _example_text(record: dict, name: str, number: int, max_chars: int) -> str:
    text = record["text"]
    if not isinstance(text, str):
        raise TaskDataError(f'{name}: line {number}: "text" must be a string, got {type(text).__name__}')
    text = text.strip()
    if not text:
        raise TaskDataError(f'{name}: line {number}: "text" is empty')
    if len(text) > max_chars:
        raise TaskDataError(f'{name}: line {number}: "text" has {len(text)} characters, more than the '
                            f"{max_chars} allowed; shorten it")
    problem = unicode_problem(text)  # the inference routes' rule: what a tokenizer cannot take is refused here
    if problem:
        raise TaskDataError(f'{name}: line {number}: "text" {problem}')
    return text


def _example_label(record: dict, name: str, number: int) -> str:
    label = record["label"]
    if isinstance(label, int) and not isinstance(label, bool):
        return str(label)
    if not isinstance(label, str):
        raise TaskDataError(f'{name}: line {number}: "label" must be a string or an integer, '
                            f"got {type(label).__name__}")
    if not label.strip():
        raise TaskDataError(f'{name}: line {number}: "label" is empty')
    problem = unicode_problem(label)  # labels are keys of every answer: they must encode as UTF-8 too
    if problem:
        raise TaskDataError(f'{name}: line {number}: "label" {problem}')
    if len(label.strip()) > MAX_LABEL_CHARS:
        raise TaskDataError(f'{name}: line {number}: "label" has {len(label.strip())} characters, more than the '
                            f"{MAX_LABEL_CHARS} allowed; shorten it")
    return label.strip()


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)
