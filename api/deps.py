"""Dependencies: the service, settings, and the two bearer tokens.

Who may read what (docs/service.md): `api.main.create_app` includes every router with InferenceAuth but the
open ones (liveness, readiness, metrics), so that no route is forgotten; the routes that change something add
ManagementAuth.

All are `async def`: they never block, and FastAPI would run a plain `def` dependency in its
thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from das_settings import Settings

from .service import Service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_settings_dep(service: ServiceDep) -> Settings:
    return service.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def _check(settings: Settings, authorization: str | None, allowed: list[str | None]) -> None:
    if not (settings.management_token or settings.inference_token):
        return  # auth off: `das serve` then binds loopback only
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()  # RFC 7235: the scheme is case-insensitive; a bare token has no scheme and is refused
    if scheme.lower() != "bearer" or not token or not any(a and _same(token, a) for a in allowed):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison; bytes, because compare_digest refuses non-ASCII str (a header may hold any byte)."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


async def management_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    _check(settings, authorization, [settings.management_token])


async def inference_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    _check(settings, authorization, [settings.inference_token, settings.management_token])


ManagementAuth = Depends(management_auth)
InferenceAuth = Depends(inference_auth)
