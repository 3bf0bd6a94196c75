"""Adaptation jobs: list, watch, cancel; and the cursor paging every list route (jobs, models, tasks) shares."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from job_records import KINDS, STATES, TERMINAL, Job, JobFilter, cancel_fields
from model_store.names import domain_name
from model_store.tasks import task_name

from ..deps import ManagementAuth, ServiceDep
from ..schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
T = TypeVar("T")

# ---------------------------------------------------------------- paging (shared by the list routes)
MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items per page, 1-{MAX_PAGE}")]
Cursor = Annotated[str | None, Query(description="the X-Next-Cursor header of the previous page (or follow its "
                                                 "Link rel=\"next\"); omitted: the first page")]


def encode_cursor(listing: str, key: str | int) -> str:
    """An opaque cursor: the listing it belongs to and the key of the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps([listing, key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, listing: str, check: Callable[[Any], Any]) -> Any:
    """The key a cursor of `listing` holds (`check` raises ValueError or TypeError for one that cannot be); 422 for a
    cursor this service did not give for that listing."""
    try:
        found, key = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4)))
        if found != listing:
            raise ValueError(f"a cursor of {found!r}")
        return check(key)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise HTTPException(422, f"invalid cursor {cursor[:100]!r}: pass the X-Next-Cursor header (or follow the "
                                 f"Link rel=\"next\") of the previous page of {listing}, or no cursor for the "
                                 "first page") from None


def page(request: Request, response: Response, listing: str, items: list[T], limit: int,
         key: Callable[[T], str | int]) -> list[T]:
    """The first `limit` of `items` (read with one more, so a next page shows); when there is a next page, its
    cursor goes in `X-Next-Cursor` and its URL (this one, with the cursor) in `Link: <...>; rel="next"`."""
    if len(items) <= limit:
        return items
    items = items[:limit]
    cursor = encode_cursor(listing, key(items[-1]))
    url = request.url.include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    response.headers["X-Next-Cursor"] = cursor
    return items


def _seq(key: Any) -> int:
    if type(key) is not int or key < 1:
        raise TypeError("not a job number")
    return key


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
    before = decode_cursor(cursor, "jobs", _seq) if cursor is not None else None
    jobs = service.jobs.list(limit + 1, where=where, before_seq=before)
    return [_out(j) for j in page(request, response, "jobs", jobs, limit, lambda job: job.seq)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """One job: state, progress (step, total, losses, tokens/s, ETA), resulting version, error."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return _out(job)


@router.get("/{job_id}/output", response_class=FileResponse, responses={200: {
    "description": 'JSONL, one {"id": ..., "result": ...} (or {"id": ..., "error": ...}) per input line, in order',
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}})
def get_job_output(*, service: ServiceDep, job_id: str) -> FileResponse:
    """A batch prediction's answers, streamed: 404 until the job has written them, 409 for any other kind of job."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.kind != "predict":
        raise HTTPException(409, f"job {job_id} is a {job.kind} job; only batch predictions have an output")
    if job.output_sha256 is None:
        raise HTTPException(404, f"job {job_id} has no output yet ({job.state}); it is there once the job succeeded")
    return FileResponse(service.store.corpus_path(job.output_sha256), media_type="application/x-ndjson",
                        filename=f"{job_id}.jsonl")


@router.delete("/{job_id}", response_model=JobOut, dependencies=[ManagementAuth])
def cancel_job(*, service: ServiceDep, job_id: str) -> JobOut:
    """Cancel a job: a queued one at once, a running one at its next step (its checkpoint is kept)."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.state in TERMINAL:
        raise HTTPException(409, f"job {job_id} already ended ({job.state})")
    return _out(service.jobs.update(job_id, **cancel_fields(job)))
