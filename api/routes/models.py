"""Model versions: lineage, status, importance, activation (rollback)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from model_store import importance_history as history
from model_store.aliases import AliasStore
from model_store.card import version_card
from model_store.manifest import STATUSES, Manifest
from model_store.names import InvalidName, domain_name, version_number
from model_store.store import CorruptVersion, DamagedVersion, StoreError
from model_store.training_history import training_history

from ..deps import ManagementAuth, RequestId, ServiceDep
from ..paging import Cursor, Limit, decode_cursor, page
from ..schemas import ActivatedOut, CurrentModel, ModelOut, schema_of
from ..versions import activate_version, version_manifest

router = APIRouter(prefix="/v1/models", tags=["models"])
DamagedOut = schema_of(DamagedVersion, "DamagedOut")


class TrainingOut(BaseModel):
    version: str
    steps: int | None = Field(description="the steps the run trained; the history logs every `log_every`-th and the "
                                          "last")
    losses: list[str] = Field(description="the loss parts each logged step holds (loss, mlm, contrastive, ...)")
    history: list[dict[str, int | float | None]] = Field(
        description="per logged step: step (1-based), lr, tokens_per_s and each loss part (null: not finite)")


def _out(manifest: Manifest, aliases: dict[str, list[str]]) -> ModelOut:
    """A version as the API shows it; `aliases`: version id -> its aliases (AliasStore.by_version, read once)."""
    return ModelOut(**dataclasses.asdict(manifest), aliases=aliases.get(manifest.id, []))


@router.get("", response_model=list[ModelOut])
def list_models(
    *, service: ServiceDep, request: Request, response: Response, limit: Limit = 100, cursor: Cursor = None,
    status: Annotated[str | None, Query(description=f"only versions with this status: {', '.join(STATUSES)}")] = None,
    domain: Annotated[str | None, Query(description="only versions adapted to this domain")] = None,
) -> list[ModelOut]:
    """Healthy versions, oldest first, with parent and status, filtered before paging; the next page's cursor is
    in X-Next-Cursor, its URL in Link (rel="next"), both absent on the last page. Damaged ones are named in the
    X-Damaged-Versions header and described by GET /v1/models/damaged."""
    if status is not None and status not in STATUSES:
        raise HTTPException(422, f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
    try:
        domain = domain_name(domain) if domain is not None else None
    except InvalidName as err:
        raise HTTPException(422, str(err)) from None
    after = decode_cursor(cursor, "models", version_number) if cursor is not None else 0
    healthy, damaged = service.store.scan()
    if damaged:
        response.headers["X-Damaged-Versions"] = ",".join(d.id for d in damaged)
    kept = [m for m in healthy if version_number(m.id) > after and (status is None or m.status == status)
            and (domain is None or m.domain == domain)]
    aliases = AliasStore(service.store).by_version()
    return [_out(m, aliases) for m in page(request, response, "models", kept[:limit + 1], limit, lambda m: m.id)]


@router.get("/damaged", response_model=list[DamagedOut])
def damaged_models(*, service: ServiceDep) -> list[DamagedOut]:
    """Versions whose manifest cannot be read, with the reason: every listing leaves them out, and
    `das repair` sets them aside (`das repair --dry-run` also checks every file's digest)."""
    return [DamagedOut(**dataclasses.asdict(d)) for d in service.store.damaged()]


@router.get("/current", response_model=CurrentModel)
def current_model(*, service: ServiceDep) -> CurrentModel:
    """The active version, and the one this process serves right now (they differ during a swap)."""
    try:
        active = service.store.active()
    except StoreError:  # the pointer names a missing or damaged version
        active = None
    if active is None:
        raise HTTPException(503, service.store.pointer_problem() or "the store has no active version yet")
    serving = service.holder.current
    return CurrentModel(**dataclasses.asdict(active), serving=serving.version if serving else None,
                        kind=serving.kind if serving else None, mask_token=serving.mask_token if serving else None,
                        aliases=AliasStore(service.store).by_version().get(active.id, []),
                        loaded=service.pinned.loaded())


@router.get("/{version}", response_model=ModelOut)
def get_model(*, service: ServiceDep, version: str) -> ModelOut:
    """One version's manifest, with its aliases."""
    return _out(version_manifest(service, version), AliasStore(service.store).by_version())


@router.get("/{version}/importance", responses={200: {"content": {"image/png": {}}}})
async def get_importance(*, service: ServiceDep, version: str,
                         format: Annotated[Literal["json", "png"], Query()] = "json",
                         units: Annotated[bool, Query(description="JSON only: also every unit's value, layers x "
                                                      "units per group, under `units` (the /ui page draws them)")]
                         = False,
                         diff: Annotated[str | None, Query(description="JSON only: also the change from this other "
                                                           "version's cumulative importance, under `diff` (as "
                                                           "`das importance VERSION --diff OTHER`)")] = None):
    """Per-layer importance summaries (cumulative and added), or heatmaps with ?format=png."""
    version_manifest(service, version)
    found = history.version_importance(service.store, version)
    if found is None:
        raise HTTPException(404, f"{version} has no importance: it is the base model")
    if diff is not None and format == "json":
        return found.report(units=units) | {"diff": await run_in_threadpool(_importance_diff, service, diff, found)}
    if format == "png":
        def draw() -> bytes:
            with tempfile.TemporaryDirectory() as tmp:
                return found.heatmap(Path(tmp) / "importance.png").read_bytes()
        return Response(await run_in_threadpool(draw), media_type="image/png")
    return found.report(units=units)


@router.get("/{version}/training", response_model=TrainingOut)
def get_training(*, service: ServiceDep, version: str) -> TrainingOut:
    """The per-step training log of a version (its train_metrics.json's history: the losses, learning rate and
    tokens/s of every logged step); the manifest's `metrics` holds only the run's summary. 404 for the base model."""
    version_manifest(service, version)
    try:
        found = training_history(service.store, version)
    except CorruptVersion as err:
        raise HTTPException(409, str(err)) from None
    if found is None:
        raise HTTPException(404, f"{version} has no training history: no run trained it (the base model)")
    return TrainingOut(version=found.version, steps=found.steps, losses=found.losses,
                       history=[{k: _finite(v) for k, v in step.items()} for step in found.history])


def _finite(value: object) -> int | float | None:
    """A logged number as JSON can carry it: NaN and infinities (a diverged run) as null."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _importance_diff(service, other: str, found: history.VersionImportance) -> dict:
    """`das importance --diff`'s figures: `found`'s cumulative importance less `other`'s (404 if it has none)."""
    version_manifest(service, other)
    before = history.version_importance(service.store, other)
    if before is None:
        raise HTTPException(404, f"{other} has no importance to compare with: it is the base model")
    try:
        groups = history.diff(before.cumulative, found.cumulative)
    except ValueError as err:  # other model shapes
        raise HTTPException(409, str(err)) from None
    return {"from": other, "to": found.version, "groups": groups}


@router.get("/{version}/card", responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}})
def get_card(*, service: ServiceDep, version: str) -> PlainTextResponse:
    """The version's model card: the README.md of its folder (Markdown with YAML front matter), as `das card`."""
    version_manifest(service, version)
    return PlainTextResponse(version_card(service.store, version), media_type="text/markdown; charset=utf-8")


@router.post("/{version}/activate", response_model=ActivatedOut, dependencies=[ManagementAuth])
def activate_model(*, service: ServiceDep, request_id: RequestId, version: str) -> ActivatedOut:
    """Make a version active (rollback); every API process swaps to it, and later jobs build on it. Every end task
    without a model on it gets a fit job (listed in `fit_jobs`), so its predictions answer once that job ends."""
    return activate_version(service, version, request_id)
