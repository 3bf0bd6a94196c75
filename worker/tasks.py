"""The adaptation task: one function that Celery workers and the embedded worker both run.

It takes a job id and checks the world itself (Celery's guidance): a job that is finished, was
cancelled, or already published its version is not run again; only the earliest pending job
runs, under a lease renewed by a heartbeat, so a redelivered copy never runs it twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from das.pipeline import adapt_active
from das_engine import DASConfig
from das_engine.corpus import CorpusError
from das_engine.trainer import Progress
from model_store.store import ModelStore, StoreError

from .jobs import TERMINAL, JobRegistry

log = logging.getLogger(__name__)


class Outcome(Enum):
    DONE = "done"  # the job is in a final state (or someone else finished it)
    WAIT = "wait"  # an earlier job is pending, or another worker holds this one: try again later
    RETRY = "retry"  # a failure worth another attempt, or a shutdown left it resumable


@dataclass
class WorkerContext:
    store: ModelStore
    jobs: JobRegistry
    work_dir: Path
    heartbeat_s: float = 5.0
    max_attempts: int = 3
    device: str = "cpu"
    on_published: Callable[[str], None] = lambda version: None
    stop: threading.Event = field(default_factory=threading.Event)  # set on shutdown
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def run_adaptation(job_id: str, ctx: WorkerContext) -> Outcome:
    job = ctx.jobs.get(job_id)
    if job is None or job.state in TERMINAL:
        return Outcome.DONE
    if job.cancel_requested:
        ctx.jobs.update(job_id, state="cancelled", finished=time.time())
        return Outcome.DONE
    published = ctx.store.find_by_request(job_id)
    if published is not None:  # it published, then its worker died before saying so
        ctx.jobs.update(job_id, state="succeeded", version=published.id, parent=published.parent,
                        finished=time.time())
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


def _heartbeat(ctx: WorkerContext, job_id: str, ttl: float, done: threading.Event) -> None:
    while not done.wait(ctx.heartbeat_s):
        if not ctx.jobs.claim(job_id, ctx.owner, ttl):
            log.error("lost the lease of job %s", job_id)


def _run_claimed(job_id: str, ctx: WorkerContext) -> Outcome:
    job = ctx.jobs.get(job_id)
    attempts = job.attempts + 1
    if attempts > ctx.max_attempts:
        ctx.jobs.update(job_id, state="failed", finished=time.time(),
                        error=f"gave up after {ctx.max_attempts} attempts; last error: {job.error}")
        return Outcome.DONE
    active = ctx.store.active()
    ctx.jobs.update(job_id, state="running", attempts=attempts, started=job.started or time.time(),
                    parent=active.id if active else None)
    try:
        config = DASConfig.from_dict(job.settings)
        corpus = ctx.store.corpus_path(job.corpus_id)
    except (ValueError, StoreError) as err:
        ctx.jobs.update(job_id, state="rejected", error=str(err), finished=time.time())
        return Outcome.DONE

    reporter = _ProgressReporter(ctx, job_id)
    try:
        manifest = adapt_active(ctx.store, corpus, job.domain, config, work_dir=ctx.work_dir, device=ctx.device,
                                on_progress=reporter, should_stop=reporter.should_stop, request_id=job_id)
    except CorpusError as err:
        ctx.jobs.update(job_id, state="rejected", error=str(err), finished=time.time())
        return Outcome.DONE
    except Exception as err:  # noqa: BLE001 - recorded on the job; retried up to max_attempts
        log.exception("job %s failed", job_id)
        ctx.jobs.update(job_id, state="queued", error=f"{type(err).__name__}: {err}")
        return Outcome.RETRY
    if manifest is None:  # stopped: by the user, or by a shutdown that leaves it resumable
        if reporter.cancelled:
            ctx.jobs.update(job_id, state="cancelled", finished=time.time())
            return Outcome.DONE
        ctx.jobs.update(job_id, state="queued", attempts=attempts - 1)
        return Outcome.RETRY
    ctx.jobs.update(job_id, state="succeeded", version=manifest.id, parent=manifest.parent, finished=time.time(),
                    error=None)
    ctx.on_published(manifest.id)
    return Outcome.DONE


class _ProgressReporter:
    """Writes progress to the job record at most twice a second and reads the cancel flag."""

    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.last_write = 0.0
        self.cancelled = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last_write < 0.5 and p.phase == "train" and p.step < p.total:
            return
        self.last_write = now
        self.ctx.jobs.update(self.job_id, progress={
            "phase": p.phase, "step": p.step, "total": p.total, "losses": p.losses,
            "tokens_per_s": round(p.tokens_per_s, 1), "eta_s": None if p.eta_s is None else round(p.eta_s, 1)})

    def should_stop(self) -> bool:
        job = self.ctx.jobs.get(self.job_id)
        self.cancelled = bool(job and job.cancel_requested)
        return self.cancelled or self.ctx.stop.is_set()
