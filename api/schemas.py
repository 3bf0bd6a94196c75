"""Request and response models of the REST API (v1).

Responses that show a record (a job, a version) are generated from its dataclass, so a field
added to the record appears in the API without a second definition.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, Field, create_model

from job_records import Job
from model_store.manifest import Manifest
from model_store.tasks import TaskDefinition, TaskModel


class CorpusAccepted(BaseModel):
    job_id: str
    corpus_id: str = Field(description="sha256 of the uploaded bytes")
    documents: int
    corpus_known: bool = Field(description="the store already held these exact bytes")
    duplicate_of_pending_job: bool = Field(description="an equal job (corpus, domain, settings) was already pending")


class JobProgress(BaseModel):
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    losses: dict[str, float] = {}
    tokens_per_s: float | None = None
    eta_s: float | None = None


def schema_of(record: type, name: str, overrides: dict[str, Any] | None = None) -> type[BaseModel]:
    """A pydantic response model with the fields of a dataclass (types from its hints, all present)."""
    hints = typing.get_type_hints(record)
    overrides = overrides or {}
    fields = {f.name: (overrides.get(f.name, hints[f.name]), ...) for f in dataclasses.fields(record)}
    return create_model(name, **fields)


JobOut = schema_of(Job, "JobOut", {"progress": JobProgress})


ModelOut = schema_of(Manifest, "ModelOut")


class ActivatedOut(ModelOut):
    fit_jobs: list[str] = Field(description="fit jobs queued for the end tasks that have no model on this version")


class CurrentModel(ModelOut):
    serving: str | None = Field(description="the version this API process answers with right now")
    mask_token: str | None


class TextsIn(BaseModel):
    texts: list[str] = Field(min_length=1, description="no domain id needed: any text")


class FillMaskIn(TextsIn):
    top_k: int = Field(5, ge=1, le=50)


class Candidate(BaseModel):
    token: str
    token_id: int
    score: float


class FillMaskOut(BaseModel):
    version: str
    results: list[list[list[Candidate]]] = Field(description="per text, per mask token, the top_k candidates")


class EmbeddingsOut(BaseModel):
    version: str
    dimensions: int
    embeddings: list[list[float]]


TaskModelOut = schema_of(TaskModel, "TaskModelOut")


class ServedTaskModel(BaseModel):
    kind: str
    fitted_on: str = Field(description="the backbone version the task model was fitted on")
    generation: str
    labels: list[str]
    stale: bool = Field(description="fitted on another backbone than the one serving (a finetune task "
                                    "answers from its own weights until it is re-tuned)")


class FitOut(BaseModel):
    job_id: str
    state: str = Field(description="queued, running, succeeded, failed, cancelled or rejected")
    version: str | None = Field(description="the backbone version it fits on (None until it starts)")
    error: str | None = None
    note: str | None = None


class TaskProblem(BaseModel):
    generation: str
    version: str | None
    problem: str
    at: str


class TaskOut(schema_of(TaskDefinition, "TaskDefinitionOut")):
    generation: str = Field(description="digest of what defines the task; its models carry it")
    history: list[TaskModelOut] = Field(description="its models, one per backbone version, oldest first, "
                                                    "with their eval scores")
    serving: ServedTaskModel | None = Field(description="the model answering now in this API process")
    damaged: str | None = Field(None, description="why its model cannot serve with the serving version (replace "
                                                  "or delete the task)")
    last_fit: FitOut | None = Field(None, description="the newest fit job of this registration: state and error")
    problems: list[TaskProblem] = Field(default_factory=list, description="what went wrong with this registration "
                                        "lately (a forgetting gate that could not score it, a fit that failed, ...)")


class TaskAccepted(BaseModel):
    job_id: str = Field(description="the job that fits the task on the active version")
    task: TaskOut


class PredictIn(TextsIn):
    tasks: list[str] | None = Field(None, min_length=1, max_length=64,
                                    description="POST /v1/predict: the tasks to answer (omitted: all served)")


class TaskAnswer(BaseModel):
    label: str
    scores: dict[str, float] = Field(description="a probability per label")


class TaskPredictOut(BaseModel):
    version: str = Field(description="the backbone version that answered")
    task: str
    task_model: ServedTaskModel
    results: list[TaskAnswer]


class PredictOut(BaseModel):
    version: str = Field(description="the backbone version that answered")
    results: list[dict[str, TaskAnswer]] = Field(description="per text: each task's answer")
    task_models: dict[str, ServedTaskModel]
