"""End tasks: register one (a job fits it on the live model), inspect, delete, and predict with no domain id."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from das_formats.task_data import TaskDataError, TaskSettings
from job_records import PENDING, Job, cancel_fields
from model_store.names import InvalidName
from model_store.store import StoreError
from model_store.tasks import TASK_KINDS, TaskDefinition, TaskExists, TaskNotFound, TaskStore, task_name
from pipeline.task_intake import check_task_files, store_task_data
from serving.errors import InputError, NotReady, QueueFull, TaskNotServed
from worker.task_registry import fit_jobs, fit_request

from ..deps import ManagementAuth, RequestId, ServiceDep
from ..paging import Cursor, Limit, decode_cursor, page
from ..queueing import queue_job
from ..schemas import FitOut, PredictIn, PredictOut, TaskAccepted, TaskOut, TaskPredictOut
from ..texts import check_texts, json_response
from ..uploads import safe_filename, save_upload, setting_form_fields, upload_dir
from ..versions import VersionQuery, served_version

router = APIRouter(prefix="/v1", tags=["tasks"])
SETTING_FIELDS = [f.name for f in dataclasses.fields(TaskSettings)]
FORM_FIELDS = {"name", "kind", "train", "eval", "replace", *SETTING_FIELDS}
RETRY_FITTING_S = 5


def _tasks(service) -> TaskStore:
    return TaskStore(service.store)


def _definition(service, name: str) -> TaskDefinition:
    """The task's definition; 404 for no such task, 409 for one whose definition cannot be read."""
    try:
        return _tasks(service).definition(name)
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    except TaskNotFound as err:
        raise HTTPException(404, str(err)) from None
    except StoreError as err:  # damaged: only this task is affected, and DELETE still works
        raise HTTPException(409, f"task {name!r} is damaged: {err}") from None


def _task_setting_fields(endpoint):
    return setting_form_fields(endpoint, TaskSettings)


