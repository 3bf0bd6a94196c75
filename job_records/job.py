"""A job record: what was asked, where it stands, and the states it moves through.

A job's record is the truth about it (Celery's guidance: a task killed by the OOM killer leaves
no trace in the broker). Jobs are numbered in the order they were accepted (`seq`); only the
earliest pending job may run, and only by the worker that holds its lease. `kind` names what a
worker does with it, and each kind has fields of its own (None for the other kinds):
`adapt` (a stored domain corpus -> a new version: `domain`, `corpus_id`, ...), `fit` (an end-task
model on a version: `task`, `generation`, `data_sha256`, ...) or `predict` (a stored JSONL answered line by line
with a version: `input_sha256`, `answer_kind`, `tasks`, ... and then `output_sha256`). A request for one is an
`AdaptRequest`, a `FitRequest` or a `PredictRequest`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["queued", "running", "succeeded", "failed", "cancelled", "rejected"]
STATES: tuple[State, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "rejected")
PENDING: tuple[State, ...] = ("queued", "running")
TERMINAL: tuple[State, ...] = ("succeeded", "failed", "cancelled", "rejected")
JobKind = Literal["adapt", "fit", "predict"]
KINDS: tuple[JobKind, ...] = ("adapt", "fit", "predict")
AnswerKind = Literal["predict", "embed", "fill_mask"]  # what a predict job answers for each line
ANSWER_KINDS: tuple[AnswerKind, ...] = ("predict", "embed", "fill_mask")


@dataclass(frozen=True)
class AdaptRequest:
    """Adapt the active version to a corpus of the store (its sha256), with DASConfig settings (and `force`)."""

    domain: str
    corpus_id: str
    corpus_documents: int
    settings: dict[str, Any]
    corpus_filename: str = ""
    request_id: str | None = None  # the X-Request-ID of the HTTP request that asked for it (None: not asked by one)
    kind: JobKind = "adapt"


@dataclass(frozen=True)
class FitRequest:
    """Fit one registration (`generation`) of an end task on a version, from its train data (sha256)."""

    task: str
    generation: str
    data_sha256: str
    examples: int
    data_filename: str = ""
    request_id: str | None = None
    kind: JobKind = "fit"

    @property
    def settings(self) -> dict[str, Any]:
        return {}  # a fit's settings are its task's (TaskDefinition.settings)


@dataclass(frozen=True)
class PredictRequest:
    """Answer every line of a stored JSONL file (its sha256) with the version active when the job starts:
    the end tasks' labels (`answer_kind` predict, with `tasks`), embeddings (embed) or fill-mask (fill_mask, top_k)."""

    input_sha256: str
    lines: int
    answer_kind: AnswerKind = "predict"
    tasks: tuple[str, ...] = ()
    top_k: int = 5
    input_filename: str = ""
    truncate: bool = False  # cut a text over the model's maximum sequence (False: that line gets an error)
    submitted_by: str | None = None  # the token's role that queued it ("inference", "management"; None: auth off)
    request_id: str | None = None
    kind: JobKind = "predict"

    @property
    def settings(self) -> dict[str, Any]:
        return {}  # what it answers is in its own fields


JobRequest = AdaptRequest | FitRequest | PredictRequest


@dataclass
class Job:
    id: str
    seq: int
    state: State
    kind: JobKind
    created: float
    settings: dict[str, Any]
    # kind "adapt": the corpus a version is adapted on
    domain: str | None = None
    corpus_id: str | None = None  # its sha256 in the store
    corpus_documents: int | None = None
    corpus_filename: str | None = None
    # kind "fit": the task registration fitted, and its train data
    task: str | None = None
    generation: str | None = None
    data_sha256: str | None = None
    examples: int | None = None
    data_filename: str | None = None
    # kind "predict": the stored JSONL it answers line by line, how, and the stored JSONL of the answers
    input_sha256: str | None = None
    lines: int | None = None
    answer_kind: AnswerKind | None = None
    tasks: list[str] | None = None
    top_k: int | None = None
    input_filename: str | None = None
    truncate: bool | None = None  # None: another kind, or a predict record from before the field (those cut texts)
    output_sha256: str | None = None  # set once every line is answered
    submitted_by: str | None = None  # who queued a batch prediction: "inference" or "management" (None: auth off)
    # every kind: how it runs
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    phases_s: dict[str, float] = field(default_factory=dict)  # seconds in each phase so far, queued included
    # the version the job builds on (adapt), fits on (fit) or answers with (predict), fixed when it first starts
    parent: str | None = None
    version: str | None = None
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    dispatched: float | None = None  # when it was last handed to the queue (redelivery looks at it)
    note: str | None = None  # how it ended, when that needs saying (say, published as a candidate)
    # the X-Request-ID of the HTTP request that created it (an upload, a registration, an activation; None: made by
    # no request, or recorded before the field); every log line of the job carries it. (A manifest's `request_id`
    # is another thing: the id of the job that published the version.)
    request_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**_current_fields(json.loads(text)))


