"""The job a route's `{job_id}` names: its whole id or a unique prefix of at least 6 hex characters (the 8 every
job list prints), shared by the job and batch-prediction routes."""

from __future__ import annotations

from fastapi import HTTPException

from job_records import AmbiguousJobId, Job, JobIdError, resolve_job


def named_job(service, job_id: str) -> Job:
    """The job `job_id` names; 422 for too short or non-hex a prefix (the rule said), 409 for a prefix several jobs
    share (some named), 404 for none."""
    try:
        job = resolve_job(service.jobs, job_id)
    except JobIdError as err:
        raise HTTPException(422, str(err)) from None
    except AmbiguousJobId as err:
        raise HTTPException(409, str(err)) from None
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job
