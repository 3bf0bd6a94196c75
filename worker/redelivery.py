"""Redelivery that does not wait for the broker: a pending job nobody holds is queued again.

Celery on Redis redelivers an unacknowledged message only after the visibility timeout, which
must outlast the longest job (hours). The job records know sooner: the earliest pending job is
the only one that may run, so if no worker holds its lease and it was last queued a while ago,
its message is lost or stuck on a dead worker. Sending it again is safe: `run_job` is idempotent
and lease-guarded, so a second copy ends at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from job_records import JobRegistry

log = logging.getLogger(__name__)


def redeliver_stalled(jobs: JobRegistry, send: Callable[[str], None], after_s: float,
                      now: float | None = None) -> str | None:
    """Queue the earliest pending job again if no worker holds it and it was queued over `after_s` ago."""
    now = time.time() if now is None else now
    job = jobs.earliest_pending()
    if job is None or jobs.lease_alive(job.id):
        return None
    if job.dispatched is not None and now - job.dispatched < after_s:
        return None
    jobs.update(job.id, dispatched=now)
    send(job.id)
    log.warning("job %s: pending and held by no worker; queued again", job.id)
    return job.id


def start_redelivery(jobs: JobRegistry, send: Callable[[str], None], after_s: float,
                     stop: threading.Event) -> threading.Thread:
    """A daemon thread that looks every `after_s / 3` seconds until `stop` is set."""
    def loop() -> None:
        while not stop.wait(max(0.5, after_s / 3)):
            try:
                redeliver_stalled(jobs, send, after_s)
            except Exception:  # noqa: BLE001 - the records may be away for a while; look again later
                log.warning("could not look for stalled jobs", exc_info=True)

    thread = threading.Thread(target=loop, name="das-redelivery", daemon=True)
    thread.start()
    return thread
