"""Embedded mode's jobs, each in a child process: its memory leaves with it, and a crash fails only the job.

The API process serves; a job (an adaptation, a fit, a batch prediction) runs the same `worker.jobs.run_job` a
Celery worker runs, in a child forked from multiprocessing's fork server. The fork server imported torch and the
job code once, so a child starts in a fraction of a second, with none of the API's threads or memory: what training
allocates is returned to the system when the child exits, and an out-of-memory kill or a segfault ends the child,
not the API. The parent keeps the job's lease if the child dies, fails the job with the reason, and answers on.

What crosses the process boundary is small: the job id, the settings, the worker's owner name and a stop event go
in; the child's log records, the versions it published and the jobs it queued come back over a pipe (the parent
swaps to a published version and queues the jobs, as the in-process worker did). Job records and the store are
shared through their files, as between any two workers.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from functools import lru_cache
from multiprocessing.context import BaseContext

from das_formats.exits import describe_exit
from das_settings import Settings
from das_settings.logs import log_fields
from job_records import TERMINAL

from .context import Outcome, WorkerContext
from .retention import drop_partial_answers

log = logging.getLogger(__name__)

# imported once by the fork server, so each job's child starts with them loaded
PRELOAD = ["torch", "transformers", "worker.jobs"]
POLL_S = 0.2
EXIT_PARENT_DIED = 70  # a job's process whose server died
_running: dict[str, int] = {}  # job id -> the pid of its process, while it runs


def running_children() -> dict[str, int]:
    """The jobs running in a child process of this one now, with the child's pid (for operators and tests)."""
    return dict(_running)


@lru_cache(maxsize=1)
def _fork_server() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the fork server now (it imports torch and the job code once), so the first job does not wait for it."""
    from multiprocessing import forkserver

    _fork_server()
    forkserver.ensure_running()


def run_in_child(job_id: str, ctx: WorkerContext, settings: Settings) -> Outcome:
    """Run job `job_id` in a child process and return its outcome; a child that died fails the job (DONE). The
    lines logged here, and those of the child relayed here, carry the job's id and its request's."""
    job = ctx.jobs.get(job_id)
    with log_fields(job_id=job_id, request_id=job.request_id if job is not None else None):
        return _run_in_child(job_id, ctx, settings)


def _run_in_child(job_id: str, ctx: WorkerContext, settings: Settings) -> Outcome:
    job = ctx.jobs.get(job_id)
    if job is None or job.state in TERMINAL:  # nothing to run: no child for it
        if job is not None:  # say, a batch cancelled while it waited after yielding: its answers so far go
            drop_partial_answers(ctx.work_dir, job_id, job.state)
        return Outcome.DONE
    context = _fork_server()
    receive, send = context.Pipe(duplex=False)
    alive_r, alive_w = context.Pipe(duplex=False)  # this process holds the only writing end: EOF once it dies
    child_stop = context.Event()
    child = context.Process(target=_child_main, args=(job_id, settings, ctx.owner, child_stop, send, alive_r),
                            name=f"das-job-{job_id}", daemon=True)
    child.start()
    send.close()  # the child holds the only writing end: end of file once it exits
    alive_r.close()
    log.debug("job %s runs in process %s", job_id, child.pid, extra={"event": "job_process", "job_id": job_id,
                                                                      "pid": child.pid})
    _running[job_id] = child.pid
    try:
        outcome = _follow(receive, child_stop, ctx)
        child.join()
    finally:
        _running.pop(job_id, None)
        receive.close()
        alive_w.close()
    if outcome is not None:
        return outcome
    return _child_died(job_id, ctx, child.exitcode)


def _follow(receive: multiprocessing.connection.Connection, child_stop, ctx: WorkerContext) -> Outcome | None:
    """Relay what the child sends until it exits; pass a shutdown on. Returns the child's outcome, None if it died."""
    outcome = None
    while True:
        if ctx.stop.is_set():
            child_stop.set()
        if not receive.poll(POLL_S):
            continue
        try:
            what, value = receive.recv()
        except (EOFError, OSError):  # the child exited and everything it sent was read
            return outcome
        if what == "log":
            logging.getLogger(value.name).handle(value)
        elif what == "published":
            ctx.on_published(value)
        elif what == "submit":
            ctx.submit(value)
        elif what == "outcome":
            outcome = Outcome(value)


def _child_died(job_id: str, ctx: WorkerContext, exitcode: int | None) -> Outcome:
    """The child ended without an outcome: fail its job with the reason (unless it published first: the next run
    of the job finishes that publication, as after any worker's crash)."""
    ctx.jobs.release(job_id, ctx.owner)
    job = ctx.jobs.get(job_id)
    if job is None or job.state in TERMINAL:
        return Outcome.DONE
    if job.kind == "adapt" and ctx.store.find_by_request(job_id) is not None:
        log.warning("job %s: its process died (%s) after publishing its version; it is finished next",
                    job_id, describe_exit(exitcode))
        return Outcome.RETRY
    from .jobs import end_job

    error = f"the job's process died ({describe_exit(exitcode)}); the service is unaffected. " + _advice(exitcode)
    log.error("job %s: %s", job_id, error, extra={"event": "job_process_died", "job_id": job_id,
                                                   "exitcode": exitcode})
    return end_job(ctx, job_id, "failed", error)


def _advice(exitcode: int | None) -> str:
    if exitcode == -signal.SIGKILL:
        return ("A kill without warning is most often the kernel's out-of-memory killer: submit it again with a "
                "smaller batch_size, max_length or importance_batch_size, or on a machine with more memory.")
    return "Its log lines above say what it did last; submit it again once the cause is fixed."


# --------------------------------------------------------------------------------------------- the child side
class _PipeQueue:
    """What logging.handlers.QueueHandler puts records into: the pipe to the parent (one writer at a time)."""

    def __init__(self, send: multiprocessing.connection.Connection, lock: threading.Lock) -> None:
        self.send, self.lock = send, lock

    def put_nowait(self, record: logging.LogRecord) -> None:
        _send(self.send, self.lock, "log", record)


def _send(send: multiprocessing.connection.Connection, lock: threading.Lock, what: str, value: object) -> None:
    with lock:
        send.send((what, value))


def _exit_with_parent(alive: multiprocessing.connection.Connection) -> None:
    """Wait for the end of file the parent's death makes (it never writes), then end this process at once: a job
    whose server died (kill -9, OOM) must not go on training and renewing its lease for nobody."""
    try:
        alive.poll(None)
    finally:
        os._exit(EXIT_PARENT_DIED)  # (no log line: the pipe the log lines went through died with the parent)


def _child_main(job_id: str, settings: Settings, owner: str, stop, send: multiprocessing.connection.Connection,
                alive: multiprocessing.connection.Connection) -> None:
    """A job's process: run the job with a worker context of its own, sending logs and events to the parent; it
    exits when the parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent's stop event decides
    threading.Thread(target=_exit_with_parent, args=(alive,), name="das-parent-watch", daemon=True).start()
    lock = threading.Lock()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(_PipeQueue(send, lock)))  # type: ignore[arg-type]
    root.setLevel(settings.log_level)
    from .jobs import run_job
    from .runtime import build_worker_context

    ctx = build_worker_context(settings, on_published=lambda version: _send(send, lock, "published", version),
                               submit=lambda queued: _send(send, lock, "submit", queued))
    ctx.owner, ctx.stop = owner, stop
    outcome = run_job(job_id, ctx)
    _send(send, lock, "outcome", outcome.value)
