"""Inference without a domain id: fill-mask and embeddings, micro-batched."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from das_engine.texts import unicode_problem
from serving.errors import InputError, NotReady, QueueFull

from ..deps import ServiceDep
from ..schemas import EmbeddingsOut, FillMaskIn, FillMaskOut, TextsIn

router = APIRouter(prefix="/v1", tags=["inference"])  # the inference token: api.deps.read_auth, app-wide


def _check_limits(service, kind: str, texts: list[str]) -> None:
    """What can be counted without the tokenizer: texts, characters, mask tokens (serving counts the tokens)."""
    settings = service.settings
    if len(texts) > settings.max_texts:
        raise HTTPException(422, f"at most {settings.max_texts} texts per request, got {len(texts)}")
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"text {i} is empty")
        if len(text) > settings.max_text_chars:
            raise HTTPException(422, f"text {i} has {len(text)} characters; the limit is {settings.max_text_chars}")
        problem = unicode_problem(text)  # a lone surrogate sent as a JSON escape
        if problem:
            raise HTTPException(422, f"text {i} {problem}")
    model = service.holder.current
    mask = getattr(model, "mask_token", None)
    if kind == "fill_mask" and mask:
        masks = sum(text.count(mask) for text in texts)  # the answer holds top_k candidates for each
        if masks > settings.max_masks_per_request:
            raise HTTPException(422, f"the request holds {masks} mask tokens; the limit is "
                                     f"{settings.max_masks_per_request} per request (DAS_MAX_MASKS_PER_REQUEST)")


async def _answer(service, kind: str, texts: list[str], top_k: int = 5):
    _check_limits(service, kind, texts)
    settings = service.settings
    try:
        future = service.batcher.submit(kind, texts, top_k, max_tokens=settings.max_request_tokens,
                                        max_masks=settings.max_masks_per_request)
    except QueueFull:
        raise HTTPException(503, "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}) from None
    try:
        return await asyncio.wrap_future(future)
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    except NotReady as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "2"}) from None


def _json(body: dict) -> Response:
    """The answer as JSON, as built: serving makes it in the documented shape (FillMaskOut,
    EmbeddingsOut), and validating thousands of floats again per request would cost more than the model."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.post("/fill-mask", response_model=FillMaskOut)
async def fill_mask(*, service: ServiceDep, body: FillMaskIn) -> Response:
    """Top-k tokens for every mask token in each text (use the model's mask token, see /v1/models/current)."""
    version, results = await _answer(service, "fill_mask", body.texts, body.top_k)
    return _json({"version": version, "results": results})


@router.post("/embeddings", response_model=EmbeddingsOut)
async def embeddings(*, service: ServiceDep, body: TextsIn) -> Response:
    """Mean-pooled, L2-normalised last hidden states."""
    version, vectors = await _answer(service, "embed", body.texts)
    return _json({"version": version, "dimensions": len(vectors[0]), "embeddings": vectors})
