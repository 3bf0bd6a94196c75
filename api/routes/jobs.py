"""Jobs: list, watch, cancel (the paging every list route shares is api.paging)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from job_records import KINDS, PENDING, STATES, TERMINAL, Job, JobFilter, cancel_fields, waiting_for
from model_store.names import domain_name
from model_store.tasks import task_name

from ..deps import ManagementAuth, ServiceDep
from ..job_ids import named_job
from ..paging import Cursor, Limit, decode_cursor, job_number, page
from ..schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
PENDING_SCAN = 1000  # the pending jobs a queued job's `waiting_for` looks at (of each pending state)


def _out(job: Job) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


@router.get("", response_model=list[JobOut])
def list_jobs(
    *, service: ServiceDep, request: Request, response: Response, limit: Limit = 100, cursor: Cursor = None,
    state: Annotated[str | None, Query(description=f"only jobs in this state: {', '.join(STATES)}")] = None,
    kind: Annotated[str | None, Query(description=f"only jobs of this kind: {', '.join(KINDS)}")] = None,
    domain: Annotated[str | None, Query(description="only adapt jobs of this domain")] = None,
    task: Annotated[str | None, Query(description="only fit jobs of this end task")] = None,
) -> list[JobOut]:
    """Jobs, newest first (by the order they were accepted), filtered before paging: a page holds `limit` jobs
    that match while there are that many. The next page's cursor is in X-Next-Cursor, its URL in Link (rel="next");
    both are absent on the last page. Jobs accepted meanwhile never shift a walk through the pages."""
    try:
        where = JobFilter(state=state, kind=kind, domain=domain_name(domain) if domain is not None else None,
                          task=task_name(task) if task is not None else None)
    except ValueError as err:  # an unknown state or kind (the allowed ones listed), a malformed name
        raise HTTPException(422, str(err)) from None
    before = decode_cursor(cursor, "jobs", job_number) if cursor is not None else None
    jobs = service.jobs.list(limit + 1, where=where, before_seq=before)
    return [_out(j) for j in page(request, response, "jobs", jobs, limit, lambda job: job.seq)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """One job: state, progress (step, total, losses, tokens/s, ETA), resulting version, error. `job_id`: the whole
    id or a unique prefix of at least 6 characters (409 naming the jobs a shared prefix fits)."""
    job = named_job(service, job_id)
    if job.state != "queued":
        return _out(job)
    pending = [j for state in PENDING for j in service.jobs.list(PENDING_SCAN, where=JobFilter(state=state))]
    return JobOut(**dataclasses.asdict(job), waiting_for=waiting_for(job, pending))


@router.get("/{job_id}/output", response_class=FileResponse, responses={200: {
    "description": 'JSONL, one {"id": ..., "result": ...} (or {"id": ..., "error": ...}) per input line, in order',
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}})
def get_job_output(*, service: ServiceDep, job_id: str) -> FileResponse:
    """A batch prediction's answers, streamed: 404 until the job has written them, 409 for any other kind of job."""
    job = named_job(service, job_id)
    job_id = job.id
    if job.kind != "predict":
        raise HTTPException(409, f"job {job_id} is a {job.kind} job; only batch predictions have an output")
    if job.output_sha256 is None and job.state == "succeeded":
        raise HTTPException(410, f"job {job_id}'s answers are gone: {job.note}")
    if job.output_sha256 is None:
        raise HTTPException(404, f"job {job_id} has no output yet ({job.state}); it is there once the job succeeded")
    return FileResponse(service.store.blobs.path(job.output_sha256), media_type="application/x-ndjson",
                        filename=f"{job_id}.jsonl")


@router.delete("/{job_id}", response_model=JobOut, dependencies=[ManagementAuth])
def cancel_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """Cancel a job: a queued one at once, a running one at its next step (its checkpoint is kept)."""
    job = named_job(service, job_id)
    if job.state in TERMINAL:
        raise HTTPException(409, f"job {job.id} already ended ({job.state})")
    return _out(service.jobs.update(job.id, **cancel_fields(job)))
