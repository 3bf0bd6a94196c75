"""What the service answers, as plain dataclasses.

Each is built from the JSON by `from_json`: fields the server sends that a class does not name are kept in `raw`
(the whole answer), so a newer server never breaks an older client.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "rejected")


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """An instance of the dataclass `cls` from a JSON object: nested dataclasses, lists and dicts of them are
    built too; unknown keys are left out (kept in `raw`)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)
              if f.name != "raw" and f.name in data}
    try:
        return cls(**values, raw=data)
    except TypeError as err:  # a required field missing: the server is not the one this client speaks to
        raise ValueError(f"the server's answer is not a {cls.__name__}: {err}") from None


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in args if dataclasses.is_dataclass(a)]
        return from_json(classes[0], value) if classes and isinstance(value, dict) else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_json(hint, value)
    if origin is list and args and isinstance(value, list):
        return [_convert(args[0], v) for v in value]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class JobProgress:
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float | None = None
    eta_s: float | None = None
    detail: str = ""  # what the phase works on now (the task a gate scores), where it says more
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Job:
    """An adaptation (`kind` adapt: a corpus -> a new version) or an end-task fit (`kind` fit)."""

    id: str
    state: str  # queued, running, succeeded, failed, cancelled, rejected
    kind: str = "adapt"
    seq: int | None = None
    created: float | str | None = None
    started: float | str | None = None
    finished: float | str | None = None
    progress: JobProgress = field(default_factory=JobProgress)
    phases_s: dict[str, float] = field(default_factory=dict)  # seconds in each phase so far, queued first
    settings: dict[str, Any] = field(default_factory=dict)
    domain: str | None = None
    corpus_id: str | None = None
    corpus_documents: int | None = None
    corpus_filename: str | None = None
    task: str | None = None
    generation: str | None = None
    examples: int | None = None
    parent: str | None = None  # the version it builds on (adapt) or fits on (fit)
    version: str | None = None  # the version it published (adapt)
    error: str | None = None
    note: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    waiting_for: str | None = None  # a queued job (GET /v1/jobs/{id}): the job before it, or a worker
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """It ended: succeeded, failed, cancelled or rejected."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


class JobPage(NamedTuple):
    """A page of `GET /v1/jobs` (`Client.job_page`): its jobs, newest first, and the next page's cursor (None: the
    last page)."""

    jobs: list[Job]
    next_cursor: str | None


# ------------------------------------------------------------------------------------------------ versions
@dataclass(frozen=True)
class CorpusInfo:
    sha256: str
    size: int
    documents: int
    filename: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Version:
    """A model version's manifest: lineage, status, corpus, settings, metrics and evaluation."""

    id: str
    parent: str | None = None
    created: str = ""
    status: str = ""  # candidate, active, rejected, archived
    domain: str | None = None
    corpus: CorpusInfo | None = None
    base_model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    package_version: str = ""
    request_id: str | None = None
    aliases: list[str] = field(default_factory=list)  # the aliases that name it (production: the active one)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CurrentVersion(Version):
    """The active version, and the one the answering API process serves right now (they differ during a swap)."""

    serving: str | None = None
    mask_token: str | None = None
    loaded: list[str] = field(default_factory=list)  # other versions it keeps loaded for requests that name one


@dataclass(frozen=True)
class Activation(Version):
    """The version just made active, and the fit jobs queued for the end tasks that had no model on it."""

    fit_jobs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AliasChange:
    """An alias set: the version it names now and the one before (None: a new alias); `production` also activates,
    and `fit_jobs` are the fits that activation queued."""

    name: str
    version: str
    previous: str | None = None
    fit_jobs: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ------------------------------------------------------------------------------------------------ end tasks
@dataclass(frozen=True)
class TaskData:
    sha256: str
    examples: int
    filename: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class TaskModelInfo:
    """One model of a task, fitted on backbone `version`, with its eval `scores` (macro_f1, accuracy, n)."""

    task: str
    version: str
    generation: str = ""
    kind: str = ""
    labels: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0
    created: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ServedTaskModel:
    kind: str
    fitted_on: str  # the backbone version it was fitted on
    generation: str = ""
    labels: list[str] = field(default_factory=list)
    stale: bool = False  # fitted on another backbone than the one serving
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class FitInfo:
    job_id: str
    state: str
    version: str | None = None
    error: str | None = None
    note: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class TaskInfo:
    """A registered end task: labels, kind, settings, its models' scores per version (`history`), what serves it."""

    name: str
    kind: str = "probe"
    labels: list[str] = field(default_factory=list)
    train: TaskData | None = None
    eval: TaskData | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    job_id: str | None = None
    generation: str = ""
    history: list[TaskModelInfo] = field(default_factory=list)
    serving: ServedTaskModel | None = None
    damaged: str | None = None
    last_fit: FitInfo | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ------------------------------------------------------------------------------------------------ inference
@dataclass(frozen=True)
class TaskAnswer:
    label: str
    scores: dict[str, float] = field(default_factory=dict)  # a probability per label
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Prediction:
    """One task's answers, one per text (POST /v1/tasks/{name}/predict)."""

    version: str  # the backbone version that answered
    task: str
    task_model: ServedTaskModel
    results: list[TaskAnswer]
    truncated: list[bool] = field(default_factory=list)  # per text: it was cut to the model's maximum sequence
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Predictions:
    """Several tasks from one backbone pass (POST /v1/predict): per text, each task's answer."""

    version: str
    results: list[dict[str, TaskAnswer]]
    task_models: dict[str, ServedTaskModel]
    truncated: list[bool] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Candidate:
    token: str
    token_id: int
    score: float
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class FillMask:
    version: str
    results: list[list[list[Candidate]]]  # per text, per mask token, the top_k candidates
    truncated: list[bool] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Embeddings:
    version: str
    dimensions: int
    embeddings: list[list[float]]  # mean-pooled, L2-normalised, one per text
    truncated: list[bool] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ------------------------------------------------------------------------------------------------ generation
@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # as the model read the prompt (specials and a chat's template included)
    completion_tokens: int  # generated, an end-of-sequence token included
    total_tokens: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class Completion(NamedTuple):
    """Generated text (POST /v1/completions or /v1/chat/completions, the first choice): `finish_reason` "stop" (an
    end-of-sequence token or a stop string, which is left out) or "length" (max_tokens, the context, the server's
    time limit). `raw` holds the server's whole answer (OpenAI's shape, read by the client: not one of its objects)."""

    version: str
    text: str
    finish_reason: str
    usage: Usage
    raw: dict[str, Any]
