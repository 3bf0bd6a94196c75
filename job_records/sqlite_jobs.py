"""Job records in embedded mode: one SQLite file; every change is one transaction."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .job import PENDING, Job, JobRequest, apply_fields, new_job

_PENDING_SQL = ", ".join(f"'{state}'" for state in PENDING)


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
                job = apply_fields(Job.from_json(row[0]), fields)
                self._db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?", (job.state, job.to_json(), job_id))
            finally:
                self._db.execute("COMMIT")
        return job

    def earliest_pending(self) -> Job | None:
        with self._mutex:
            row = self._db.execute(f"SELECT data FROM jobs WHERE state IN ({_PENDING_SQL}) ORDER BY seq LIMIT 1"
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


