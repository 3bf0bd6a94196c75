"""Batch predictions' files do not stay forever. The answers a running job has written so far (on the machine that
runs it) go when it ends without its answers; a finished job's input and answers leave the store once
DAS_BATCH_RETENTION_S has passed since it ended (its record stays, saying so), swept after every job
(worker.jobs) and when the service starts (api.service). Torch-free: the embedded worker's parent process uses it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from job_records import TERMINAL, JobFilter, JobRegistry
from model_store.store import ModelStore
from model_store.tasks import TaskStore

log = logging.getLogger(__name__)
OUTPUTS = "batch-predictions"  # under the work folder: the answers of a running job, one file per job
EXPIRED = "its input and answers were removed {days:g} days after it ended (DAS_BATCH_RETENTION_S)"


def partial_answers(work_dir: Path | str, job_id: str) -> Path:
    """Where a batch job's answers so far are kept on this machine (what a retry of the job resumes from)."""
    return Path(work_dir) / OUTPUTS / f"{job_id}.jsonl"


def drop_partial_answers(work_dir: Path | str, job_id: str, state: str) -> None:
    """A job that ended without its answers (failed, cancelled): no retry will resume from those it wrote."""
    if state != "succeeded":
        partial_answers(work_dir, job_id).unlink(missing_ok=True)


def expire_batch_files(store: ModelStore, jobs: JobRegistry, retention_s: float, now: float | None = None
                       ) -> list[str]:
    """Remove the input and output blobs of batch predictions that ended over `retention_s` ago (a blob another
    batch, a version's corpus or a task's data still names stays); returns the ids of the jobs whose files went."""
    now = time.time() if now is None else now
    batch = jobs.list(limit=100_000, where=JobFilter(kind="predict"))
    old = [j for j in batch if j.state in TERMINAL and j.finished is not None and now - j.finished > retention_s
           and (j.input_sha256 is not None or j.output_sha256 is not None)]
    expiring = {j.id for j in old}
    keep = {sha for j in batch if j.id not in expiring for sha in (j.input_sha256, j.output_sha256) if sha}
    keep |= _named_by_versions_and_tasks(store) if old else set()  # blobs are shared: a JSONL corpus can be a batch
    expired = []
    for job in old:
        for sha in {job.input_sha256, job.output_sha256} - keep - {None}:
            store.blobs.delete(sha)
        jobs.update(job.id, input_sha256=None, output_sha256=None, note=EXPIRED.format(days=retention_s / 86400))
        expired.append(job.id)
    if expired:
        log.info("removed the files of %d batch predictions that ended over %g s ago", len(expired), retention_s,
                 extra={"event": "batch_files_expired", "jobs": expired})
    return expired


def _named_by_versions_and_tasks(store: ModelStore) -> set[str]:
    """The blobs a version (its corpus) or a registered task (its data) names: never a batch's to remove."""
    definitions, _ = TaskStore(store).scan()
    return ({m.corpus.sha256 for m in store.versions() if m.corpus is not None}
            | {data.sha256 for d in definitions for data in (d.train, d.eval) if data is not None})


def expire_quietly(store: ModelStore, jobs: JobRegistry, retention_s: float) -> None:
    """expire_batch_files, where its failure must fail nothing else (after a job, at start): logged, tried again
    next time."""
    try:
        expire_batch_files(store, jobs, retention_s)
    except Exception:  # noqa: BLE001 - the next call tries again
        log.exception("could not remove expired batch prediction files")
