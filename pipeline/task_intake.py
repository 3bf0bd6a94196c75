"""Registering an end task (torch-free: the API, `das task add` and `das eval --served` share it).

The train and eval files are read and checked completely before anything is stored (their fit's total work
included); then the data goes into the store (content-addressed) and the definition is built, ready for
`TaskStore.put_definition`.
"""

from __future__ import annotations

from pathlib import Path

from das_formats.task_data import LabeledSet, TaskDataError, TaskSettings, check_task_sets, read_labeled_jsonl
from das_settings import Settings
from model_store.store import ModelStore
from model_store.tasks import TaskData, TaskDefinition, TaskKind, TaskStore, task_name


def check_task_files(kind: TaskKind, settings: TaskSettings, train: Path, eval: Path | None, limits: Settings,
                     names: tuple[str, str] = ("train", "eval")) -> tuple[LabeledSet, LabeledSet | None]:
    """Both sets, each read and checked, then checked together, and the fit's total work (TaskDataError says what
    to fix): every check POST /v1/tasks and `das task add` make before anything is stored. `names`: the files'
    names as the user gave them (the errors name them)."""
    train_set = read_labeled_jsonl(Path(train).read_bytes(), name=names[0], max_examples=limits.max_task_examples,
                                   max_chars=limits.max_task_text_chars)
    eval_set = None
    if eval is not None:
        eval_set = read_labeled_jsonl(Path(eval).read_bytes(), name=names[1], max_examples=limits.max_task_examples,
                                      max_chars=limits.max_task_text_chars)
    check_task_sets(train_set, eval_set)
    _check_fit_work(kind, settings, len(train_set), limits.max_fit_examples_seen)
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


def _check_fit_work(kind: TaskKind, settings: TaskSettings, train_examples: int, max_examples_seen: int) -> None:
    """Refuse a finetune whose total work (epochs x train examples) is over the limit, before anything is stored:
    jobs run one at a time, and one long fit would hold every adaptation back."""
    seen = settings.epochs * train_examples
    if kind == "finetune" and seen > max_examples_seen:
        raise TaskDataError(f"a finetune of {settings.epochs} epochs over {train_examples} train examples passes "
                            f"{seen} examples, more than the {max_examples_seen} allowed "
                            "(DAS_MAX_FIT_EXAMPLES_SEEN); lower epochs or the train set")
