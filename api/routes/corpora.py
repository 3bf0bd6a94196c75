"""POST /v1/corpora: upload a domain corpus and queue its adaptation (the checks are pipeline.corpus_intake's)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from job_records import PENDING, AdaptRequest
from pipeline.corpus_intake import IntakeRefused, check_corpus, check_request, job_limits, too_large

from ..deps import ManagementAuth, RequestId, ServiceDep
from ..queueing import queue_job
from ..schemas import CorpusAccepted
from ..uploads import safe_filename, save_upload, setting_form_fields, upload_dir

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], dependencies=[ManagementAuth])


@router.post("", status_code=202, response_model=CorpusAccepted)
@setting_form_fields
async def upload_corpus(
    *, service: ServiceDep, request_id: RequestId,
    file: Annotated[UploadFile, File(description="UTF-8 text, one document per line, or JSONL with 'text'")],
    domain: Annotated[str, Form(description="name of the domain, e.g. clinical")],
    force: Annotated[bool, Form(description="activate the new version even if the forgetting gate rejects it "
                                            "(the gate's decision is still recorded)")] = False,
    overrides: dict[str, Any],
) -> CorpusAccepted:
    """Check the corpus, store it by digest, queue an adaptation job; answer only once it is queued.

    Every other form field is a training setting (a DASConfig field); those not sent take an upload's defaults
    (das_formats.config.UPLOAD_DEFAULTS over DASConfig's).
    """
    limits = await run_in_threadpool(job_limits, service.settings, service.store)
    try:  # before a byte is stored or a job exists
        config = check_request(domain, overrides, limits=limits, train_procs=service.settings.train_procs)
    except IntakeRefused as err:
        raise HTTPException(err.status, str(err)) from None
    settings = config.to_dict() | ({"force": True} if force else {})  # pipeline.adaptation.job_config reads it
    filename = safe_filename(file.filename or "")
    limit = service.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=upload_dir(service)) as tmp:
        path = Path(tmp) / ("corpus" + Path(filename).suffix.lower())  # the suffix tells JSONL from text
        size, corpus_id = await save_upload(file, path, limit, too_large(limit), digest=True)
        try:
            corpus = await run_in_threadpool(check_corpus, path, filename, size, config)
        except IntakeRefused as err:
            raise HTTPException(err.status, str(err)) from None
        documents = len(corpus.documents)
        await run_in_threadpool(service.jobs.ping)  # records away: 503 before anything is stored
        known = service.store.blobs.has(corpus_id)
        info = await run_in_threadpool(service.store.blobs.put_corpus, path, documents, filename, corpus_id)
    pending = next((j for j in service.jobs.list(limit=1000) if j.state in PENDING
                    and j.corpus_id == info.sha256 and j.domain == domain and j.settings == settings), None)
    if pending is not None:
        return CorpusAccepted(job_id=pending.id, corpus_id=info.sha256, documents=documents,
                              corpus_known=known, duplicate_of_pending_job=True)
    job = service.jobs.create(AdaptRequest(domain, info.sha256, documents, settings, info.filename,
                                           request_id=request_id))
    queue_job(service, job.id)
    return CorpusAccepted(job_id=job.id, corpus_id=info.sha256, documents=documents, corpus_known=known,
                          duplicate_of_pending_job=False)