def _current_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A record as written by any release: fit jobs once kept their task in `domain`, its train data in
    `corpus_id` and its generation in `settings`."""
    data.setdefault("kind", "adapt")
    if data["kind"] == "fit" and "task" not in data:
        settings = dict(data.get("settings") or {})
        data.update(task=data.pop("domain"), data_sha256=data.pop("corpus_id"),
                    examples=data.pop("corpus_documents"), data_filename=data.pop("corpus_filename", "") or "",
                    generation=settings.pop("generation", None), settings={})
    return data


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing keeps (None: any): a state, a kind, an adapt job's domain, a fit job's task."""

    state: State | None = None
    kind: JobKind | None = None
    domain: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; allowed: {', '.join(STATES)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")

    @property
    def empty(self) -> bool:
        return self.state is self.kind is self.domain is self.task is None

    def matches(self, job: Job) -> bool:
        return ((self.state is None or job.state == self.state) and (self.kind is None or job.kind == self.kind)
                and (self.domain is None or (job.kind == "adapt" and job.domain == self.domain))
                and (self.task is None or job.task == self.task))


class JobRegistry(Protocol):
    def create(self, request: JobRequest) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def find_prefix(self, prefix: str, limit: int = 10) -> list[str]: ...  # ids that start with it, sorted (<= limit)
    def list(self, limit: int = 100, *, where: JobFilter | None = None, before_seq: int | None = None
             ) -> list[Job]: ...  # newest first (by seq); only those `where` keeps, and older than `before_seq`
    def update(self, job_id: str, **fields: Any) -> Job: ...
    def earliest_pending(self) -> Job | None: ...  # the next to run: adaptations and fits before batch predictions
    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool: ...
    def release(self, job_id: str, owner: str) -> None: ...
    def lease_alive(self, job_id: str) -> bool: ...
    def ping(self) -> None: ...  # raises if the records cannot be reached


MIN_JOB_PREFIX = 6  # the shortest prefix that names a job (every list prints 8 characters)
PREFIX_CANDIDATES = 5  # the ids an ambiguous prefix's error names
_HEX = frozenset("0123456789abcdef")


class JobIdError(ValueError):
    """A job id that cannot name a job: too short a prefix, or not hexadecimal."""


class AmbiguousJobId(LookupError):
    """A prefix that more than one job's id starts with; `candidates` are some of them."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:PREFIX_CANDIDATES]) + (", ..." if len(candidates) > PREFIX_CANDIDATES else "")
        super().__init__(f"job id prefix {prefix!r} names more than one job ({shown}); give more characters")
        self.prefix = prefix
        self.candidates = candidates


def resolve_job(jobs: JobRegistry, given: str) -> Job | None:
    """The job `given` names: its whole id, or a unique prefix of at least MIN_JOB_PREFIX hex characters (any case);
    None when no job has it. Raises JobIdError for a shorter or non-hex prefix, AmbiguousJobId for a shared one."""
    job = jobs.get(given)
    if job is not None:
        return job
    prefix = given.lower()
    if len(prefix) < MIN_JOB_PREFIX or not set(prefix) <= _HEX:
        raise JobIdError(f"job id {given[:100]!r}: give the whole id or at least its first {MIN_JOB_PREFIX} "
                         "characters (hexadecimal, 0-9 and a-f), as every job list prints them")
    found = jobs.find_prefix(prefix, limit=PREFIX_CANDIDATES + 1)
    if len(found) > 1:
        raise AmbiguousJobId(prefix, found)
    return jobs.get(found[0]) if found else None


BATCH_LANE = 2**40  # added to a batch prediction's place in the pending order: every other job runs first


def pending_rank(job: Job) -> int:
    """Where a pending job stands in line: by acceptance, each batch prediction behind every adaptation and fit."""
    return job.seq + (BATCH_LANE if job.kind == "predict" else 0)


def waiting_for(job: Job, pending: list[Job]) -> str | None:
    """What a queued job waits for, in words: the job that runs before it (with its phase) and how many more are
    ahead, or, with none ahead, its own `waiting:` error or a worker to take it. None for a job that is not queued.
    `pending`: the queued and running jobs (any order)."""
    if job.state != "queued":
        return None
    ahead = sorted((j for j in pending if j.id != job.id and pending_rank(j) < pending_rank(job)), key=pending_rank)
    if not ahead:
        if job.error and job.error.startswith("waiting:"):
            return job.error.removeprefix("waiting:").strip()
        return "a worker to take it (none has yet)"
    first = next((j for j in ahead if j.state == "running"), ahead[0])
    subject = {"adapt": first.domain, "fit": first.task, "predict": f"{first.lines} lines"}.get(first.kind)
    p = first.progress
    where = f", {p['phase']} {p.get('step')}/{p.get('total')}" if first.state == "running" and p.get("phase") else ""
    more = f" and {len(ahead) - 1} more ahead of it" if len(ahead) > 1 else ""
    return f"{first.state} {first.kind} job {first.id[:8]} ({subject}{where}){more}"


def new_job(seq: int, request: JobRequest) -> Job:
    """The record of a job just accepted: queued, with the request's own fields."""
    if request.kind not in KINDS:
        raise ValueError(f"unknown job kind {request.kind!r}; known: {list(KINDS)}")
    own = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("kind", "settings")}
    return Job(id=uuid.uuid4().hex, seq=seq, state="queued", kind=request.kind, created=time.time(),
               settings=dict(request.settings), **own)


def cancel_fields(job: Job, reason: str | None = None) -> dict[str, Any]:
    """What cancelling a pending job writes: a queued one ends now, a running one stops at its next step (its
    worker reads `cancel_requested`); `reason`, when given, is said on the job."""
    fields: dict[str, Any] = {"cancel_requested": True} | ({"note": reason} if reason else {})
    if job.state == "queued":
        fields |= {"state": "cancelled"} | ({"error": reason} if reason else {})
    return fields


def apply_fields(job: Job, fields: dict[str, Any]) -> Job:
    unknown = set(fields) - {f.name for f in dataclasses.fields(Job)}
    if unknown:
        raise ValueError(f"unknown job fields {sorted(unknown)}")
    return dataclasses.replace(job, **fields)
