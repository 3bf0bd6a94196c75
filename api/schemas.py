"""Request and response models of the REST API (v1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class CorpusAccepted(BaseModel):
    job_id: str
    corpus_id: str = Field(description="sha256 of the uploaded bytes")
    documents: int
    corpus_known: bool = Field(description="the store already held these exact bytes")
    duplicate_of_pending_job: bool = Field(description="an equal job (corpus, domain, settings) was already pending")


class JobProgress(BaseModel):
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    losses: dict[str, float] = {}
    tokens_per_s: float | None = None
    eta_s: float | None = None


class JobOut(BaseModel):
    id: str
    seq: int
    state: str
    domain: str
    corpus_id: str
    corpus_documents: int
    settings: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    progress: JobProgress
    parent: str | None
    version: str | None
    error: str | None
    attempts: int
    cancel_requested: bool


class CorpusRef(BaseModel):
    sha256: str
    size: int
    documents: int
    filename: str = ""


class ModelOut(BaseModel):
    id: str
    parent: str | None
    status: str
    created: str
    domain: str | None
    corpus: CorpusRef | None
    base_model: str
    settings: dict[str, Any]
    metrics: dict[str, Any]
    evaluation: dict[str, Any]
    package_version: str


class CurrentModel(ModelOut):
    serving: str | None = Field(description="the version this API process answers with right now")
    mask_token: str | None


class TextsIn(BaseModel):
    texts: list[str] = Field(min_length=1, description="no domain id needed: any text")


class FillMaskIn(TextsIn):
    top_k: int = Field(5, ge=1, le=50)


class Candidate(BaseModel):
    token: str
    token_id: int
    score: float


class FillMaskOut(BaseModel):
    version: str
    results: list[list[list[Candidate]]] = Field(description="per text, per mask token, the top_k candidates")


class EmbeddingsOut(BaseModel):
    version: str
    dimensions: int
    embeddings: list[list[float]]
