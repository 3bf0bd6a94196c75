"""Aliases: names for versions; `production` is the active version (the version a request names: api.versions)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from model_store.aliases import PRODUCTION, AliasNotFound, AliasStore, alias_name
from model_store.names import InvalidName, version_id
from model_store.store import StoreError, VersionNotFound

from ..deps import ManagementAuth, RequestId, ServiceDep
from ..versions import activate_version

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])
log = logging.getLogger(__name__)


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="the version id the alias names, e.g. v0003")


class AliasOut(BaseModel):
    name: str
    version: str
    previous: str | None = Field(description="the version the alias named before (null: a new alias)")
    fit_jobs: list[str] = Field(default_factory=list, description="production only: the fit jobs the activation "
                                                                  "queued, as POST /v1/models/{version}/activate")


def _invalid(err: Exception) -> HTTPException:
    return HTTPException(422, str(err))


@router.get("", response_model=dict[str, str])
def list_aliases(*, service: ServiceDep) -> dict[str, str]:
    """Every alias with the version it names; `production` is the active version."""
    try:
        return AliasStore(service.store).all()
    except StoreError as err:  # the aliases file cannot be read: the message says what to do
        raise HTTPException(409, str(err)) from None


@router.put("/{name}", response_model=AliasOut, dependencies=[ManagementAuth])
def set_alias(*, service: ServiceDep, request_id: RequestId, name: str, body: AliasIn) -> AliasOut:
    """Point an alias at a version (an alias that exists moves). Setting `production` activates the version, exactly
    as POST /v1/models/{version}/activate does (every API process swaps to it, end-task fits are queued)."""
    try:
        alias_name(name)
        version_id(body.version)
    except InvalidName as err:
        raise _invalid(err) from None
    if name == PRODUCTION:
        before = service.store.active_id()
        activated = activate_version(service, body.version, request_id)
        return AliasOut(name=name, version=activated.id, previous=before, fit_jobs=activated.fit_jobs)
    try:
        previous = AliasStore(service.store).set(name, body.version)
    except VersionNotFound as err:
        raise HTTPException(404, str(err)) from None
    except StoreError as err:  # damaged or archived version, too many aliases, the aliases file unreadable
        raise HTTPException(409, str(err)) from None
    return AliasOut(name=name, version=body.version, previous=previous)


@router.delete("/{name}", status_code=204, dependencies=[ManagementAuth])
def delete_alias(*, service: ServiceDep, name: str) -> Response:
    """Remove an alias (the version stays). `production` cannot be removed: set it to another version."""
    try:
        AliasStore(service.store).remove(name)
    except InvalidName as err:
        raise _invalid(err) from None
    except AliasNotFound as err:
        raise HTTPException(404, str(err)) from None
    except StoreError as err:  # production, or the aliases file unreadable
        raise HTTPException(409, str(err)) from None
    return Response(status_code=204)


