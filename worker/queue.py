"""Celery on Redis, as both sides see it: the app's settings, the task's name, sending a job.

Torch-free: the API sends jobs with it. The task body is registered in worker.celery_worker, which
only worker processes import. Settings follow Celery's guidance for long tasks: late acks, reject
on worker lost, prefetch 1, explicit time limits.
"""

from __future__ import annotations

from celery import Celery

from das_settings import Settings

TASK_NAME = "das.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("das", broker=settings.broker_url)  # no result backend: the job records hold every outcome
    app.conf.update(
        task_acks_late=True,  # a job killed mid-way is redelivered...
        task_reject_on_worker_lost=True,  # ...also when the worker process dies
        worker_prefetch_multiplier=1,  # a worker holds one job at a time
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=settings.job_time_limit_s - 30,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    return app


def send_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Queue a job by id (Celery's guidance: pass ids, the task fetches what it needs)."""
    app.send_task(TASK_NAME, args=[job_id], queue=settings.queue_name)
