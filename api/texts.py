"""The texts of an inference request checked before they queue (count, characters, masks), run through the batcher,
and the answer written as JSON once; the inference, compatibility and task-prediction routes share them."""

from __future__ import annotations

import asyncio
import json

from fastapi import HTTPException
from fastapi.responses import Response

from das_formats.texts import unicode_problem
from serving.batcher import Answer
from serving.errors import InputError, NotReady, QueueFull, WrongKind


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


async def answer_texts(service, kind: str, texts: list[str], top_k: int = 5, truncate: bool = False, model=None,
                       special_tokens: bool = True) -> tuple[str, list, Answer]:
    """(version, answers, the batcher's Answer: `truncated` per text and `tokens`) of an inference request run
    through the batcher (serving.batcher.KINDS); a text over the model's maximum sequence is a 422 unless
    `truncate` or DAS_AUTO_TRUNCATE. A full queue or no model loaded yet is a 503 with Retry-After; fill-mask on a
    causal LM a 409 naming its kind."""
    check_texts(service, kind, texts)
    settings = service.settings
    try:
        future = service.batcher.submit(kind, texts, top_k, max_tokens=settings.max_request_tokens,
                                        max_masks=settings.max_masks_per_request,
                                        truncate=truncate or settings.auto_truncate, model=model,
                                        special_tokens=special_tokens)
    except QueueFull:
        raise HTTPException(503, "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}) from None
    try:
        version, answers = await asyncio.wrap_future(future)
    except WrongKind as err:  # fill-mask on a causal LM: the version cannot, whatever the text
        raise HTTPException(409, str(err)) from None
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    except NotReady as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "2"}) from None
    return version, answers, future


def json_response(body: dict | list) -> Response:
    """The answer as JSON, as built: serving makes it in the documented shape (FillMaskOut,
    EmbeddingsOut), and validating thousands of floats again per request would cost more than the model."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
