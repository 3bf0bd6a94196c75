"""Registering an end task, and the fit jobs that give it a model on a version (torch-free: the API, `das task
add`, `das activate` and the workers share it).

The train and eval files are read and checked completely before anything is stored (their fit's total
work included); then the data goes into the store (content-addressed) and the definition is built, ready
for `TaskStore.put_definition`. `queue_missing_fits` queues a fit of every task that has no sound model on
a version that became active, so a client's retry always ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from das_engine.task_data import LabeledSet, TaskDataError, TaskSettings, check_task_sets, read_labeled_jsonl
from job_records import PENDING, FitRequest, Job, JobRegistry
from model_store.store import ModelStore
from model_store.tasks import TaskData, TaskDefinition, TaskKind, TaskStore, task_name

RECENT_JOBS = 10_000  # how far back the job records are searched for a task's fits


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


def check_fit_work(kind: TaskKind, settings: TaskSettings, train_examples: int, max_examples_seen: int) -> None:
    """Refuse a finetune whose total work (epochs x train examples) is over the limit, before anything is stored:
    jobs run one at a time, and one long fit would hold every adaptation back."""
    seen = settings.epochs * train_examples
    if kind == "finetune" and seen > max_examples_seen:
        raise TaskDataError(f"a finetune of {settings.epochs} epochs over {train_examples} train examples passes "
                            f"{seen} examples, more than the {max_examples_seen} allowed "
                            "(DAS_MAX_FIT_EXAMPLES_SEEN); lower epochs or the train set")


def fit_jobs(jobs: JobRegistry, task: str | None = None) -> list[Job]:
    """The fit jobs of one task (of every task when None), newest first."""
    return [j for j in jobs.list(limit=RECENT_JOBS) if j.kind == "fit" and task in (None, j.task)]


def queue_missing_fits(store: ModelStore, jobs: JobRegistry, version: str,
                       submit: Callable[[str], None]) -> list[Job]:
    """A fit job on `version` for every registered task whose current registration has no sound model there and
    no fit for it queued or running (one that will take the active version counts); returns the new jobs."""
    tasks = TaskStore(store)
    coming = {(j.task, j.generation) for j in jobs.list(limit=RECENT_JOBS)
              if j.kind == "fit" and j.state in PENDING and j.parent in (None, version)}
    created = []
    for definition in tasks.definitions():
        key = (definition.name, definition.generation)
        if key in coming or tasks.sound_model(version, *key):
            continue
        job = jobs.update(jobs.create(fit_request(definition)).id, parent=version)
        submit(job.id)
        created.append(job)
    return created
