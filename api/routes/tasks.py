"""End tasks: register one (a job fits it on the live model), inspect, delete, and predict with no domain id."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from das_engine.task_data import TaskDataError, TaskSettings
from model_store.names import InvalidName
from model_store.tasks import TaskDefinition, TaskExists, TaskNotFound, TaskStore, task_name
from serving.errors import InputError, NotReady, QueueFull, TaskNotServed
from worker.task_registry import fit_request, read_task_sets, store_task_data

from ..deps import InferenceAuth, ManagementAuth, ServiceDep
from ..schemas import PredictIn, PredictOut, TaskAccepted, TaskOut, TaskPredictOut
from ..service import UPLOADS
from .corpora import CHUNK, safe_filename, setting_form_fields
from .inference import _check_limits, _json
from .jobs import queue_job

router = APIRouter(prefix="/v1", tags=["tasks"])
SETTING_FIELDS = [f.name for f in dataclasses.fields(TaskSettings)]
FORM_FIELDS = {"name", "kind", "train", "eval", "replace", *SETTING_FIELDS}
RETRY_FITTING_S = 5


def _tasks(service) -> TaskStore:
    return TaskStore(service.store)


def _definition(service, name: str) -> TaskDefinition:
    try:
        return _tasks(service).definition(name)
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    except TaskNotFound as err:
        raise HTTPException(404, str(err)) from None


async def _save_upload(service, upload: UploadFile, path: Path) -> Path:
    """Stream one upload to disk, bounded by DAS_MAX_TASK_UPLOAD_BYTES."""
    size, limit = 0, service.settings.max_task_upload_bytes
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"{path.stem} exceeds the limit of {limit} bytes (DAS_MAX_TASK_UPLOAD_BYTES)")
            out.write(chunk)
    return path


def _task_setting_fields(endpoint):
    return setting_form_fields(endpoint, TaskSettings)


@router.post("/tasks", status_code=202, response_model=TaskAccepted, dependencies=[ManagementAuth])
@_task_setting_fields
async def register_task(
    *, service: ServiceDep, request: Request,
    name: Annotated[str, Form(description="1-64 lowercase letters, digits, '_' or '-'")],
    train: Annotated[UploadFile, File(description='JSONL, one {"text", "label"} per line')],
    eval: Annotated[UploadFile | None, File(description="optional JSONL eval set: scored on every version, "
                                                         "and the forgetting gate's evidence")] = None,
    kind: Annotated[Literal["probe", "finetune"], Form(
        description="probe: a classifier on frozen pooled features; finetune: all parameters tuned")] = "probe",
    replace: Annotated[bool, Form(description="overwrite a task of this name")] = False,
    overrides: dict[str, Any],
) -> TaskAccepted:
    """Register an end task and queue a job that fits it on the active version. Every other form field
    is a setting (TaskSettings); those not sent keep their defaults. Nothing is stored unless every
    check passes."""
    unknown = sorted(set((await request.form()).keys()) - FORM_FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown fields {unknown}; known: {sorted(FORM_FIELDS)}")
    try:
        task_name(name)
        settings = TaskSettings.from_dict(overrides)
    except (InvalidName, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    tasks = _tasks(service)
    if not replace and await run_in_threadpool(tasks.exists, name):
        raise HTTPException(409, f"a task named {name!r} exists; send replace=true to overwrite it")
    root = Path(service.settings.work_dir) / UPLOADS
    root.mkdir(parents=True, exist_ok=True)
    filenames = (safe_filename(train.filename or "train.jsonl"),
                 safe_filename(eval.filename or "eval.jsonl") if eval else "eval.jsonl")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        train_path = await _save_upload(service, train, Path(tmp) / "train.jsonl")
        eval_path = await _save_upload(service, eval, Path(tmp) / "eval.jsonl") if eval else None
        try:
            train_set, eval_set = await run_in_threadpool(
                read_task_sets, train_path, eval_path, max_examples=service.settings.max_task_examples,
                max_chars=service.settings.max_task_text_chars, names=filenames)
        except TaskDataError as err:
            raise HTTPException(422, str(err)) from None
        await run_in_threadpool(service.jobs.ping)  # records away: 503 before anything is stored
        definition = await run_in_threadpool(
            store_task_data, service.store, name, kind, settings, (train_path, train_set, filenames[0]),
            (eval_path, eval_set, filenames[1]) if eval_path else None)
    job = service.jobs.create(fit_request(definition))
    try:
        stored = await run_in_threadpool(tasks.put_definition, dataclasses.replace(definition, job_id=job.id),
                                         replace)
    except TaskExists as err:  # registered by a concurrent request meanwhile
        service.jobs.update(job.id, state="cancelled", error=str(err))
        raise HTTPException(409, str(err)) from None
    queue_job(service, job.id, retry="register again later")
    service.tasks_changed()  # replicas list the task as pending now
    return TaskAccepted(job_id=job.id, task=_out(service, stored))


def _out(service, definition: TaskDefinition) -> TaskOut:
    tasks = _tasks(service)
    history = [dataclasses.asdict(m) for m in tasks.history(definition)]
    served = service.holder.current
    serving = None
    if served is not None and definition.name in served.tasks.tasks:
        serving = served.tasks.tasks[definition.name].describe(served.version)
    return TaskOut(**dataclasses.asdict(definition), generation=definition.generation, history=history,
                   serving=serving)


@router.get("/tasks", response_model=list[TaskOut], dependencies=[InferenceAuth])
def list_tasks(*, service: ServiceDep) -> list[TaskOut]:
    """Every registered task, with its scores on each backbone version it was fitted on."""
    return [_out(service, d) for d in _tasks(service).definitions()]


@router.get("/tasks/{name}", response_model=TaskOut, dependencies=[InferenceAuth])
def get_task(*, service: ServiceDep, name: str) -> TaskOut:
    """Labels, kind, settings, eval scores per backbone version (`history`), and the model serving it now."""
    return _out(service, _definition(service, name))


@router.delete("/tasks/{name}", status_code=204, dependencies=[ManagementAuth])
def delete_task(*, service: ServiceDep, name: str) -> Response:
    """Forget a task and all its models; predictions with it answer 404 from then on."""
    _definition(service, name)
    try:
        _tasks(service).delete(name)
    except TaskNotFound as err:
        raise HTTPException(404, str(err)) from None
    service.tasks_changed()
    return Response(status_code=204)


async def _predict(service, texts: list[str], names: list[str]) -> tuple[str, dict[str, Any]]:
    _check_limits(service, "predict", texts)
    current = service.holder.current
    missing = [n for n in names if current is None or n not in current.tasks.tasks]
    for name in missing:  # 404 for a task nobody registered; 409 while it is fitted
        _definition(service, name)
        raise HTTPException(409, f"task {name!r} has no model for the serving version yet: it is being fitted; "
                                 f"retry shortly", headers={"Retry-After": str(RETRY_FITTING_S)})
    try:
        future = service.batcher.submit("predict", texts, max_tokens=service.settings.max_request_tokens,
                                        tasks=tuple(names))
    except QueueFull:
        raise HTTPException(503, "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}) from None
    try:
        return await asyncio.wrap_future(future)
    except TaskNotServed as err:  # the version swapped under the request, to one without that task's model
        raise HTTPException(409 if err.pending else 404, str(err),
                            headers={"Retry-After": str(RETRY_FITTING_S)} if err.pending else None) from None
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    except NotReady as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "2"}) from None


@router.post("/tasks/{name}/predict", response_model=TaskPredictOut, dependencies=[InferenceAuth])
async def predict_task(*, service: ServiceDep, name: str, body: PredictIn) -> Response:
    """One task's label and a score per label for each text, with the backbone version and task model that answered."""
    version, answers = await _predict(service, body.texts, [name])
    return _json({"version": version, "task": name, "task_model": answers["task_models"][name],
                  "results": [per_text[name] for per_text in answers["results"]]})


@router.post("/predict", response_model=PredictOut, dependencies=[InferenceAuth])
async def predict_tasks(*, service: ServiceDep, body: PredictIn) -> Response:
    """Several tasks from one backbone pass (`tasks` omitted: every task served now)."""
    names = body.tasks
    if names is None:
        current = service.holder.current
        names = sorted(current.tasks.tasks) if current is not None else []
        if not names:
            raise HTTPException(409, "no end task is served yet; register one with POST /v1/tasks",
                                headers={"Retry-After": str(RETRY_FITTING_S)})
    version, answers = await _predict(service, body.texts, list(dict.fromkeys(names)))
    return _json({"version": version, **answers})
