"""Job records in embedded mode: one SQLite file; every change is one transaction."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .job import BATCH_LANE, PENDING, Job, JobFilter, JobRequest, apply_fields, new_job

_PENDING_SQL = ", ".join(f"'{state}'" for state in PENDING)
# a record's kind, domain and task as Job.from_json reads them: records written before the kinds had fields of
# their own have no `kind` (an adapt job) and, for a fit job, its task in `domain`
_KIND_SQL = "COALESCE(json_extract(data, '$.kind'), 'adapt')"
_FILTER_SQL = {
    "state": "state = ?",
    "kind": f"{_KIND_SQL} = ?",
    "domain": f"({_KIND_SQL} = 'adapt' AND json_extract(data, '$.domain') = ?)",
    "task": ("COALESCE(json_extract(data, '$.task'), CASE WHEN json_extract(data, '$.kind') = 'fit' "
             "THEN json_extract(data, '$.domain') END) = ?"),
}


def _where(where: JobFilter, before_seq: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters for a listing."""
    clauses, params = [], []
    for name, sql in _FILTER_SQL.items():
        value = getattr(where, name)
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


class SqliteJobs:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._mutex = threading.Lock()
        with self._mutex:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER UNIQUE, "
                             "state TEXT, data TEXT, owner TEXT, lease_until REAL)")

    def create(self, request: JobRequest) -> Job:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            job = new_job(seq, request)
            self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, NULL, 0)", (job.id, seq, job.state, job.to_json()))
            self._db.execute("COMMIT")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._mutex:
            row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def find_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids that start with `prefix` (non-empty), sorted: a range scan of the primary key's index, [prefix, the
        prefix with its last character's successor)."""
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with self._mutex:
            rows = self._db.execute("SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                                    (prefix, after, limit)).fetchall()
        return [r[0] for r in rows]

    def list(self, limit: int = 100, *, where: JobFilter | None = None, before_seq: int | None = None) -> list[Job]:
        clause, params = _where(where or JobFilter(), before_seq)
        with self._mutex:
            rows = self._db.execute(f"SELECT data FROM jobs {clause} ORDER BY seq DESC LIMIT ?",
                                    (*params, limit)).fetchall()
        return [Job.from_json(r[0]) for r in rows]

    def update(self, job_id: str, **fields: Any) -> Job:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                job = apply_fields(Job.from_json(row[0]), fields)
                self._db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?", (job.state, job.to_json(), job_id))
            finally:
                self._db.execute("COMMIT")
        return job

    def earliest_pending(self) -> Job | None:
        with self._mutex:
            row = self._db.execute(f"SELECT data FROM jobs WHERE state IN ({_PENDING_SQL}) ORDER BY "
                                   "seq + (json_extract(data, '$.kind') = 'predict') * ? LIMIT 1", (BATCH_LANE,)
                                   ).fetchone()
        return Job.from_json(row[0]) if row else None

    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        with self._mutex:
            cur = self._db.execute("UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ? AND "
                                   "(owner IS NULL OR owner = ? OR lease_until < ?)",
                                   (owner, now + ttl_s, job_id, owner, now))
        return cur.rowcount == 1

    def lease_alive(self, job_id: str) -> bool:
        with self._mutex:
            row = self._db.execute("SELECT lease_until FROM jobs WHERE id = ? AND owner IS NOT NULL",
                                   (job_id,)).fetchone()
        return bool(row) and row[0] > time.time()

    def ping(self) -> None:
        with self._mutex:
            self._db.execute("SELECT 1").fetchone()

    def release(self, job_id: str, owner: str) -> None:
        with self._mutex:
            self._db.execute("UPDATE jobs SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
                             (job_id, owner))


