"""The version a request names, checked: its manifest, the loaded model that answers an inference request, and
activation (a rollback, or the `production` alias set), which the models and aliases routes share.

Inference routes take `?version=` or a body field `version`: a version id or an alias. `served_version` turns it
into the loaded model that answers (serving/pinned.py keeps non-active versions loaded, an LRU).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated

from fastapi import HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from model_store.aliases import AliasNotFound, AliasStore, is_version_id
from model_store.manifest import Manifest
from model_store.names import InvalidName
from model_store.store import CorruptVersion, StoreError, VersionNotFound
from serving.holder import Servable
from serving.pinned import PinningOff
from worker.task_registry import queue_missing_fits

from .schemas import ActivatedOut

log = logging.getLogger(__name__)
VersionQuery = Annotated[str | None, Query(description="the version to answer with: a version id (v0003) or an "
                                                       "alias (production, staging, ...); omitted: the active one")]


def version_manifest(service, version: str) -> Manifest:
    """A version's manifest; 422 for a malformed id, 404 for none such, 409 for a damaged one."""
    try:
        return service.store.manifest(version)
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    except VersionNotFound as err:
        raise HTTPException(404, str(err)) from None
    except CorruptVersion as err:  # the message names the damaged file and `das repair`
        raise HTTPException(409, str(err)) from None


def activate_version(service, version: str, request_id: str | None = None) -> ActivatedOut:
    """Make `version` active; every task without a model on it gets a fit job (listed in `fit_jobs`, carrying the
    HTTP request's `request_id`)."""
    version_manifest(service, version)
    try:
        manifest = service.store.activate(version)
    except StoreError as err:
        raise HTTPException(409, str(err)) from None
    service.activated(version)
    jobs = queue_missing_fits(service.store, service.jobs, version, service.submit, request_id)
    return ActivatedOut(**dataclasses.asdict(manifest), fit_jobs=[job.id for job in jobs],
                        aliases=AliasStore(service.store).by_version().get(version, []))


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
    version = await run_in_threadpool(named_version, service, name)
    try:
        return await asyncio.wrap_future(service.pinned.model(version))
    except PinningOff as err:
        raise HTTPException(409, str(err)) from None
    except StoreError as err:  # the files of the version are damaged (its digests), or it was archived meanwhile
        raise HTTPException(409, str(err)) from None
    except Exception as err:  # noqa: BLE001 - this version cannot be built; the active one still answers
        log.exception("pinned version %s cannot be loaded", version)
        raise HTTPException(409, f"{version} cannot be loaded ({type(err).__name__}: {err})"[:500]) from None


def named_version(service, name: str) -> str:
    """The version id a request names, checked to be in the store and not archived (the one serving: not read)."""
    current = service.holder.current
    if is_version_id(name) and current is not None and current.version == name:
        return name
    try:
        version = AliasStore(service.store).resolve(name)
        manifest = service.store.manifest(version)
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    except (AliasNotFound, VersionNotFound) as err:
        raise HTTPException(404, str(err)) from None
    except (CorruptVersion, StoreError) as err:  # a damaged version or aliases file, a broken pointer (production)
        raise HTTPException(409, str(err)) from None
    if manifest.status == "archived":
        raise HTTPException(409, f"{version} is archived: gc removed its weights, so it cannot answer")
    return version
