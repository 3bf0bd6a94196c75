"""Request ids and the access log: each request gets an id, answered in `X-Request-ID` and carried by its log lines
and by the jobs it creates; with DAS_ACCESS_LOG=true, one structured line per request (docs/service.md, "Logs and
metrics").

The id is the request's own `X-Request-ID` when that is a sane value (1-128 visible ASCII characters), so a proxy's
or a client's id follows the request through; any other value, or none, gets a new one (uuid4 hex): a bad id is not
worth refusing a request over.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from das_settings.logs import log_fields

HEADER = b"x-request-id"
SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
ERROR_BODY = b"Internal Server Error"  # as Starlette answers an unhandled error
log = logging.getLogger(__name__)


def request_id_of(scope: Scope) -> str:
    """The request's X-Request-ID if it is sane (the first, if it came more than once), else a new one."""
    sent = next((value for name, value in scope["headers"] if name == HEADER), None)
    return sent.decode("ascii") if sent is not None and SANE_ID.fullmatch(sent) else uuid.uuid4().hex


class AccessLogMiddleware:
    """The outermost layer: gives each HTTP request its id (in `request.state.request_id`, and as `request_id` on
    every line logged while it is handled), echoes it in `X-Request-ID` on every answer, and with `enabled` logs
    the request once it is answered: method, path, status, milliseconds, id and client (event `access`)."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app, self.enabled = app, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        start, status = time.perf_counter(), None

        async def echo(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)

        with log_fields(request_id=rid):
            try:
                await self.app(scope, receive, echo)
            except Exception:
                if status is None:  # Starlette's own 500 would come from outside this layer, without the id
                    status = 500
                    await echo({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                            (b"content-length", str(len(ERROR_BODY)).encode())]})
                    await send({"type": "http.response.body", "body": ERROR_BODY})
                raise  # the server logs the traceback
            finally:
                if self.enabled:
                    self._log(scope, status or 500, (time.perf_counter() - start) * 1000, rid)

    @staticmethod
    def _log(scope: Scope, status: int, ms: float, rid: str) -> None:
        client = scope["client"][0] if scope.get("client") else None
        log.info('%s "%s %s" %d %.1f ms request_id=%s', client or "-", scope["method"], scope["path"], status, ms,
                 rid, extra={"event": "access", "method": scope["method"], "path": scope["path"], "status": status,
                             "ms": round(ms, 1), "request_id": rid, "client": client})