@router.post("/tasks", status_code=202, response_model=TaskAccepted, dependencies=[ManagementAuth])
@_task_setting_fields
async def register_task(
    *, service: ServiceDep, request: Request, request_id: RequestId,
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
    filenames = (safe_filename(train.filename or "train.jsonl"),
                 safe_filename(eval.filename or "eval.jsonl") if eval else "eval.jsonl")
    limit = service.settings.max_task_upload_bytes

    async def save(upload: UploadFile, path: Path) -> Path:
        await save_upload(upload, path, limit, f"{path.stem} exceeds the limit of {limit} bytes "
                                               "(DAS_MAX_TASK_UPLOAD_BYTES)")
        return path

    with tempfile.TemporaryDirectory(dir=upload_dir(service)) as tmp:
        train_path = await save(train, Path(tmp) / "train.jsonl")
        eval_path = await save(eval, Path(tmp) / "eval.jsonl") if eval else None
        try:
            train_set, eval_set = await run_in_threadpool(check_task_files, kind, settings, train_path, eval_path,
                                                          service.settings, filenames)
        except TaskDataError as err:
            raise HTTPException(422, str(err)) from None
        await run_in_threadpool(service.jobs.ping)  # records away: 503 before anything is stored
        definition = await run_in_threadpool(
            store_task_data, service.store, name, kind, settings, (train_path, train_set, filenames[0]),
            (eval_path, eval_set, filenames[1]) if eval_path else None)
    job = service.jobs.create(fit_request(definition, request_id))
    try:
        stored = await run_in_threadpool(tasks.put_definition, dataclasses.replace(definition, job_id=job.id),
                                         replace)
    except TaskExists as err:  # registered by a concurrent request meanwhile
        service.jobs.update(job.id, state="cancelled", error=str(err))
        raise HTTPException(409, str(err)) from None
    _supersede_fits(service, name, f"task {name!r} was registered again (job {job.id} fits the new registration)",
                    keep=stored.generation)
    queue_job(service, job.id, retry="register again later")
    service.tasks_changed()  # replicas list the task as pending now
    return TaskAccepted(job_id=job.id, task=_out(service, stored))


def _supersede_fits(service, name: str, why: str, keep: str | None = None) -> None:
    """The task's pending fits (but those of generation `keep`) no longer stand: a queued one ends now, a running
    one at its next step; both end `cancelled`, saying why."""
    for job in fit_jobs(service.jobs, name):
        if job.state in PENDING and job.generation != keep:
            service.jobs.update(job.id, **cancel_fields(job, f"superseded: {why}"))


def _latest_fit(fits: list[Job], definition: TaskDefinition) -> Job | None:
    """The newest fit job of this registration of the task, among fit jobs listed newest first."""
    return next((j for j in fits if j.task == definition.name and j.generation == definition.generation), None)


def _out(service, definition: TaskDefinition, fits: list[Job] | None = None) -> TaskOut:
    """A task as the API shows it; `fits`: the fit jobs, newest first (read here when not given)."""
    tasks = _tasks(service)
    history = [dataclasses.asdict(m) for m in tasks.history(definition)]
    served = service.holder.current
    serving, problem = None, None
    if served is not None:
        if definition.name in served.tasks.tasks:
            serving = served.tasks.tasks[definition.name].describe(served.version)
        problem = served.tasks.problem(definition.name)
    fit = _latest_fit(fit_jobs(service.jobs, definition.name) if fits is None else fits, definition)
    return TaskOut(**dataclasses.asdict(definition), generation=definition.generation, history=history,
                   serving=serving, damaged=problem if problem not in (None, "pending") else None,
                   last_fit=FitOut(job_id=fit.id, state=fit.state, version=fit.parent, error=fit.error,
                                   note=fit.note) if fit else None,
                   problems=tasks.problems(definition))


@router.get("/tasks", response_model=list[TaskOut])
def list_tasks(
    *, service: ServiceDep, request: Request, response: Response, limit: Limit = 100, cursor: Cursor = None,
    kind: Annotated[str | None, Query(description=f"only tasks of this kind: {', '.join(TASK_KINDS)}")] = None,
) -> list[TaskOut]:
    """Registered tasks by name, with their scores on each backbone version they were fitted on, filtered before
    paging; the next page's cursor is in X-Next-Cursor, its URL in Link (rel="next"), both absent on the last page.
    Tasks whose definition cannot be read are named in the X-Damaged-Tasks header (GET or DELETE them by name)."""
    if kind is not None and kind not in TASK_KINDS:
        raise HTTPException(422, f"unknown kind {kind!r}; allowed: {', '.join(TASK_KINDS)}")
    after = decode_cursor(cursor, "tasks", task_name) if cursor is not None else ""
    definitions, damaged = _tasks(service).scan()
    if damaged:
        response.headers["X-Damaged-Tasks"] = ",".join(sorted(damaged))
    kept = [d for d in definitions if d.name > after and (kind is None or d.kind == kind)]
    kept = page(request, response, "tasks", kept[:limit + 1], limit, lambda d: d.name)
    fits = fit_jobs(service.jobs)  # one read of the job records for every task
    return [_out(service, d, fits) for d in kept]


@router.get("/tasks/{name}", response_model=TaskOut)
def get_task(*, service: ServiceDep, name: str) -> TaskOut:
    """Labels, kind, settings, eval scores per backbone version (`history`), and the model serving it now."""
    return _out(service, _definition(service, name))


@router.delete("/tasks/{name}", status_code=204, dependencies=[ManagementAuth])
def delete_task(*, service: ServiceDep, name: str) -> Response:
    """Forget a task and all its models (a damaged one too); predictions with it answer 404 from then on."""
    try:
        _tasks(service).delete(name)
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    except TaskNotFound as err:
        raise HTTPException(404, str(err)) from None
    _supersede_fits(service, name, f"task {name!r} was deleted")
    service.tasks_changed()
    return Response(status_code=204)


def _not_served(service, name: str, current) -> HTTPException:
    """Why a task has no model to answer with: 404 (no such task); 409 damaged; 409 with Retry-After only while a
    fit for it is queued or running (named); otherwise 409 saying what happened and what to do."""
    definition = _definition(service, name)
    version = current.version if current is not None else None
    problem = current.tasks.problem(name) if current is not None else None
    if problem not in (None, "pending"):
        return HTTPException(409, f"task {name!r} is {problem}")
    fit = _latest_fit(fit_jobs(service.jobs, name), definition)
    retry = {"Retry-After": str(RETRY_FITTING_S)}
    if fit is not None and fit.state in PENDING and fit.parent in (None, version):
        return HTTPException(409, f"task {name!r} has no model on {version} yet: fit job {fit.id} is {fit.state}; "
                                  f"retry when it ends (GET /v1/jobs/{fit.id})", headers=retry)
    if fit is not None and fit.state == "succeeded" and fit.parent == version and version is not None:
        if _tasks(service).sound_model(version, name, definition.generation) is not None:
            return HTTPException(409, f"task {name!r} was fitted on {version} by job {fit.id} and is being loaded; "
                                      "retry shortly", headers=retry)
        what = f"the model its last fit (job {fit.id}) made on {version} is gone (set aside by `das repair`?)"
    elif fit is not None and fit.state in ("failed", "rejected", "cancelled"):
        what = f"its last fit (job {fit.id}) ended {fit.state}: {fit.error or fit.note or 'no reason recorded'}"
    else:
        what = "no fit for it is queued or running"
    return HTTPException(409, f"task {name!r} has no model on {version}: {what}; register it again (replace=true) "
                              "to fit it on the active version, or delete it")


def _check_answer_size(service, current, texts: list[str], names: list[str], top_k: int | None) -> None:
    """Refuse, before any work, an answer of more label scores (texts x tasks x labels shown) than allowed."""
    shown = sum(min(top_k or len(labels), len(labels)) for labels in (current.tasks.tasks[n].labels for n in names))
    scores, limit = len(texts) * shown, service.settings.max_predict_scores
    if scores > limit:
        raise HTTPException(422, f"the answer would hold {scores} label scores ({len(texts)} texts x {shown} labels "
                                 f"of {len(names)} task(s)), more than the {limit} allowed (DAS_MAX_PREDICT_SCORES); "
                                 "send fewer texts or tasks, or ask for each task's top_k labels")


async def _predict(service, texts: list[str], names: list[str], truncate: bool = False,
                   model=None, top_k: int | None = None) -> tuple[str, dict[str, Any]]:
    """(version, {"results", "task_models", "truncated"}); a text over the model's maximum sequence is a 422 unless
    `truncate` or DAS_AUTO_TRUNCATE. `model`: the version the request names (api.versions.served_version), with its own
    task models; None: the one serving. `top_k`: each task's top_k labels scored (None: all)."""
    check_texts(service, "predict", texts)
    current = model if model is not None else service.holder.current
    missing = [n for n in names if current is None or n not in current.tasks.tasks]
    for name in missing:
        raise await run_in_threadpool(_not_served, service, name, current)
    _check_answer_size(service, current, texts, names, top_k)
    try:
        future = service.batcher.submit("predict", texts, top_k or 0,
                                        max_tokens=service.settings.max_request_tokens,
                                        tasks=tuple(names), truncate=truncate or service.settings.auto_truncate,
                                        model=model)
    except QueueFull:
        raise HTTPException(503, "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}) from None
    try:
        version, answers = await asyncio.wrap_future(future)
        return version, {**answers, "truncated": future.truncated}
    except TaskNotServed as err:  # the version swapped under the request, to one without that task's model
        raise (await run_in_threadpool(_not_served, service, names[0],
                                       model if model is not None else service.holder.current)
               if err.pending else HTTPException(409 if err.damaged else 404, str(err))) from None
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    except NotReady as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "2"}) from None


