"""Job records, kept outside the broker: SQLite in embedded mode, Redis when distributed.

A job's record is the truth about it (Celery's guidance: a task killed by the OOM killer leaves
no trace in the broker). Jobs are numbered in the order they were accepted (`seq`); only the
earliest pending job may run, and only by the worker that holds its lease.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

State = Literal["queued", "running", "succeeded", "failed", "cancelled", "rejected"]
STATES: tuple[State, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "rejected")
PENDING = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "rejected")


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
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    version: str | None = None
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))


class JobRegistry(Protocol):
    def create(self, domain: str, corpus_id: str, documents: int, settings: dict[str, Any]) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, limit: int = 100) -> list[Job]: ...
    def update(self, job_id: str, **fields: Any) -> Job: ...
    def earliest_pending(self) -> Job | None: ...
    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool: ...
    def release(self, job_id: str, owner: str) -> None: ...


def new_job(seq: int, domain: str, corpus_id: str, documents: int, settings: dict[str, Any]) -> Job:
    return Job(id=uuid.uuid4().hex, seq=seq, state="queued", domain=domain, corpus_id=corpus_id,
               corpus_documents=documents, settings=settings, created=time.time())


def _apply(job: Job, fields: dict[str, Any]) -> Job:
    unknown = set(fields) - {f.name for f in dataclasses.fields(Job)}
    if unknown:
        raise ValueError(f"unknown job fields {sorted(unknown)}")
    return dataclasses.replace(job, **fields)


class SqliteJobs:
    """Embedded mode: one SQLite file; every change is one transaction."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._mutex = threading.Lock()
        with self._mutex:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, "
                             "state TEXT, data TEXT, owner TEXT, lease_until REAL)")

    def create(self, domain: str, corpus_id: str, documents: int, settings: dict[str, Any]) -> Job:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            job = new_job(seq, domain, corpus_id, documents, settings)
            self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, NULL, 0)", (job.id, seq, job.state, job.to_json()))
            self._db.execute("COMMIT")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._mutex:
            row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def list(self, limit: int = 100) -> list[Job]:
        with self._mutex:
            rows = self._db.execute("SELECT data FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [Job.from_json(r[0]) for r in rows]

    def update(self, job_id: str, **fields: Any) -> Job:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                job = _apply(Job.from_json(row[0]), fields)
                self._db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?", (job.state, job.to_json(), job_id))
            finally:
                self._db.execute("COMMIT")
        return job

    def earliest_pending(self) -> Job | None:
        with self._mutex:
            row = self._db.execute("SELECT data FROM jobs WHERE state IN ('queued', 'running') "
                                   "ORDER BY seq LIMIT 1").fetchone()
        return Job.from_json(row[0]) if row else None

    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        with self._mutex:
            cur = self._db.execute("UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ? AND "
                                   "(owner IS NULL OR owner = ? OR lease_until < ?)",
                                   (owner, now + ttl_s, job_id, owner, now))
        return cur.rowcount == 1

    def release(self, job_id: str, owner: str) -> None:
        with self._mutex:
            self._db.execute("UPDATE jobs SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
                             (job_id, owner))


_EXTEND_IF_OWNER = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")
_DELETE_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisJobs:
    """Distributed mode: a JSON record per job, a sorted set by `seq`, and a lease key per job."""

    def __init__(self, redis_url: str, prefix: str = "das:") -> None:
        import redis

        self.r = redis.Redis.from_url(redis_url)
        self.PREFIX = prefix

    def _key(self, job_id: str) -> str:
        return f"{self.PREFIX}job:{job_id}"

    def create(self, domain: str, corpus_id: str, documents: int, settings: dict[str, Any]) -> Job:
        job = new_job(int(self.r.incr(f"{self.PREFIX}jobs:seq")), domain, corpus_id, documents, settings)
        pipe = self.r.pipeline()
        pipe.set(self._key(job.id), job.to_json())
        pipe.zadd(f"{self.PREFIX}jobs", {job.id: job.seq})
        pipe.zadd(f"{self.PREFIX}jobs:pending", {job.id: job.seq})
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.r.get(self._key(job_id))
        return Job.from_json(raw) if raw else None

    def list(self, limit: int = 100) -> list[Job]:
        ids = self.r.zrevrange(f"{self.PREFIX}jobs", 0, limit - 1)
        raws = self.r.mget([self._key(i.decode()) for i in ids]) if ids else []
        return [Job.from_json(r) for r in raws if r]

    def update(self, job_id: str, **fields: Any) -> Job:
        key = self._key(job_id)
        result: list[Job] = []

        def change(pipe) -> None:  # optimistic transaction: retried if the record changed meanwhile
            raw = pipe.get(key)
            if raw is None:
                raise KeyError(job_id)
            job = _apply(Job.from_json(raw), fields)
            pipe.multi()
            pipe.set(key, job.to_json())
            if job.state in TERMINAL:
                pipe.zrem(f"{self.PREFIX}jobs:pending", job_id)
            result[:] = [job]

        self.r.transaction(change, key)
        return result[0]

    def earliest_pending(self) -> Job | None:
        first = self.r.zrange(f"{self.PREFIX}jobs:pending", 0, 0)
        return self.get(first[0].decode()) if first else None

    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool:
        lease = f"{self.PREFIX}job-lease:{job_id}"
        if self.r.set(lease, owner, nx=True, px=int(ttl_s * 1000)):
            return True
        # our own lease (a heartbeat): extend it only if we still hold it
        return bool(self.r.eval(_EXTEND_IF_OWNER, 1, lease, owner, int(ttl_s * 1000)))

    def release(self, job_id: str, owner: str) -> None:
        self.r.eval(_DELETE_IF_OWNER, 1, f"{self.PREFIX}job-lease:{job_id}", owner)
