"""Registering an end task (torch-free: the API and `das task add` share it).

The train and eval files are read and checked completely before anything is stored; then the
data goes into the store (content-addressed) and the definition is built, ready for
`TaskStore.put_definition`.
"""

from __future__ import annotations

from pathlib import Path

from das_engine.task_data import LabeledSet, TaskSettings, check_task_sets, read_labeled_jsonl
from job_records import FitRequest
from model_store.store import ModelStore
from model_store.tasks import TaskData, TaskDefinition, TaskKind, TaskStore, task_name


def read_task_sets(train: Path, eval: Path | None, *, max_examples: int, max_chars: int,
                   names: tuple[str, str] = ("train", "eval")) -> tuple[LabeledSet, LabeledSet | None]:
    """Both sets, each read and checked, then checked together (TaskDataError says what to fix)."""
    train_set = read_labeled_jsonl(Path(train).read_bytes(), name=names[0], max_examples=max_examples,
                                   max_chars=max_chars)
    eval_set = None
    if eval is not None:
        eval_set = read_labeled_jsonl(Path(eval).read_bytes(), name=names[1], max_examples=max_examples,
                                      max_chars=max_chars)
    check_task_sets(train_set, eval_set)
    return train_set, eval_set


def store_task_data(store: ModelStore, name: str, kind: TaskKind, settings: TaskSettings,
                    train: tuple[Path, LabeledSet, str], eval: tuple[Path, LabeledSet, str] | None) -> TaskDefinition:
    """Put the checked sets into the store; the definition they make (not registered yet).

    `train` and `eval` are (file, its set, the name the user gave the file)."""
    task_name(name)

    tasks = TaskStore(store)

    def put(path: Path, data: LabeledSet, filename: str) -> TaskData:
        return tasks.put_task_data(path, len(data), filename)

    return TaskDefinition(name=name, kind=kind, labels=list(train[1].label_names), settings=settings.to_dict(),
                          train=put(*train), eval=put(*eval) if eval is not None else None)


def fit_request(definition: TaskDefinition) -> FitRequest:
    """The job that fits this registration of a task (on the version the job starts on)."""
    return FitRequest(task=definition.name, generation=definition.generation, data_sha256=definition.train.sha256,
                      examples=definition.train.examples, data_filename=definition.train.filename)
