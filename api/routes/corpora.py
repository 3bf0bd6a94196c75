"""POST /v1/corpora: upload a domain corpus and queue its adaptation."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from das_engine.config import DASConfig
from das_engine.corpus import CorpusError, read_corpus
from model_store.names import InvalidName, domain_name

from ..deps import ManagementAuth, ServiceDep
from ..schemas import CorpusAccepted

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], dependencies=[ManagementAuth])
CHUNK = 1 << 20


@router.post("", status_code=202, response_model=CorpusAccepted)
async def upload_corpus(
    *, service: ServiceDep,
    file: Annotated[UploadFile, File(description="UTF-8 text, one document per line, or JSONL with 'text'")],
    domain: Annotated[str, Form(description="name of the domain, e.g. clinical")],
    steps: Annotated[int | None, Form()] = None,
    batch_size: Annotated[int | None, Form()] = None,
    max_length: Annotated[int | None, Form()] = None,
    mask_mode: Annotated[str | None, Form()] = None,
) -> CorpusAccepted:
    """Check the corpus, store it by digest, queue an adaptation job; answer only once it is queued."""
    try:
        domain_name(domain)
        overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, max_length=max_length,
                                           mask_mode=mask_mode).items() if v is not None}
        settings = DASConfig(**overrides).to_dict()
    except (InvalidName, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    limit = service.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=_tmp_root(service)) as tmp:
        path = Path(tmp) / "corpus"
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
            raise HTTPException(422, str(err).replace(str(path), file.filename or "upload")) from None
        corpus_id = digest.hexdigest()
        known = service.store.has_corpus(corpus_id)
        info = await run_in_threadpool(service.store.put_corpus, path, len(documents), file.filename or "")
    pending = next((j for j in service.jobs.list(limit=1000) if j.state in ("queued", "running")
                    and j.corpus_id == info.sha256 and j.domain == domain and j.settings == settings), None)
    if pending is not None:
        return CorpusAccepted(job_id=pending.id, corpus_id=info.sha256, documents=len(documents),
                              corpus_known=known, duplicate_of_pending_job=True)
    job = service.jobs.create(domain, info.sha256, len(documents), settings)
    try:
        service.submit(job.id)
    except Exception as err:  # noqa: BLE001 - the broker is away: the job must not look queued
        service.jobs.update(job.id, state="failed", error=f"could not queue the job: {err}")
        raise HTTPException(503, "the job queue is unavailable; try again later",
                            headers={"Retry-After": "5"}) from None
    return CorpusAccepted(job_id=job.id, corpus_id=info.sha256, documents=len(documents), corpus_known=known,
                          duplicate_of_pending_job=False)


def _tmp_root(service) -> str:
    root = Path(service.settings.work_dir) / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)
