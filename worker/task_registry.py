"""The fit jobs that give a registered task a model on a version (torch-free: the API, `das activate` and the
workers share it). `queue_missing_fits` queues a fit of every task that has no sound model on a version that became
active, so a client's retry always ends. Registering the task itself is `pipeline.task_intake`.
"""

from __future__ import annotations

from collections.abc import Callable

from job_records import PENDING, FitRequest, Job, JobRegistry
from model_store.store import ModelStore
from model_store.tasks import TaskDefinition, TaskStore

RECENT_JOBS = 10_000  # how far back the job records are searched for a task's fits


def fit_request(definition: TaskDefinition, request_id: str | None = None) -> FitRequest:
    """The job that fits this registration of a task (on the version the job starts on), for the HTTP request
    `request_id` (None: asked for by none)."""
    return FitRequest(task=definition.name, generation=definition.generation, data_sha256=definition.train.sha256,
                      examples=definition.train.examples, data_filename=definition.train.filename,
                      request_id=request_id)


def fit_jobs(jobs: JobRegistry, task: str | None = None) -> list[Job]:
    """The fit jobs of one task (of every task when None), newest first."""
    return [j for j in jobs.list(limit=RECENT_JOBS) if j.kind == "fit" and task in (None, j.task)]


def queue_missing_fits(store: ModelStore, jobs: JobRegistry, version: str, submit: Callable[[str], None],
                       request_id: str | None = None) -> list[Job]:
    """A fit job on `version` for every registered task whose current registration has no sound model there and
    no fit for it queued or running (one that will take the active version counts); returns the new jobs, which
    carry `request_id` (the HTTP request that made `version` active, or that asked for the job that did)."""
    tasks = TaskStore(store)
    coming = {(j.task, j.generation) for j in jobs.list(limit=RECENT_JOBS)
              if j.kind == "fit" and j.state in PENDING and j.parent in (None, version)}
    created = []
    for definition in tasks.definitions():
        key = (definition.name, definition.generation)
        if key in coming or tasks.sound_model(version, *key):
            continue
        job = jobs.update(jobs.create(fit_request(definition, request_id)).id, parent=version)
        submit(job.id)
        created.append(job)
    return created
