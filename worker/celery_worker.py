"""The Celery worker process of distributed mode: the task body, and a warm shutdown that checkpoints.

Start it with `das worker --broker redis://...`; the task runs worker.jobs.run_job.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import lru_cache

from celery import signals

from das_settings import get_settings
from das_settings.environment import warn_unknown_variables
from das_settings.logs import configure_logging

from .context import Outcome
from .health import busy_marker
from .jobs import run_job
from .queue import TASK_NAME, make_celery, send_job
from .redelivery import start_redelivery
from .runtime import build_worker_context

log = logging.getLogger(__name__)
WAIT_S = 3  # how often a job that waits for its turn asks again

celery = make_celery(get_settings())  # for `celery -A worker.celery_worker` and `das worker`


@celery.task(bind=True, name=TASK_NAME, max_retries=None)
def run(self, job_id: str) -> str:
    outcome = run_job(job_id, _context())
    if outcome is Outcome.DONE:
        return outcome.value
    # WAIT (an earlier job runs) or RETRY (transient or shut down): hand the job back to the queue
    raise self.retry(countdown=WAIT_S if outcome is Outcome.WAIT else 2)


@lru_cache
def _context():
    settings = get_settings()

    def submit(job_id: str) -> None:  # a job this worker created (re-tuning a finetune task)
        _context().jobs.update(job_id, dispatched=time.time())
        send_job(celery, settings, job_id)

    return build_worker_context(settings, submit=submit)


@signals.setup_logging.connect
def _configure_logging(**_) -> None:
    """Our handler and format (DAS_LOG_LEVEL, DAS_LOG_FORMAT) instead of Celery's: connecting this signal keeps
    Celery from configuring logging itself, and its own loggers write through the same handler."""
    configure_logging(get_settings())


@signals.worker_ready.connect
def _report_unknown_variables(**_) -> None:
    """A mistyped DAS_ variable is named (a WARNING with the nearest setting), not ignored in silence."""
    warn_unknown_variables(os.environ)


@signals.worker_ready.connect
def _watch_for_stalled_jobs(**_) -> None:
    """Queue again a pending job that a dead worker holds no more (see worker.redelivery)."""
    settings, ctx = get_settings(), _context()
    start_redelivery(ctx.jobs, lambda job_id: send_job(celery, settings, job_id), settings.redeliver_after_s,
                     ctx.stop)


@signals.task_prerun.connect
def _mark_busy(task, args, **_) -> None:
    """While a task runs the solo pool answers no ping: `das worker --ping` finds the job here (worker.health)."""
    busy_marker(task.request.hostname).write_text(json.dumps({"job": args[0], "pid": os.getpid()}))


@signals.task_postrun.connect
def _mark_idle(task, **_) -> None:
    busy_marker(task.request.hostname).unlink(missing_ok=True)


@signals.worker_shutting_down.connect
def _stop_running_job(**_) -> None:
    """Warm shutdown: the running job checkpoints at its next step and goes back to the queue."""
    if _context.cache_info().currsize:
        _context().stop.set()
