"""The texts of an inference request checked before they queue (count, characters, masks), and the answer written
as JSON once; the inference and task-prediction routes share them."""

from __future__ import annotations

import json

from fastapi import HTTPException
from fastapi.responses import Response

from das_formats.texts import unicode_problem


def check_texts(service, kind: str, texts: list[str]) -> None:
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


def json_response(body: dict) -> Response:
    """The answer as JSON, as built: serving makes it in the documented shape (FillMaskOut,
    EmbeddingsOut), and validating thousands of floats again per request would cost more than the model."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
