"""Inference without a domain id: fill-mask and embeddings, micro-batched."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from ..deps import ServiceDep
from ..schemas import EmbeddingsIn, EmbeddingsOut, FillMaskIn, FillMaskOut, OpenAIEmbeddingsOut
from ..texts import answer_texts, json_response
from ..versions import VersionQuery, served_version

router = APIRouter(prefix="/v1", tags=["inference"])  # the inference token: api.deps.read_auth, app-wide


@router.post("/fill-mask", response_model=FillMaskOut)
async def fill_mask(*, service: ServiceDep, body: FillMaskIn, version: VersionQuery = None) -> Response:
    """Top-k tokens for every mask token in each text (use the model's mask token, see /v1/models/current)."""
    model = await served_version(service, version, body.version)
    version, results, seen = await answer_texts(service, "fill_mask", body.texts, body.top_k, body.truncate, model)
    return json_response({"version": version, "results": results, "truncated": seen.truncated})


@router.post("/embeddings", response_model=EmbeddingsOut | OpenAIEmbeddingsOut)
async def embeddings(*, service: ServiceDep, body: EmbeddingsIn, version: VersionQuery = None) -> Response:
    """Mean-pooled, L2-normalised last hidden states. Sent OpenAI's form ({"input", "model"}), the answer has
    OpenAI's shape ({"object": "list", "data", "model", "usage"}) plus `version` and `truncated`."""
    model = await served_version(service, version, _named_in_body(body))
    version, vectors, seen = await answer_texts(service, "embed", body.items, truncate=body.truncate, model=model)
    if body.dimensions is not None and body.dimensions != len(vectors[0]):
        raise HTTPException(422, f"{version}'s vectors have {len(vectors[0])} dimensions, not {body.dimensions}: "
                                 f"send dimensions={len(vectors[0])} or leave it out")
    if not body.openai:
        return json_response({"version": version, "dimensions": len(vectors[0]), "embeddings": vectors,
                      "truncated": seen.truncated})
    return json_response({"object": "list", "model": version, "version": version, "truncated": seen.truncated,
                  "data": [{"object": "embedding", "index": i,
                            "embedding": _base64_floats(v) if body.encoding_format == "base64" else v}
                           for i, v in enumerate(vectors)],
                  "usage": {"prompt_tokens": seen.tokens, "total_tokens": seen.tokens}})


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _named_in_body(body: EmbeddingsIn) -> str | None:
    """The version the body names: OpenAI's `model` means what `version` means (an id or an alias)."""
    if body.model is not None and body.version is not None and body.model != body.version:
        raise HTTPException(422, f"model {body.model!r} and version {body.version!r} differ; send one of them")
    return body.model if body.model is not None else body.version
