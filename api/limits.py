"""Body size limits on every route (uploads get their own, larger limit); a 422 for any invalid request."""

from __future__ import annotations

import errno
import json
import logging
import reprlib

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .strict import explain_unknown_fields

MULTIPART_OVERHEAD = 64 * 1024
log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class HeadMiddleware:
    """HEAD on every GET route: the GET answer's status and headers (Content-Length included), with no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_json_bytes: int, uploads: dict[str, int]) -> None:
        """`uploads`: the exact path of each upload route -> the most bytes its files may hold."""
        self.app, self.max_json, self.uploads = app, max_json_bytes, uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload_limit = self.uploads.get(scope["path"].rstrip("/"))
        is_upload = upload_limit is not None
        limit = upload_limit + MULTIPART_OVERHEAD if is_upload else self.max_json
        shown = upload_limit if is_upload else self.max_json  # the setting, not the framing allowance
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, scope, shown, is_upload)
            return
        # A body without a Content-Length (chunked transfer encoding) is counted as it arrives. Whoever
        # reads it may wrap the error (FastAPI turns any error of its body parsing into a 400), so the
        # answer is chosen here: once the body went over the limit, the app's own answer is replaced.
        seen, started, exceeded, replaced = 0, False, False, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started, replaced
            if exceeded and not started:  # whatever the app answers to a body over the limit: 413
                started = replaced = True
                await _too_large(send, scope, shown, is_upload)
            if replaced:
                return  # the app's own answer is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not exceeded:
                raise
            if not started:
                await _too_large(send, scope, shown, is_upload)


async def _too_large(send: Send, scope: Scope, limit: int, is_upload: bool) -> None:
    what = "upload" if is_upload else "request body"
    detail = f"the {what} exceeds the limit of {limit} bytes"
    log.info("refused %s %s: 413 %s", scope["method"], scope["path"], detail,
             extra={"event": "refused", "method": scope["method"], "path": scope["path"], "status": 413,
                    "detail": detail})
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


MAX_ERRORS = 10  # errors a 422 lists one by one; the rest are counted
MAX_INPUT_CHARS = 200  # of each error's echoed input


def _small(value: object, budget: int = 100) -> int:
    """What is left of `budget` after counting the strings, numbers and containers in `value` (negative: too big to
    echo); stops counting as soon as the budget is spent, so a huge input costs no more than a small one."""
    budget -= 1 + (len(value) // MAX_INPUT_CHARS if isinstance(value, str) else 0)
    if budget > 0 and isinstance(value, dict):
        value = list(value.values())
    if budget > 0 and isinstance(value, list | tuple):
        for item in value:
            budget = _small(item, budget)
            if budget < 0:
                break
    return budget


_PREVIEW = reprlib.Repr()  # Python 3.11's takes no arguments: its limits are attributes
_PREVIEW.maxlevel, _PREVIEW.maxlist, _PREVIEW.maxdict = 3, 10, 10
_PREVIEW.maxstring = _PREVIEW.maxother = MAX_INPUT_CHARS


def _echo(value: object) -> object:
    """An error's input as the answer echoes it: a small value as it is, a large one as a short preview (what it
    holds is counted without encoding it all)."""
    if _small(value) >= 0:
        return value
    if isinstance(value, str):
        return f"{value[:MAX_INPUT_CHARS]}... ({len(value)} characters)"
    size = f" of {len(value)} items" if isinstance(value, list | tuple | dict) else ""
    return f"{_PREVIEW.repr(value)} (a {type(value).__name__}{size})"


def bounded_errors(errors: list[dict]) -> list[dict]:
    """The first MAX_ERRORS errors (inputs cut to MAX_INPUT_CHARS), then one that counts the rest: an error answer
    and its log line cost less than the request, however many of its items are wrong."""
    kept = [{**e, "input": _echo(e.get("input"))} for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        kept.append({"type": "more_errors", "loc": [], "msg": f"and {len(errors) - MAX_ERRORS} more errors like "
                                                              "these; fix those first", "input": None})
    return kept


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, safe for any input: Python's JSON parser reads NaN and Infinity, which the answer (strict
    JSON) could not echo back, so a body like {"top_k": NaN} was a 500. At most MAX_ERRORS errors are listed."""
    errors = json.loads(json.dumps(jsonable_encoder(explain_unknown_fields(bounded_errors(err.errors()), request)),
                                   default=str), parse_constant=str)
    reason = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    log.info("refused %s %s: 422 %s", request.method, request.url.path, reason,
             extra={"event": "refused", "method": request.method, "path": request.url.path, "status": 422,
                    "detail": reason})
    return JSONResponse({"detail": errors}, status_code=422)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


async def disk_full(request: Request, err: OSError) -> JSONResponse:
    """507 when a write ran out of disk (an upload streamed to the work folder, a corpus or task file copied into
    the store, a record written): the writers remove their temporary files, so nothing half-written stays. Any
    other OSError is a 500, as before."""
    if err.errno not in DISK_FULL:
        raise err
    log.warning("%s %s: the disk is full: %s", request.method, request.url.path, err)
    return JSONResponse({"detail": f"the server's disk is full ({err.strerror}): nothing of this request was kept; "
                                   "retry once an operator has freed space"}, status_code=507)
