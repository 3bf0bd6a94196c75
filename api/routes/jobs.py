"""Adaptation jobs: list, watch, cancel."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from job_records import TERMINAL, Job, cancel_fields

from ..deps import ManagementAuth, ServiceDep
from ..schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def queue_job(service, job_id: str, retry: str = "try again later") -> None:
    """Hand a recorded job to the worker(s). If the queue is away, the job must not look queued:
    it is marked failed and the client gets 503 with Retry-After (`retry` says what to do)."""
    try:
        service.submit(job_id)
    except Exception as err:  # noqa: BLE001 - the broker is away, whatever its client raises
        service.jobs.update(job_id, state="failed", error=f"could not queue the job: {err}")
        raise HTTPException(503, f"the job queue is unavailable; {retry}", headers={"Retry-After": "5"}) from None


def _out(job: Job) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


@router.get("", response_model=list[JobOut])
def list_jobs(*, service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobOut]:
    """Jobs, newest first."""
    return [_out(j) for j in service.jobs.list(limit)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """One job: state, progress (step, total, losses, tokens/s, ETA), resulting version, error."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return _out(job)


@router.delete("/{job_id}", response_model=JobOut, dependencies=[ManagementAuth])
def cancel_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """Cancel a job: a queued one at once, a running one at its next step (its checkpoint is kept)."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.state in TERMINAL:
        raise HTTPException(409, f"job {job_id} already ended ({job.state})")
    return _out(service.jobs.update(job_id, **cancel_fields(job)))
