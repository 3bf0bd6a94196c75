"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(*, service: ServiceDep):
    """A model version is loaded and warm, and the inference loop runs; `problem` says what is wrong
    (no or a broken active pointer, an active version that cannot be loaded) and how to fix it."""
    current = service.holder.current
    if current is None:
        problem = service.problem()
        return JSONResponse({"status": "loading", **({"problem": problem} if problem else {})}, status_code=503)
    if not service.batcher.alive():
        return JSONResponse({"status": "inference loop stopped", "version": current.version}, status_code=503)
    if service.generation is not None and not service.generation.alive():
        return JSONResponse({"status": "generation loop stopped", "version": current.version}, status_code=503)
    ready = {"status": "ready", "version": current.version, "mode": service.mode, "backend": current.backend}
    problem = service.watcher.error  # the active version cannot be served: an older one serves
    checking = service.holder.checking()
    if problem is None and checking is not None and checking[1] >= service.holder.check_wait_s:
        problem = (f"the files of {checking[0]} have been checked for {checking[1]:.0f} s (a slow or stalled read of "
                   f"the store; the check stops after DAS_VERSION_CHECK_TIMEOUT_S="
                   f"{service.settings.version_check_timeout_s:g} s); {current.version} serves meanwhile")
    return ready | ({"problem": problem} if problem else {})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
