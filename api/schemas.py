"""Request and response models of the REST API (v1).

Responses that show a record (a job, a version) are generated from its dataclass, so a field
added to the record appears in the API without a second definition.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from das_formats.task_data import MAX_LABELS
from das_formats.texts import FILL_MASK_MAX_TOP_K
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
    phase: str | None = Field(None, description="an adaptation: prepare, general-importance, train, "
                              "domain-importance, merge, saving, gate, publish, activate (the importance passes and "
                              "merge only where its settings use them); a fit: load, features, fit, publish; a batch "
                              "prediction: predict")
    step: int | None = Field(None, description="units of the phase done: steps, batches, texts, tasks, lines")
    total: int | None = None
    losses: dict[str, float] = {}
    tokens_per_s: float | None = None
    eta_s: float | None = None
    detail: str = Field("", description="what the phase works on now, where it says more (the task a gate scores)")


def schema_of(record: type, name: str, overrides: dict[str, Any] | None = None) -> type[BaseModel]:
    """A pydantic response model with the fields of a dataclass (types from its hints, all present)."""
    hints = typing.get_type_hints(record)
    overrides = overrides or {}
    fields = {f.name: (overrides.get(f.name, hints[f.name]), ...) for f in dataclasses.fields(record)}
    return create_model(name, **fields)


def iso_utc(value: float | str | None) -> str | None:
    """An epoch time (as the job records keep it) as ISO-8601 UTC with milliseconds; a string or None as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")
    return value


IsoTime = Annotated[str, BeforeValidator(iso_utc), Field(description="ISO-8601, UTC")]
IsoTimeOrNone = Annotated[str | None, BeforeValidator(iso_utc), Field(description="ISO-8601, UTC; null: not yet")]
class JobOut(schema_of(Job, "JobRecord", {"progress": JobProgress, "created": IsoTime, "started": IsoTimeOrNone,
                                          "finished": IsoTimeOrNone, "dispatched": IsoTimeOrNone})):
    waiting_for: str | None = Field(None, description="a queued job, on GET /v1/jobs/{id}: what it waits for (the job "
                                    "that runs before it, with its phase, and how many more are ahead; or a worker)")


class ModelOut(schema_of(Manifest, "ManifestOut")):
    aliases: list[str] = Field(default_factory=list, description="the aliases that name this version "
                               "(production: it is the active one); GET /v1/aliases lists them all")


class ActivatedOut(ModelOut):
    fit_jobs: list[str] = Field(description="fit jobs queued for the end tasks that have no model on this version")


class CurrentModel(ModelOut):
    serving: str | None = Field(description="the version this API process answers with right now")
    kind: str | None = Field(None, description="what the version it answers with is: masked (fill-mask) or causal "
                             "(/v1/completions, /v1/chat/completions)")
    mask_token: str | None
    loaded: list[str] = Field(default_factory=list, description="the other versions this API process keeps loaded "
                              "for requests that name a version (DAS_MAX_LOADED_VERSIONS), least recently used first")


# the most texts any request may list (DAS_MAX_TEXTS is at most this), and the most tasks
MAX_TEXTS = 4096
MAX_TASKS = 64


def _at_most(limit: int):
    """A list longer than `limit` is refused before its items are looked at: pydantic checks a list's length only
    after validating every item, so 100,000 wrong items would cost the event loop a second of errors."""
    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"List should have at most {limit} items, not {len(value)}")
        return value
    return BeforeValidator(check)


Texts = Annotated[list[str], _at_most(MAX_TEXTS)]


class TextsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown key is a 422 naming the nearest field (api.strict)

    texts: Texts = Field(min_length=1, max_length=MAX_TEXTS, description="no domain id needed: any text (at most "
                         "DAS_MAX_TEXTS)")
    truncate: bool = Field(False, description="cut a text longer than the model's maximum sequence to it (the "
                           "answer's `truncated` says which were cut); false: such a text is a 422, unless the "
                           "service runs with DAS_AUTO_TRUNCATE=true")
    version: str | None = Field(None, description="the version to answer with: a version id or an alias (the same "
                                "as ?version=); omitted: the active one")


class FillMaskIn(TextsIn):
    top_k: int = Field(5, ge=1, le=FILL_MASK_MAX_TOP_K)


class Candidate(BaseModel):
    token: str
    token_id: int
    score: float


class FillMaskOut(BaseModel):
    version: str
    results: list[list[list[Candidate]]] = Field(description="per text, per mask token, the top_k candidates")
    truncated: list[bool] = Field(description="per text: it was cut to the model's maximum sequence")


class EmbeddingsOut(BaseModel):
    version: str
    dimensions: int
    embeddings: list[list[float]]
    truncated: list[bool] = Field(description="per text: it was cut to the model's maximum sequence")


