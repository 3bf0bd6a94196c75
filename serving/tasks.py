"""The end-task models served with one backbone version (torch lives here, not in api/).

A `TaskSet` belongs to one loaded backbone: probe tasks answer from heads fitted on exactly that
version; a finetune task answers from its newest model, which may be tuned on an older backbone
until it is re-tuned (it says so: `stale`). A set never changes; a new task model gives a new set
and a new served object (one reference flip), so a prediction never mixes versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from das_engine.endtask import ProbeHead
from das_engine.loading import LOAD_LOCK
from model_store import names
from model_store.store import StoreError
from model_store.tasks import TaskDefinition, TaskModel, TaskStore


@dataclass(frozen=True)
class ServedTask:
    definition: TaskDefinition
    record: TaskModel  # which model answers: its backbone version and generation
    head: ProbeHead | None = None  # probe
    classifier: Any = None  # finetune: an AutoModelForSequenceClassification

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


def load_task_set(tasks: TaskStore, version: str, previous: TaskSet | None = None) -> TaskSet | None:
    """The task models to serve with backbone `version`; None if they are those of `previous`.

    One task's damage stays with that task: a definition that cannot be read, or a model whose record or
    files are damaged, leaves the task in `damaged` with why; the backbone and every other task serve."""
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
            served[name] = _load_task(tasks, definitions[name], record)
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


def _load_task(tasks: TaskStore, definition: TaskDefinition, record: TaskModel) -> ServedTask:
    folder = tasks.model_dir(record)  # each file checked against its digest
    if record.kind == "probe":
        return ServedTask(definition, record, head=ProbeHead.load(folder).eval())
    with LOAD_LOCK:
        classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    return ServedTask(definition, record, classifier=classifier.eval())


def _truncated(input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows cut to `length` tokens as the tokenizer would have cut them when the task was tuned:
    a longer row keeps its first length-1 tokens and its closing special token."""
    if input_ids.shape[1] <= length:
        return input_ids, attention_mask
    lengths = attention_mask.sum(1)  # (B,)
    ids, mask = input_ids[:, :length].clone(), attention_mask[:, :length]
    long = lengths > length
    ids[long, length - 1] = input_ids[long, lengths[long] - 1]
    return ids, mask


@torch.inference_mode()
def predict(task_set: TaskSet, names_: list[str], features: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> list[dict[str, dict]]:
    """Per text: for each task, its label and a score per label. `features` (B, D) are the pooled,
    normalised features of the backbone pass; finetune tasks run their own model on the same ids."""
    answers: list[dict[str, dict]] = [{} for _ in range(features.shape[0])]
    for name in names_:
        task = task_set.tasks[name]
        if task.head is not None:
            probabilities = task.head(features).softmax(-1)
        else:
            ids, mask = _truncated(input_ids, attention_mask, task.definition.settings.get("max_length", 128))
            probabilities = task.classifier(input_ids=ids, attention_mask=mask).logits.softmax(-1)
        labels = task.record.labels
        for row, (values, best) in enumerate(zip(probabilities.tolist(), probabilities.argmax(-1).tolist(),
                                                 strict=True)):
            answers[row][name] = {"label": labels[best],
                                  "scores": {label: round(v, 6) for label, v in zip(labels, values, strict=True)}}
    return answers
