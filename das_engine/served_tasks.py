"""End-task models loaded and answering (torch): the service (serving.tasks) and the batch-prediction job
(pipeline.predict) both answer with these, so a line of a batch gets exactly the answer POST /v1/predict gives
the same text on the same version. Which models serve a version is model_store.served_tasks' to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForSequenceClassification

from .endtask import ProbeHead
from .loading import load_pretrained


class AnsweringTask(Protocol):
    """A loaded task model (model_store.served_tasks.ServedTask is one): a probe's head, or a finetune classifier."""

    @property
    def head(self) -> Any: ...
    @property
    def classifier(self) -> Any: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def max_length(self) -> int: ...


def load_task_model(folder: Path, kind: str) -> Any:
    """A task model of the store, ready to answer: a probe's head, or a finetune task's classifier."""
    if kind == "probe":
        return ProbeHead.load(folder).eval()
    return load_pretrained(AutoModelForSequenceClassification, folder, use_safetensors=True).eval()


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
def predict(tasks: Mapping[str, AnsweringTask], names_: list[str], features: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> list[dict[str, dict]]:
    """Per text: for each task, its label and a score per label. `features` (B, D) are the pooled,
    normalised features of the backbone pass; finetune tasks run their own model on the same ids."""
    answers: list[dict[str, dict]] = [{} for _ in range(features.shape[0])]
    for name in names_:
        task = tasks[name]
        if task.head is not None:
            probabilities = task.head(features).softmax(-1)
        else:
            ids, mask = _truncated(input_ids, attention_mask, task.max_length)
            probabilities = task.classifier(input_ids=ids, attention_mask=mask).logits.softmax(-1)
        labels = task.labels
        for row, (values, best) in enumerate(zip(probabilities.tolist(), probabilities.argmax(-1).tolist(),
                                                 strict=True)):
            answers[row][name] = {"label": labels[best],
                                  "scores": {label: round(v, 6) for label, v in zip(labels, values, strict=True)}}
    return answers
