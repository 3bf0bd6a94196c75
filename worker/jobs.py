"""The job function that Celery workers and the embedded worker both run: `run_job(job_id, ctx)`.

It takes a job id and checks the world itself (Celery's guidance): a job that is finished, was
cancelled, or already published its version is not run again; only the earliest pending job
runs, under a lease renewed by a heartbeat, so a redelivered copy never runs it twice. What the
job does is chosen by its `kind` (JOB_KINDS). Only transient failures (a busy lock, a lost
connection) are retried; any other failure ends the job at once with its message.
"""

from __future__ import annotations

import logging
import threading
import time

import redis.exceptions

from das_formats.corpus import CorpusError
from das_settings.logs import log_fields
from job_records import TERMINAL, Job
from model_store.locks import StoreLocked
from pipeline.adaptation import finish_publication
from pipeline.outcomes import GateRejected, JobStopped, Superseded, Yielded

from .context import Outcome, WorkerContext
from .job_kinds import JOB_KINDS
from .progress import ProgressReporter
from .retention import drop_partial_answers, expire_quietly

log = logging.getLogger(__name__)

# failures worth another attempt: the world may be different next time
TRANSIENT = (StoreLocked, ConnectionError, TimeoutError, redis.exceptions.ConnectionError,
             redis.exceptions.TimeoutError)
# failures of the request itself: its input can never work
INVALID_INPUT = (CorpusError, ValueError)


def run_job(job_id: str, ctx: WorkerContext) -> Outcome:
    """Run job `job_id`; every line logged meanwhile carries the job's id and the id of the HTTP request that asked
    for it (`request_id`, when one did)."""
    job = ctx.jobs.get(job_id)
    with log_fields(job_id=job_id, request_id=job.request_id if job is not None else None):
        return _run_job(job_id, ctx)


def _run_job(job_id: str, ctx: WorkerContext) -> Outcome:
    job = ctx.jobs.get(job_id)
    if job is None or job.state in TERMINAL:
        if job is not None:  # say, cancelled while it was queued: the cancel route ended it, nothing to run
            log.info("job %s is %s already: not run", job_id, job.state, extra=_fields(job, "job_skipped"))
            drop_partial_answers(ctx.work_dir, job_id, job.state)  # say, a batch cancelled after it yielded
        return Outcome.DONE
    if job.cancel_requested:
        return end_job(ctx, job_id, "cancelled")
    published = ctx.store.find_by_request(job_id) if job.kind == "adapt" else None
    if published is not None:  # it published, then its worker died before it finished: finish, once
        if published.status == "rejected":
            return end_job(ctx, job_id, "rejected", str(GateRejected(published.id, "see its manifest's evaluation")))
        finish_publication(ctx.store, published, activate=True, device=ctx.device)
        _log_end(ctx.jobs.update(job_id, state="succeeded", version=published.id, parent=published.parent,
                                 finished=time.time()))
        ctx.on_published(published.id)
        return Outcome.DONE
    first = ctx.jobs.earliest_pending()
    if first is not None and first.id != job_id:
        return Outcome.WAIT
    ttl = 3 * ctx.heartbeat_s
    if not ctx.jobs.claim(job_id, ctx.owner, ttl):
        return Outcome.WAIT
    beating = threading.Event()
    heart = threading.Thread(target=_heartbeat, args=(ctx, job_id, ttl, beating), daemon=True)
    heart.start()
    try:
        return _run_claimed(job_id, ctx)
    finally:
        beating.set()
        heart.join()
        ctx.jobs.release(job_id, ctx.owner)
        expire_quietly(ctx.store, ctx.jobs, ctx.batch_retention_s)


def _heartbeat(ctx: WorkerContext, job_id: str, ttl: float, done: threading.Event) -> None:
    while not done.wait(ctx.heartbeat_s):
        if not ctx.jobs.claim(job_id, ctx.owner, ttl):
            log.error("lost the lease of job %s", job_id)


