"""A job record: what was asked, where it stands, and the states it moves through.

A job's record is the truth about it (Celery's guidance: a task killed by the OOM killer leaves
no trace in the broker). Jobs are numbered in the order they were accepted (`seq`); only the
earliest pending job may run, and only by the worker that holds its lease. `kind` names what a
worker does with it: `adapt` (a domain corpus -> a new version) or `fit` (an end-task model on a
version; for those, `domain` holds the task's name and `corpus_id` its train data).
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
JobKind = Literal["adapt", "fit"]
KINDS: tuple[JobKind, ...] = ("adapt", "fit")


@dataclass
class Job:
    id: str
    seq: int
    state: State
    domain: str
    corpus_id: str
    corpus_documents: int
    settings: dict[str, Any]
    created: float
    kind: JobKind = "adapt"
    corpus_filename: str = ""
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None  # the version the job builds on, fixed when it first starts
    version: str | None = None
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    dispatched: float | None = None  # when it was last handed to the queue (redelivery looks at it)
    note: str | None = None  # how it ended, when that needs saying (say, published as a candidate)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))


class JobRegistry(Protocol):
    def create(self, domain: str, corpus_id: str, documents: int, settings: dict[str, Any], *,
               kind: JobKind = "adapt", filename: str = "") -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, limit: int = 100) -> list[Job]: ...
    def update(self, job_id: str, **fields: Any) -> Job: ...
    def earliest_pending(self) -> Job | None: ...
    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool: ...
    def release(self, job_id: str, owner: str) -> None: ...
    def lease_alive(self, job_id: str) -> bool: ...
    def ping(self) -> None: ...  # raises if the records cannot be reached


def new_job(seq: int, domain: str, corpus_id: str, documents: int, settings: dict[str, Any], *,
            kind: JobKind = "adapt", filename: str = "") -> Job:
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; known: {list(KINDS)}")
    return Job(id=uuid.uuid4().hex, seq=seq, state="queued", domain=domain, corpus_id=corpus_id,
               corpus_documents=documents, settings=settings, created=time.time(), kind=kind,
               corpus_filename=filename)


def apply_fields(job: Job, fields: dict[str, Any]) -> Job:
    unknown = set(fields) - {f.name for f in dataclasses.fields(Job)}
    if unknown:
        raise ValueError(f"unknown job fields {sorted(unknown)}")
    return dataclasses.replace(job, **fields)
