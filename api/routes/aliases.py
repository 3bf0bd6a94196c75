"""Aliases (names for versions; `production` is the active version), and the version an inference request names.

Inference routes take `?version=` or a body field `version`: a version id or an alias. `served_version` turns it
into the loaded model that answers (serving/pinned.py keeps non-active versions loaded, an LRU).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from model_store.aliases import PRODUCTION, AliasNotFound, AliasStore, alias_name, is_version_id
from model_store.names import InvalidName, version_id
from model_store.store import CorruptVersion, StoreError, VersionNotFound
from serving.holder import Servable
from serving.pinned import PinningOff

from ..deps import ManagementAuth, ServiceDep
from .models import activate_model

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])
log = logging.getLogger(__name__)
VersionQuery = Annotated[str | None, Query(description="the version to answer with: a version id (v0003) or an "
                                                       "alias (production, staging, ...); omitted: the active one")]


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
def set_alias(*, service: ServiceDep, name: str, body: AliasIn) -> AliasOut:
    """Point an alias at a version (an alias that exists moves). Setting `production` activates the version, exactly
    as POST /v1/models/{version}/activate does (every API process swaps to it, end-task fits are queued)."""
    try:
        alias_name(name)
        version_id(body.version)
    except InvalidName as err:
        raise _invalid(err) from None
    if name == PRODUCTION:
        before = service.store.active_id()
        activated = activate_model(service=service, version=body.version)
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


async def served_version(service, query: str | None, body: str | None) -> Servable | None:
    """The loaded model of the version an inference request names (`?version=` or the body's `version`, the same
    meaning; an id or an alias), loading it if need be; None when the request names none (the active version
    answers, whichever serves when its batch runs). 422 for both given and different or a malformed name; 404 for
    an unknown version or alias; 409 for a damaged or archived version, or when no other version may be loaded."""
    if query is not None and body is not None and query != body:
        raise HTTPException(422, f"?version={query} and the body's version {body!r} differ; send one of them")
    name = query if query is not None else body
    if name is None:
        return None
    version = await run_in_threadpool(_named_version, service, name)
    try:
        return await asyncio.wrap_future(service.pinned.model(version))
    except PinningOff as err:
        raise HTTPException(409, str(err)) from None
    except StoreError as err:  # the files of the version are damaged (its digests), or it was archived meanwhile
        raise HTTPException(409, str(err)) from None
    except Exception as err:  # noqa: BLE001 - this version cannot be built; the active one still answers
        log.exception("pinned version %s cannot be loaded", version)
        raise HTTPException(409, f"{version} cannot be loaded ({type(err).__name__}: {err})"[:500]) from None


def _named_version(service, name: str) -> str:
    """The version id a request names, checked to be in the store and not archived (the one serving: not read)."""
    current = service.holder.current
    if is_version_id(name) and current is not None and current.version == name:
        return name
    try:
        version = AliasStore(service.store).resolve(name)
        manifest = service.store.manifest(version)
    except InvalidName as err:
        raise _invalid(err) from None
    except (AliasNotFound, VersionNotFound) as err:
        raise HTTPException(404, str(err)) from None
    except (CorruptVersion, StoreError) as err:  # a damaged version or aliases file, a broken pointer (production)
        raise HTTPException(409, str(err)) from None
    if manifest.status == "archived":
        raise HTTPException(409, f"{version} is archived: gc removed its weights, so it cannot answer")
    return version
