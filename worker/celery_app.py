"""Celery on Redis for distributed mode: late acks, reject on worker lost, prefetch 1, time limits.

Start workers with `das worker --broker redis://...`; the task body is worker.tasks.run_adaptation.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery, signals

from das.settings import Settings, get_settings

from .runtime import build_worker_context
from .tasks import Outcome, run_adaptation

log = logging.getLogger(__name__)
TASK_NAME = "das.adapt"
WAIT_S = 3  # how often a job that waits for its turn asks again


def queue_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}adapt"


def make_celery(settings: Settings) -> Celery:
    app = Celery("das", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        task_acks_late=True,  # a job killed mid-way is redelivered...
        task_reject_on_worker_lost=True,  # ...also when the worker process dies
        worker_prefetch_multiplier=1,  # a worker holds one job at a time
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=settings.job_time_limit_s - 30,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_default_queue=queue_name(settings),
        task_track_started=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(bind=True, name=TASK_NAME, max_retries=None)
    def adapt(self, job_id: str) -> str:
        outcome = run_adaptation(job_id, _context())
        if outcome is Outcome.DONE:
            return outcome.value
        # WAIT (an earlier job runs) or RETRY (resumable): hand the job back to the queue
        raise self.retry(countdown=WAIT_S if outcome is Outcome.WAIT else 2)

    return app


@lru_cache
def _context():
    return build_worker_context(get_settings())


@signals.worker_shutting_down.connect
def _stop_running_job(**_) -> None:
    """Warm shutdown: the running job checkpoints at its next step and goes back to the queue."""
    if _context.cache_info().currsize:
        _context().stop.set()


celery = make_celery(get_settings())  # for `celery -A worker.celery_app` and `das worker`
