"""The end-task models served with one backbone version: which (model_store.served_tasks), loaded and answering
(das_engine.served_tasks), where the batch-prediction worker uses them too (a worker may not import serving).
"""

from __future__ import annotations

from das_engine.served_tasks import load_task_model, predict
from model_store import served_tasks
from model_store.served_tasks import DAMAGED_FIX, ServedTask, TaskSet
from model_store.tasks import TaskStore

__all__ = ["DAMAGED_FIX", "ServedTask", "TaskSet", "load_task_set", "predict"]


def load_task_set(tasks: TaskStore, version: str, previous: TaskSet | None = None) -> TaskSet | None:
    """The task models to serve with backbone `version`; None if they are those of `previous`."""
    return served_tasks.load_task_set(tasks, version, previous, load_task_model)
