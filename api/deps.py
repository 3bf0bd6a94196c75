"""Dependencies: the service, settings, and the two bearer tokens."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from das_settings import Settings

from .service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def get_settings_dep(service: ServiceDep) -> Settings:
    return service.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def _check(settings: Settings, authorization: str | None, allowed: list[str | None]) -> None:
    if not (settings.management_token or settings.inference_token):
        return  # auth off: `das serve` then binds loopback only
    token = (authorization or "").removeprefix("Bearer ").strip()
    if not token or not any(a and hmac.compare_digest(token, a) for a in allowed):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def management_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    _check(settings, authorization, [settings.management_token])


def inference_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    _check(settings, authorization, [settings.inference_token, settings.management_token])


ManagementAuth = Depends(management_auth)
InferenceAuth = Depends(inference_auth)