def _run_claimed(job_id: str, ctx: WorkerContext) -> Outcome:
    job = ctx.jobs.get(job_id)
    attempts = job.attempts + 1
    if attempts > ctx.max_attempts:
        return end_job(ctx, job_id, "failed", f"gave up after {ctx.max_attempts} attempts; last error: {job.error}")
    work = JOB_KINDS.get(job.kind)
    if work is None:
        return end_job(ctx, job_id, "failed", f"this worker does not know jobs of kind {job.kind!r}")
    # the parent is fixed when the job first starts: a resumed attempt builds on the same version
    parent = job.parent or ctx.store.active_id()
    if parent is None:  # ACTIVE is missing or broken: wait for the operator's repair, and say so
        ctx.jobs.update(job_id, error=f"waiting: {ctx.store.pointer_problem() or 'no active version'}")
        return Outcome.WAIT
    job = ctx.jobs.update(job_id, state="running", attempts=attempts, started=job.started or time.time(),
                          parent=parent)
    log.info("job %s started: %s %s on %s (attempt %d of %d)", job_id, job.kind, _subject(job), parent, attempts,
             ctx.max_attempts, extra=_fields(job, "job_start", attempt=attempts))
    attempt_started = time.monotonic()
    reporter = ProgressReporter(ctx, job_id)
    try:
        try:
            version = work(job, ctx, reporter)
        finally:
            reporter.finish()
    except JobStopped as stopped:  # by the user, by a shutdown that leaves it resumable, or yielding its turn
        if reporter.cancelled:
            return end_job(ctx, job_id, "cancelled")
        job = ctx.jobs.update(job_id, state="queued", attempts=attempts - 1)
        seconds = time.monotonic() - attempt_started
        why = f"yielded its turn {stopped}" if isinstance(stopped, Yielded) else "stopped by a shutdown"
        log.info("job %s %s after %.1f s: back in the queue, it resumes where it stopped", job_id, why, seconds,
                 extra=_fields(job, "job_requeued", seconds=round(seconds, 3)))
        return Outcome.RETRY  # queued again: the job it yielded to runs first (earliest_pending), then it resumes
    except Superseded as err:
        return end_job(ctx, job_id, "cancelled", str(err))
    except GateRejected as err:
        ctx.jobs.update(job_id, version=err.version)
        return end_job(ctx, job_id, "rejected", str(err))
    except TRANSIENT as err:
        log.warning("job %s: transient failure, will retry: %s", job_id, err)
        ctx.jobs.update(job_id, state="queued", error=f"{type(err).__name__}: {err}")
        return Outcome.RETRY
    except INVALID_INPUT as err:
        return end_job(ctx, job_id, "rejected", str(err))
    except Exception as err:  # noqa: BLE001 - deterministic: another attempt would fail the same way
        log.exception("job %s failed", job_id)
        return end_job(ctx, job_id, "failed", f"{type(err).__name__}: {err}")
    _log_end(ctx.jobs.update(job_id, state="succeeded", version=version, finished=time.time(), error=None))
    ctx.on_published(version)
    return Outcome.DONE


def end_job(ctx: WorkerContext, job_id: str, state: str, error: str | None = None) -> Outcome:
    """Put job `job_id` in its final `state` (with `error`), log its end, and say it is DONE."""
    fields = {"state": state, "finished": time.time()}
    if error is not None:
        fields["error"] = error
    _log_end(ctx.jobs.update(job_id, **fields))
    drop_partial_answers(ctx.work_dir, job_id, state)
    return Outcome.DONE


def _subject(job: Job) -> str | None:
    """What a job works on: the domain of an adaptation, the task of a fit, what a batch prediction answers."""
    if job.kind == "predict":
        asked = f"{job.answer_kind}" + (f" {','.join(job.tasks)}" if job.tasks else "")
        return asked + (f" ({job.lines} lines)" if job.lines else "")
    return job.domain if job.kind == "adapt" else job.task


def _fields(job: Job, event: str, **more: object) -> dict[str, object]:
    """The structured fields of a job's log lines (JSON logs carry them; see das_settings.logs)."""
    return {"event": event, "job_id": job.id, "kind": job.kind, "domain": job.domain, "task": job.task,
            "parent": job.parent, "version": job.version, "state": job.state, **more}


def _log_end(job: Job) -> None:
    """A job ended: how, on what, and how long it took since it first started (its record's started..finished)."""
    seconds = job.finished - job.started if job.started is not None and job.finished is not None else None
    took = f" in {seconds:.1f} s" if seconds is not None else " before it started"
    log.info("job %s %s: %s %s on %s -> %s%s%s", job.id, job.state, job.kind, _subject(job), job.parent, job.version,
             took, f": {job.error}" if job.error and job.state != "succeeded" else "",
             extra=_fields(job, "job_end", seconds=round(seconds, 3) if seconds is not None else None,
                           error=job.error))
