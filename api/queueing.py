"""Handing a recorded job to the worker(s), shared by the routes that create jobs."""

from __future__ import annotations

from fastapi import HTTPException


def queue_job(service, job_id: str, retry: str = "try again later") -> None:
    """Hand a recorded job to the worker(s). If the queue is away, the job must not look queued:
    it is marked failed and the client gets 503 with Retry-After (`retry` says what to do)."""
    try:
        service.submit(job_id)
    except Exception as err:  # noqa: BLE001 - the broker is away, whatever its client raises
        service.jobs.update(job_id, state="failed", error=f"could not queue the job: {err}")
        raise HTTPException(503, f"the job queue is unavailable; {retry}", headers={"Retry-After": "5"}) from None
