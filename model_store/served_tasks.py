"""Which end-task model serves each registered task with a backbone version: the set of them, loaded.

Torch-free: each model is loaded by a function passed in (das_engine.served_tasks.load_task_model), so the
service (serving.tasks) and the batch-prediction worker (pipeline.predict) load a version's task models
the same way; das_engine.served_tasks.predict answers with them.

A `TaskSet` belongs to one loaded backbone: probe tasks answer from heads fitted on exactly that
version; a finetune task answers from its newest model, which may be tuned on an older backbone
until it is re-tuned (it says so: `stale`). A set never changes; a new task model gives a new set
and a new served object (one reference flip), so a prediction never mixes versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from das_formats.task_data import TaskSettings

from . import names
from .store import StoreError
from .tasks import TaskDefinition, TaskModel, TaskStore


@dataclass(frozen=True)
class ServedTask:
    definition: TaskDefinition
    record: TaskModel  # which model answers: its backbone version and generation
    head: Any = None  # probe: a das_engine.endtask.ProbeHead
    classifier: Any = None  # finetune: an AutoModelForSequenceClassification

    @property
    def labels(self) -> list[str]:
        return self.record.labels

    @property
    def max_length(self) -> int:
        """The token length a finetune task was tuned at (what das_engine.served_tasks.predict cuts its input to)."""
        return self.definition.settings.get("max_length", TaskSettings.max_length)  # a definition from before it

    def describe(self, backbone: str) -> dict[str, Any]:
        return {"kind": self.record.kind, "fitted_on": self.record.version, "generation": self.record.generation,
                "labels": self.record.labels, "stale": self.record.version != backbone}


@dataclass(frozen=True)
class TaskSet:
    tasks: dict[str, ServedTask] = field(default_factory=dict)
    pending: tuple[str, ...] = ()  # registered, with no model for this backbone yet
    damaged: dict[str, str] = field(default_factory=dict)  # registered, but its definition or model is unusable: why
    signature: tuple = ()  # what was found in the store: the same signature, the same set

    def problem(self, name: str) -> str | None:
        """Why a registered task does not answer with this backbone (None when it does, or is not registered)."""
        if name in self.damaged:
            return self.damaged[name]
        if name in self.pending:
            return "pending"
        return None


DAMAGED_FIX = "replace it (register it again with replace=true, which fits it anew) or delete it"


def load_task_set(tasks: TaskStore, version: str, previous: TaskSet | None,
                  load_model: Callable[[Path, str], Any]) -> TaskSet | None:
    """The task models to serve with backbone `version`; None if they are those of `previous`.

    One task's damage stays with that task: a definition that cannot be read, or a model whose record or
    files are damaged, leaves the task in `damaged` with why; the backbone and every other task serve.
    `load_model(folder, kind)` loads one task model (das_engine.served_tasks.load_task_model)."""
    definitions, found, pending, damaged = _find_models(tasks, version)
    signature = (tuple(sorted((n, r.version, r.generation, r.created) for n, r in found.items())), tuple(pending),
                 tuple(sorted(damaged.items())))
    if previous is not None and previous.signature == signature:
        return None
    kept = previous.tasks if previous is not None else {}
    served = {}
    for name, record in found.items():
        same = kept.get(name)
        if same is not None and same.record == record:
            served[name] = same
            continue
        try:
            served[name] = _load_task(tasks, definitions[name], record, load_model)
        except (StoreError, ValueError, KeyError, OSError) as err:
            damaged[name] = f"damaged: its model on {record.version} cannot be loaded ({err}); {DAMAGED_FIX}"
    return TaskSet(served, tuple(pending), damaged, signature)


def _find_models(tasks: TaskStore, version: str) -> tuple[dict[str, TaskDefinition], dict[str, TaskModel], list[str],
                                                         dict[str, str]]:
    """The registered tasks (read once) and, for each, the model record to serve with `version`, or pending, or
    why it is damaged."""
    older: list[str] | None = None  # read only for a finetune task not tuned on `version` (a scan of the store)
    found: dict[str, TaskModel] = {}
    pending: list[str] = []
    registered, unreadable = tasks.scan()
    damaged = {name: f"damaged: {why}" for name, why in unreadable.items()}
    for definition in registered:
        try:
            record = tasks.model(version, definition.name, definition.generation)
            if record is None and definition.kind == "finetune":
                if older is None:
                    older = [v for v in tasks.store.ids() if names.version_number(v) < names.version_number(version)]
                record = tasks.latest_model(definition, older)
        except StoreError as err:
            damaged[definition.name] = f"damaged: {err}; {DAMAGED_FIX}"
            continue
        if record is None:
            pending.append(definition.name)
        else:
            found[definition.name] = record
    return {d.name: d for d in registered}, found, pending, damaged


def _load_task(tasks: TaskStore, definition: TaskDefinition, record: TaskModel,
               load_model: Callable[[Path, str], Any]) -> ServedTask:
    model = load_model(tasks.model_dir(record), record.kind)  # each file checked against its digest
    if record.kind == "probe":
        return ServedTask(definition, record, head=model)
    return ServedTask(definition, record, classifier=model)