@router.post("/tasks/{name}/predict", response_model=TaskPredictOut)
async def predict_task(*, service: ServiceDep, name: str, body: PredictIn, version: VersionQuery = None) -> Response:
    """One task's label and a score per label for each text, with the backbone version and task model that answered."""
    model = await served_version(service, version, body.version)
    version, answers = await _predict(service, body.texts, [name], body.truncate, model, body.top_k)
    return json_response({"version": version, "task": name, "task_model": answers["task_models"][name],
                  "results": [per_text[name] for per_text in answers["results"]], "truncated": answers["truncated"]})


@router.post("/predict", response_model=PredictOut)
async def predict_tasks(*, service: ServiceDep, body: PredictIn, version: VersionQuery = None) -> Response:
    """Several tasks from one backbone pass (`tasks` omitted: every task served now)."""
    model = await served_version(service, version, body.version)
    names = body.tasks
    if names is None:
        current = model if model is not None else service.holder.current
        names = sorted(current.tasks.tasks) if current is not None else []
        if not names:
            raise HTTPException(409, "no end task is served yet; register one with POST /v1/tasks",
                                headers={"Retry-After": str(RETRY_FITTING_S)})
    version, answers = await _predict(service, body.texts, list(dict.fromkeys(names)), body.truncate, model,
                                      body.top_k)
    return json_response({"version": version, **answers})
