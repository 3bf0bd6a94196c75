"""Job records, kept outside the broker: SQLite in embedded mode, Redis when distributed."""

from __future__ import annotations

from pathlib import Path

from .job import (
    KINDS,
    PENDING,
    STATES,
    TERMINAL,
    AdaptRequest,
    FitRequest,
    Job,
    JobKind,
    JobRegistry,
    JobRequest,
    State,
)
from .redis_jobs import RedisJobs
from .sqlite_jobs import SqliteJobs

__all__ = ["KINDS", "PENDING", "STATES", "TERMINAL", "AdaptRequest", "FitRequest", "Job", "JobKind", "JobRegistry",
           "JobRequest", "State", "RedisJobs",
           "SqliteJobs", "open_job_records"]


def open_job_records(broker_url: str | None, redis_prefix: str, work_dir: Path) -> JobRegistry:
    """Redis records beside the broker when distributed; a SQLite file in the work folder otherwise."""
    if broker_url:
        return RedisJobs(broker_url, prefix=redis_prefix)
    return SqliteJobs(Path(work_dir) / "jobs.sqlite")
