"""Wiring from Settings: the store, the job records, a worker's context, and announcing a new version.

Torch-free: the API and the store commands of the CLI use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from das_settings import Settings, get_settings
from job_records import JobRegistry, open_job_records
from model_store.store import ModelStore

from .context import WorkerContext


def open_store(settings: Settings | None = None, location: str | None = None) -> ModelStore:
    settings = settings or get_settings()
    return ModelStore.open(location or settings.store, redis_url=settings.redis_url,
                           storage_options=settings.store_options or None)


def job_registry(settings: Settings) -> JobRegistry:
    return open_job_records(settings.broker_url, settings.redis_prefix, settings.work_dir, settings.store)


def announce(settings: Settings, version: str) -> None:
    """Tell every API replica that the active version changed (they also poll the pointer)."""
    if settings.broker_url:
        import redis

        redis.Redis.from_url(settings.broker_url).publish(settings.active_channel, version)


def build_worker_context(settings: Settings, *, store: ModelStore | None = None, jobs: JobRegistry | None = None,
                         on_published: Callable[[str], None] | None = None,
                         submit: Callable[[str], None] = lambda job_id: None) -> WorkerContext:
    """The one place a worker's context is made from Settings: a Celery worker's, and the embedded worker's
    (which shares the API process's store and records and swaps in place instead of announcing)."""
    return WorkerContext(store=store or open_store(settings), jobs=jobs or job_registry(settings),
                         work_dir=settings.work_dir, heartbeat_s=settings.heartbeat_s,
                         max_attempts=settings.max_attempts, device=settings.device,
                         gate_max_drop=settings.gate_max_drop, train_procs=settings.train_procs,
                         batch_retention_s=settings.batch_retention_s,
                         on_published=on_published or (lambda version: announce(settings, version)), submit=submit)


def submit_job(settings: Settings, jobs: JobRegistry, job_id: str) -> None:
    """Hand a recorded job to the queue from outside a service (the CLI): Celery when a broker is set; in embedded
    mode the record is the queue, and the server's worker runs pending jobs when it starts."""
    if settings.broker_url:
        from .queue import make_celery, send_job

        jobs.update(job_id, dispatched=time.time())
        send_job(make_celery(settings), settings, job_id)
