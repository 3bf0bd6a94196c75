"""Job records, kept outside the broker: SQLite in embedded mode, Redis when distributed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .job import (
    KINDS,
    MIN_JOB_PREFIX,
    PENDING,
    STATES,
    TERMINAL,
    AdaptRequest,
    AmbiguousJobId,
    FitRequest,
    Job,
    JobFilter,
    JobIdError,
    JobKind,
    JobRegistry,
    JobRequest,
    State,
    cancel_fields,
    resolve_job,
    waiting_for,
)
from .redis_jobs import RedisJobs
from .sqlite_jobs import SqliteJobs

__all__ = ["KINDS", "MIN_JOB_PREFIX", "PENDING", "STATES", "TERMINAL", "AdaptRequest", "AmbiguousJobId", "FitRequest",
           "Job", "JobFilter", "JobIdError", "JobKind", "JobRegistry", "JobRequest", "State", "RedisJobs",
           "cancel_fields", "SqliteJobs", "open_job_records", "resolve_job", "sqlite_path", "waiting_for"]


def open_job_records(broker_url: str | None, redis_prefix: str, work_dir: Path, store: str) -> JobRegistry:
    """Redis records beside the broker when distributed (the deployment's prefix keeps them apart); otherwise a
    SQLite file in the work folder, one per store (`sqlite_path`), so a store lists its own jobs only."""
    if broker_url:
        return RedisJobs(broker_url, prefix=redis_prefix)
    return SqliteJobs(sqlite_path(work_dir, store))


def sqlite_path(work_dir: Path, store: str) -> Path:
    """WORK_DIR/jobs/NAME-DIGEST.sqlite: keyed by the store's location (a local folder by its absolute path),
    named after its last part for a reader."""
    location = store if "://" in store else str(Path(store).expanduser().resolve())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", location.rstrip("/").rsplit("/", 1)[-1])[:40] or "store"
    return Path(work_dir) / "jobs" / f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:12]}.sqlite"
