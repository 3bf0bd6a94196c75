"""Embedded mode: one in-process worker thread runs the same task function Celery runs."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from job_records import PENDING

from .context import Outcome, RunJob, WorkerContext

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """Runs jobs one at a time in the order they were submitted; pending jobs resume on start."""

    def __init__(self, ctx: WorkerContext, run_job: RunJob, prepare: Callable[[], None] = lambda: None) -> None:
        self.ctx = ctx
        self.run_job = run_job  # worker.jobs.run_job, passed in so that this module imports no torch
        self.prepare = prepare  # e.g. start the job processes' fork server, on this thread, before the first job
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="das-embedded-worker", daemon=True)

    def start(self) -> None:
        pending = [j for j in reversed(self.ctx.jobs.list(limit=10_000)) if j.state in PENDING]
        for job in pending:  # oldest first: a job interrupted by a shutdown resumes from its checkpoint
            self.queue.put(job.id)
        log.info("embedded worker started; %d pending jobs resume", len(pending),
                 extra={"event": "worker_start", "pending": len(pending)})
        self.thread.start()

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the running job to checkpoint and stop; it stays queued and resumes on the next start."""
        self.ctx.stop.set()
        self.queue.put(None)
        self.thread.join(timeout_s)

    def _loop(self) -> None:
        try:
            self.prepare()
        except Exception:  # noqa: BLE001 - the first job will try again and say what is wrong
            log.exception("preparing to run jobs failed")
        while not self.ctx.stop.is_set():
            job_id = self.queue.get()
            if job_id is None:
                return
            try:
                outcome = self.run_job(job_id, self.ctx)
            except Exception:  # noqa: BLE001 - never let one job kill the worker thread
                log.exception("job %s crashed the task function", job_id)
                outcome = Outcome.RETRY
            if outcome is not Outcome.DONE and not self.ctx.stop.is_set():
                self.ctx.stop.wait(1.0)
                self.queue.put(job_id)
