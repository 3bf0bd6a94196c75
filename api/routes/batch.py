"""Batch predictions: a JSONL file too large for one request, answered line by line by a job.

The inference token suffices (app-wide, api.main): a batch answers texts exactly as POST /v1/predict,
/v1/embeddings and /v1/fill-mask do, changes no version or task, and stores only its own input and answers.
The same token cancels it (DELETE here; DELETE /v1/jobs/{id} needs the management token, being for any job).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from das_formats.batch_input import BatchInputError, BatchLine, read_batch_input
from job_records import PENDING, TERMINAL, JobFilter, cancel_fields
from job_records.job import AnswerKind, PredictRequest
from model_store.names import InvalidName
from model_store.tasks import TaskStore, task_name

from ..deps import CallerRole, RequestId, ServiceDep
from ..job_ids import named_job
from ..queueing import queue_job
from ..schemas import BatchAccepted, JobOut
from ..uploads import safe_filename, save_upload, upload_dir

router = APIRouter(prefix="/v1/batch-predictions", tags=["batch predictions"])


@router.post("", status_code=202, response_model=BatchAccepted)
async def create_batch_prediction(
    *, service: ServiceDep, role: CallerRole, request_id: RequestId,
    file: Annotated[UploadFile, File(description='UTF-8 JSONL, one {"text": ..., "id": ...} object per line '
                                                 '("id" is optional: the line number by default)')],
    kind: Annotated[AnswerKind, Form(description="what each line gets: predict (end-task labels), embed (an "
                                                 "embedding) or fill_mask (top_k tokens per mask)")] = "predict",
    tasks: Annotated[str | None, Form(description="kind predict: the end tasks to answer, comma separated "
                                                  "(omitted: every task served now)")] = None,
    top_k: Annotated[int, Form(ge=1, le=50, description="kind fill_mask: candidates per mask token")] = 5,
    truncate: Annotated[bool, Form(description="cut a text longer than the model's maximum sequence to it (its "
                                               "answer says `truncated`); false: such a line gets an error instead "
                                               "of an answer, unless the service runs with DAS_AUTO_TRUNCATE=true")
                        ] = False,
) -> BatchAccepted:
    """Check the whole file, store it, and queue a job that answers every line with the version active when the job
    starts; nothing is stored or queued unless every line is valid (a 422 names the first bad one)."""
    names = await run_in_threadpool(_task_names, service, kind, tasks)
    await run_in_threadpool(_check_caps, service, role)  # before a byte is stored
    limit = service.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=upload_dir(service)) as tmp:
        path = Path(tmp) / "input.jsonl"
        await save_upload(file, path, limit,
                          f"the file exceeds the upload limit of {limit} bytes (DAS_MAX_UPLOAD_BYTES)")
        try:
            lines = await run_in_threadpool(read_batch_input, path.read_bytes(),
                                            max_lines=service.settings.max_batch_prediction_lines,
                                            max_chars=service.settings.max_text_chars)
        except BatchInputError as err:
            raise HTTPException(422, f"{safe_filename(file.filename or 'the file')}: {err}") from None
        if kind == "fill_mask":
            _check_masks(service, lines)
        await run_in_threadpool(service.jobs.ping)  # records away: 503 before anything is stored
        sha = await run_in_threadpool(service.store.blobs.put, path)
    cut = truncate or service.settings.auto_truncate  # decided now: the job answers as its upload was told
    job = service.jobs.create(PredictRequest(sha, len(lines), kind, tuple(names), top_k,
                                             safe_filename(file.filename or "input.jsonl"), truncate=cut,
                                             submitted_by=role, request_id=request_id))
    queue_job(service, job.id, retry="upload the file again later")
    return BatchAccepted(job_id=job.id, lines=len(lines), kind=kind, tasks=names, input_sha256=sha, truncate=cut)


@router.delete("/{job_id}", response_model=JobOut)
def cancel_batch_prediction(*, service: ServiceDep, job_id: str) -> JobOut:
    """Cancel a batch prediction: a queued one at once, a running one after its current batch of lines."""
    job = named_job(service, job_id)
    job_id = job.id
    if job.kind != "predict":
        raise HTTPException(409, f"job {job_id} is a {job.kind} job, not a batch prediction; cancel it with "
                                 f"DELETE /v1/jobs/{job_id} (management token)")
    if job.state in TERMINAL:
        raise HTTPException(409, f"job {job_id} already ended ({job.state})")
    return JobOut(**dataclasses.asdict(service.jobs.update(job_id, **cancel_fields(job))))


def _check_caps(service, role: str | None) -> None:
    """429 when the batch predictions queued or running, of this token or in all, are at their caps: a token that
    may only read can never fill the queue the adaptations share (they also run first: job_records' BATCH_LANE)."""
    settings = service.settings
    pending = [j for j in service.jobs.list(limit=10_000, where=JobFilter(kind="predict")) if j.state in PENDING]
    mine = [j for j in pending if j.submitted_by == role]
    for count, cap, setting, whose in ((len(mine), settings.max_queued_batch_jobs_per_token,
                                        "DAS_MAX_QUEUED_BATCH_JOBS_PER_TOKEN", "of this token"),
                                       (len(pending), settings.max_queued_batch_jobs, "DAS_MAX_QUEUED_BATCH_JOBS",
                                        "in all")):
        if count >= cap:
            raise HTTPException(429, f"{count} batch predictions {whose} are queued or running, the most allowed "
                                     f"({setting}={cap}); wait for one to end (GET /v1/jobs?kind=predict)",
                                headers={"Retry-After": "30"})


def _task_names(service, kind: str, tasks: str | None) -> list[str]:
    """The tasks a predict batch answers: those named (each registered), or every task served now."""
    if kind != "predict":
        if tasks is not None:
            raise HTTPException(422, f"tasks apply to kind predict only, not {kind}; leave the field out")
        return []
    if tasks is None:
        current = service.holder.current
        names = sorted(current.tasks.tasks) if current is not None else []
        if not names:
            raise HTTPException(409, "no end task is served yet; register one with POST /v1/tasks, or name the "
                                     "tasks to answer", headers={"Retry-After": "5"})
        return names
    names = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    if not names:
        raise HTTPException(422, "tasks names no task; give task names separated by commas, or leave the field out")
    store = TaskStore(service.store)
    for name in names:
        try:
            registered = store.exists(task_name(name))
        except InvalidName as err:
            raise HTTPException(422, f"tasks: {err}") from None
        if not registered:
            raise HTTPException(422, f"tasks: no task {name!r} is registered (GET /v1/tasks lists them)")
    return names


def _check_masks(service, lines: list[BatchLine]) -> None:
    """Kind fill_mask: every line holds the mask token of the version serving now."""
    current = service.holder.current
    if current is None:
        raise HTTPException(503, "no version is loaded yet, so the mask token is unknown; retry shortly",
                            headers={"Retry-After": "2"})
    if current.kind != "masked":
        raise HTTPException(409, f"{current.version} is a {current.kind} language model: it has no mask token to "
                                 "fill; upload with kind=embed or kind=predict (generation is POST /v1/completions)")
    for line in lines:
        if current.mask_token not in line.text:
            raise HTTPException(422, f'line {line.number}: "text" holds no mask token {current.mask_token!r}')
