"""Wiring a worker: the store, the job registry, and how a published version is announced."""

from __future__ import annotations

from das.pipeline import open_store
from das.settings import Settings

from .jobs import JobRegistry, RedisJobs, SqliteJobs
from .tasks import WorkerContext


def active_channel(settings: Settings) -> str:
    return f"{settings.redis_prefix}active-version"


def job_registry(settings: Settings) -> JobRegistry:
    if settings.broker_url:
        return RedisJobs(settings.broker_url, prefix=settings.redis_prefix)
    return SqliteJobs(settings.work_dir / "jobs.sqlite")


def announce(settings: Settings, version: str) -> None:
    """Tell every API replica that the active version changed (they also poll the pointer)."""
    if settings.broker_url:
        import redis

        redis.Redis.from_url(settings.broker_url).publish(active_channel(settings), version)


def build_worker_context(settings: Settings) -> WorkerContext:
    return WorkerContext(store=open_store(settings=settings), jobs=job_registry(settings), work_dir=settings.work_dir,
                         heartbeat_s=settings.heartbeat_s, max_attempts=settings.max_attempts,
                         on_published=lambda version: announce(settings, version))
