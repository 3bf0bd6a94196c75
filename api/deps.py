"""Dependencies: the service, settings, the two bearer tokens, and the request's id.

Who may read what (docs/service.md): `api.main.create_app` includes every router with InferenceAuth but the
open ones (liveness, readiness, metrics), so that no route is forgotten; the routes that change something add
ManagementAuth.

The token arrives through FastAPI's HTTPBearer scheme (`bearer`), so the OpenAPI schema names it: /docs shows an
Authorize button, and every route that needs a token carries `security`. The scheme never answers by itself
(auto_error=False): `_check` decides, with the same 401 for a missing and a wrong token, and no check at all while
no token is set.

All are `async def`: they never block, and FastAPI would run a plain `def` dependency in its
thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from das_settings import Settings

from .service import Service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_settings_dep(service: ServiceDep) -> Settings:
    return service.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="DAS_INFERENCE_TOKEN (reading and inference) or DAS_MANAGEMENT_TOKEN (everything); "
                                "needed only when either is set")
# the Authorization header as HTTPBearer reads it: None unless it is `Bearer <token>` (the scheme in any case,
# RFC 7235; a bare token has no scheme and is refused), the token stripped
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None, allowed: list[str | None]) -> None:
    if not (settings.management_token or settings.inference_token):
        return  # auth off: `das serve` then binds loopback only
    token = credentials.credentials if credentials is not None else ""
    if not token or not any(a and _same(token, a) for a in allowed):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison; bytes, because compare_digest refuses non-ASCII str (a header may hold any byte)."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


async def management_auth(settings: SettingsDep, credentials: Credentials) -> None:
    _check(settings, credentials, [settings.management_token])


async def inference_auth(settings: SettingsDep, credentials: Credentials) -> None:
    _check(settings, credentials, [settings.inference_token, settings.management_token])


ManagementAuth = Depends(management_auth)
InferenceAuth = Depends(inference_auth)


async def caller_role(settings: SettingsDep, credentials: Credentials) -> str | None:
    """Which token the request came with ("management" or "inference"; None while no token is set), after
    InferenceAuth let it in: what per-token caps count by."""
    token = credentials.credentials if credentials is not None else ""
    if settings.management_token and token and _same(token, settings.management_token):
        return "management"
    return "inference" if settings.inference_token else None


CallerRole = Annotated[str | None, Depends(caller_role)]


async def request_id(request: Request) -> str | None:
    """The request's id (api.access_log: its X-Request-ID, or the one made for it), for the jobs it creates."""
    return getattr(request.state, "request_id", None)


RequestId = Annotated[str | None, Depends(request_id)]
