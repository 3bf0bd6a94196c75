"""POST /v1/corpora: upload a domain corpus and queue its adaptation."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from das_engine.config import (
    ConfigLimits,
    LimitError,
    check_limits,
    corpus_problem,
    model_max_length,
    ranks_problem,
    setting_fields,
    upload_config,
)
from das_engine.corpus import CorpusError, read_corpus
from job_records import PENDING, AdaptRequest
from model_store.names import InvalidName, domain_name

from ..deps import ManagementAuth, ServiceDep
from ..schemas import CorpusAccepted
from ..service import UPLOADS
from .jobs import queue_job

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], dependencies=[ManagementAuth])
CHUNK = 1 << 20
log = logging.getLogger(__name__)
# which setting sets each limit of ConfigLimits (named in the 422)
LIMIT_SETTINGS = {"max_steps": "DAS_MAX_STEPS", "max_batch_size": "DAS_MAX_TRAIN_BATCH_SIZE",
                  "max_length": "DAS_MAX_TRAIN_LENGTH", "max_tokens_per_batch": "DAS_MAX_TRAIN_TOKENS_PER_BATCH",
                  "max_importance_samples": "DAS_MAX_IMPORTANCE_SAMPLES", "model_max_length": "the active model"}
MAX_FILENAME_CHARS = 128


def setting_form_fields(endpoint: Callable[..., Awaitable[Any]],
                        settings_class: type | None = None) -> Callable[..., Awaitable[Any]]:
    """Give an endpoint one optional form field per field of `settings_class` (DASConfig unless told);
    it receives the ones sent as `overrides`."""
    fields = setting_fields(settings_class)
    signature = inspect.signature(endpoint, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]

    def form_field(f) -> inspect.Parameter:
        kind = Literal[f.choices] if f.choices else f.type
        info = Form(description=f"{f.help} (default: {f.default})")
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[kind | None, info])

    async def wrapper(**kwargs: Any) -> Any:
        sent = {f.name: kwargs.pop(f.name) for f in fields}
        return await endpoint(**kwargs, overrides={k: v for k, v in sent.items() if v is not None})

    params = own + [form_field(f) for f in fields]
    wrapper.__name__, wrapper.__doc__ = endpoint.__name__, endpoint.__doc__
    wrapper.__signature__ = signature.replace(parameters=params)  # what FastAPI reads
    return wrapper


@router.post("", status_code=202, response_model=CorpusAccepted)
@setting_form_fields
async def upload_corpus(
    *, service: ServiceDep,
    file: Annotated[UploadFile, File(description="UTF-8 text, one document per line, or JSONL with 'text'")],
    domain: Annotated[str, Form(description="name of the domain, e.g. clinical")],
    force: Annotated[bool, Form(description="activate the new version even if the forgetting gate rejects it "
                                            "(the gate's decision is still recorded)")] = False,
    overrides: dict[str, Any],
) -> CorpusAccepted:
    """Check the corpus, store it by digest, queue an adaptation job; answer only once it is queued.

    Every other form field is a training setting (a DASConfig field); those not sent take an upload's defaults
    (das_engine.config.UPLOAD_DEFAULTS over DASConfig's).
    """
    try:
        domain_name(domain)
        config = upload_config(overrides)
    except (InvalidName, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    limits = await run_in_threadpool(job_limits, service)
    try:  # before a byte is stored or a job exists
        check_limits(config, limits)
    except LimitError as err:
        raise HTTPException(422, f"{err} (set by {LIMIT_SETTINGS[err.limit_name]})") from None
    problem = ranks_problem(config, service.settings.train_procs)
    if problem:
        raise HTTPException(422, f"{problem} (DAS_TRAIN_PROCS={service.settings.train_procs})")
    settings = config.to_dict() | ({"force": True} if force else {})  # worker.adaptation.job_config reads it
    filename = safe_filename(file.filename or "")
    limit = service.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=_tmp_root(service)) as tmp:
        path = Path(tmp) / ("corpus" + Path(filename).suffix.lower())  # the suffix tells JSONL from text
        size, digest = 0, hashlib.sha256()
        with open(path, "wb") as out:  # stream to disk, never the whole upload in memory
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"the corpus exceeds the upload limit of {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise HTTPException(422, "the uploaded file is empty")
        try:
            documents = await run_in_threadpool(read_corpus, path)
        except CorpusError as err:
            raise HTTPException(422, str(err).replace(str(path), filename)) from None
        problem = corpus_problem(config, documents)
        if problem:
            raise HTTPException(422, problem)
        corpus_id = digest.hexdigest()
        await run_in_threadpool(service.jobs.ping)  # records away: 503 before anything is stored
        known = service.store.has_corpus(corpus_id)
        info = await run_in_threadpool(service.store.put_corpus, path, len(documents), filename)
    pending = next((j for j in service.jobs.list(limit=1000) if j.state in PENDING
                    and j.corpus_id == info.sha256 and j.domain == domain and j.settings == settings), None)
    if pending is not None:
        return CorpusAccepted(job_id=pending.id, corpus_id=info.sha256, documents=len(documents),
                              corpus_known=known, duplicate_of_pending_job=True)
    job = service.jobs.create(AdaptRequest(domain, info.sha256, len(documents), settings, info.filename))
    queue_job(service, job.id)
    return CorpusAccepted(job_id=job.id, corpus_id=info.sha256, documents=len(documents), corpus_known=known,
                          duplicate_of_pending_job=False)


def job_limits(service) -> ConfigLimits:
    """What a job may ask for: the service's DAS_MAX_* settings and the active model's positions."""
    s = service.settings
    return ConfigLimits(max_steps=s.max_steps, max_batch_size=s.max_train_batch_size, max_length=s.max_train_length,
                        max_tokens_per_batch=s.max_train_tokens_per_batch,
                        max_importance_samples=s.max_importance_samples, model_max_length=_active_max_length(service))


def _active_max_length(service) -> int | None:
    """Tokens a sequence may hold in the active version (its config.json; no torch); None if unreadable."""
    active = service.store.active_id()
    if active is None:
        return None
    try:
        config = json.loads((service.store.model_dir(active, verify=False) / "config.json").read_text("utf-8"))
    except Exception as err:  # noqa: BLE001 - the store's own errors surface when the corpus is stored
        log.warning("cannot read the config of %s (%s: %s); max_length is checked against the settings only",
                    active, type(err).__name__, err)
        return None
    return model_max_length(config) if isinstance(config, dict) else None


def safe_filename(name: str) -> str:
    """The base name of an uploaded file, reduced to safe characters (it is kept in records and manifests)."""
    base = re.split(r"[\\/]", name)[-1]  # a client may send a path, with either separator
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")  # no control characters, quotes, ..; no leading dots
    if len(base) > MAX_FILENAME_CHARS:
        suffix = Path(base).suffix[:16]
        base = base[: MAX_FILENAME_CHARS - len(suffix)] + suffix
    return base or "upload"


def _tmp_root(service) -> str:
    root = Path(service.settings.work_dir) / UPLOADS
    root.mkdir(parents=True, exist_ok=True)
    return str(root)
