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

    @property
    def signature(self) -> tuple:
        return (tuple(sorted((n, t.record.version, t.record.generation) for n, t in self.tasks.items())),
                self.pending)


def load_task_set(tasks: TaskStore, version: str, previous: TaskSet | None = None) -> TaskSet | None:
    """The task models to serve with backbone `version`; None if they are those of `previous`."""
    older: list[str] | None = None  # read only for a finetune task not tuned on `version` (a scan of the store)
    found: dict[str, TaskModel] = {}
    pending = []
    definitions = {d.name: d for d in tasks.definitions()}
    for definition in definitions.values():
        record = tasks.model(version, definition.name, definition.generation)
        if record is None and definition.kind == "finetune":
            if older is None:
                older = [v for v in tasks.store.ids() if names.version_number(v) < names.version_number(version)]
            record = tasks.latest_model(definition, older)
        if record is None:
            pending.append(definition.name)
        else:
            found[definition.name] = record
    signature = (tuple(sorted((n, r.version, r.generation) for n, r in found.items())), tuple(pending))
    if previous is not None and previous.signature == signature:
        return None
    kept = previous.tasks if previous is not None else {}
    served = {}
    for name, record in found.items():
        same = kept.get(name)
        if same is not None and (same.record.version, same.record.generation) == (record.version, record.generation):
            served[name] = same
            continue
        folder = tasks.model_dir(record)
        if record.kind == "probe":
            served[name] = ServedTask(definitions[name], record, head=ProbeHead.load(folder).eval())
        else:
            with LOAD_LOCK:
                classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
            served[name] = ServedTask(definitions[name], record, classifier=classifier.eval())
    return TaskSet(served, tuple(pending))


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