class EmbeddingsIn(TextsIn):
    """This API's {"texts": [...]} or OpenAI's {"input": ..., "model": ...}: exactly one of texts and input."""

    texts: Texts | None = Field(None, min_length=1, max_length=MAX_TEXTS, description="no domain id needed: any text")
    input: str | Texts | None = Field(
        None, description="OpenAI's form: one text or a list of texts; the answer then has OpenAI's shape (object, "
        "data, model, usage)")
    model: str | None = Field(None, description="OpenAI's name for `version`: the version to answer with, an id "
                              "or an alias (omitted: the active one)")
    encoding_format: Literal["float", "base64"] | None = Field(None, description="OpenAI's: a list of floats "
                                                              "(float, the default) or base64 of little-endian "
                                                              "float32 (what OpenAI's clients ask for by default)")
    dimensions: int | None = Field(None, ge=1, description="OpenAI's: the length of the vectors wanted; accepted when "
                                   "it is the model's own (a 422 says which that is), as vectors are never cut")
    user: str | None = Field(None, max_length=256, description="OpenAI's end-user id: accepted and not used")

    @model_validator(mode="after")
    def _texts_or_input(self) -> EmbeddingsIn:
        if (self.texts is None) == (self.input is None):
            raise ValueError("send exactly one of `texts` (this API's form) or `input` (OpenAI's form)")
        if self.input == []:
            raise ValueError("`input` holds no text")
        return self

    @property
    def openai(self) -> bool:
        return self.input is not None

    @property
    def items(self) -> list[str]:
        """The texts, in either form."""
        if self.texts is not None:
            return self.texts
        return [self.input] if isinstance(self.input, str) else list(self.input or [])


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens the model read, all texts, specials included")
    total_tokens: int


class OpenAIEmbeddingsOut(BaseModel):
    """The answer to a request in OpenAI's form (`input`)."""

    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str = Field(description="the version that answered")
    usage: OpenAIUsage
    version: str
    truncated: list[bool] = Field(description="per text: it was cut to the model's maximum sequence")


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
    tasks: Annotated[list[str], _at_most(MAX_TASKS)] | None = Field(None, min_length=1, max_length=MAX_TASKS,
                                    description="POST /v1/predict: the tasks to answer (omitted: all served)")
    top_k: int | None = Field(None, ge=1, le=MAX_LABELS, description="score only each task's top_k labels (by "
                              "probability; the label answered is always among them); omitted: every label")


class TaskAnswer(BaseModel):
    label: str
    scores: dict[str, float] = Field(description="a probability per label")


class TaskPredictOut(BaseModel):
    version: str = Field(description="the backbone version that answered")
    task: str
    task_model: ServedTaskModel
    results: list[TaskAnswer]
    truncated: list[bool] = Field(description="per text: it was cut to the model's maximum sequence")


class PredictOut(BaseModel):
    version: str = Field(description="the backbone version that answered")
    results: list[dict[str, TaskAnswer]] = Field(description="per text: each task's answer")
    task_models: dict[str, ServedTaskModel]
    truncated: list[bool] = Field(description="per text: it was cut to the model's maximum sequence")


# ------------------------------------------------------------------ errors, as the OpenAPI schema declares them
class ErrorOut(BaseModel):
    """Every error but a request FastAPI could not parse: what went wrong and what to do."""

    detail: str = Field(description="what went wrong, and how to fix it")


class InvalidOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="what to fix: a sentence, or FastAPI's list of "
                                                           "validation errors (loc, msg, type) for a request it "
                                                           "could not parse")


ERRORS: dict[int, str] = {
    401: "a bearer token is needed, or the one sent is wrong (only when DAS_INFERENCE_TOKEN or "
         "DAS_MANAGEMENT_TOKEN is set; the routes that change something need the management token)",
    404: "no such job, version, task or output",
    409: "what is asked conflicts with the resource's state (ended, damaged, not fitted yet, ...); detail says why",
    410: "a batch prediction's answers were removed after DAS_BATCH_RETENTION_S",
    413: "the body or the uploaded file exceeds its limit",
    422: "the request is invalid; detail says what to fix",
    429: "too many batch predictions are queued or running (of this token, or in all); retry after Retry-After "
         "seconds",
    503: "a backing service (Redis, the store's lock, the model, the inference queue) is unavailable; "
         "retry after Retry-After seconds",
    507: "the server's disk is full; nothing of the request was kept",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router: each error code it can answer, with its schema and meaning."""
    return {code: {"model": InvalidOut if code == 422 else ErrorOut, "description": ERRORS[code]} for code in codes}


class BatchAccepted(BaseModel):
    job_id: str = Field(description="watch it at GET /v1/jobs/{job_id}; its answers at GET /v1/jobs/{job_id}/output")
    lines: int = Field(description="lines to answer (blank lines are skipped)")
    kind: str = Field(description="what each line gets: predict (end-task labels), embed or fill_mask")
    tasks: list[str] = Field(description="kind predict: the end tasks each line is answered by")
    input_sha256: str = Field(description="sha256 of the uploaded file, as the store keeps it")
    truncate: bool = Field(description="a line longer than the model's maximum sequence is cut (its answer says "
                           "`truncated`); false: it gets an error (the form's truncate, or DAS_AUTO_TRUNCATE)")
