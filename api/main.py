"""The FastAPI application: routers per resource, the service started and stopped with the app.

`das.app.build_app` builds the service with its torch side; this package never imports torch.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException

from das_settings import Settings, package_version
from model_store.locks import StoreLocked

from .access_log import AccessLogMiddleware
from .deps import InferenceAuth
from .limits import BodyLimitMiddleware, HeadMiddleware, disk_full, invalid_request
from .metrics import Metrics, TimingMiddleware
from .offline_docs import add_docs_pages
from .routes import aliases, batch, compat, corpora, evaluations, generation, health, inference, jobs, models, tasks, ui
from .schemas import error_responses
from .service import Service
from .strict import StrictInputs

log = logging.getLogger(__name__)
# the infrastructure is away or busy, not the request wrong: 503 and when to come back, never 500
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError, StoreLocked)
RETRY_AFTER_S = 5
# who may read what (docs/service.md): with tokens set, every router's routes need the inference or the
# management token (the routes that change something add the management token), except these routers', which
# say nothing of tasks, jobs or versions: /healthz, /readyz, /metrics, and the /ui page's static files (the page
# holds no data; its API calls carry the token pasted into it). The docs pages are open too (api.offline_docs).
OPEN = (health, ui)
# the error answers each router's routes can give besides 401 (a token) and 503 (a backing service), declared in the
# OpenAPI schema with their body (api.schemas.ErrorOut); 413 wherever a body is read, 507 wherever one is written
ROUTER_ERRORS = {corpora: (413, 422, 507), jobs: (404, 409, 410, 422), models: (404, 409, 422, 507),
                 tasks: (404, 409, 413, 422, 507), inference: (404, 409, 413, 422), compat: (404, 409, 413, 422),
                 generation: (404, 409, 413, 422),
                 batch: (404, 409, 413, 422, 429, 507), aliases: (404, 409, 413, 422, 507), evaluations: (404, 422)}


async def unavailable(request: Request, err: Exception) -> JSONResponse:
    log.warning("%s %s: %s: %s", request.method, request.url.path, type(err).__name__, err)
    return JSONResponse({"detail": f"a backing service is unavailable ({type(err).__name__}); "
                                   f"retry in {RETRY_AFTER_S} s"},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def refused(request: Request, err: HTTPException) -> Response:
    """Log a refused request with its reason (4xx at INFO, a 5xx at WARNING), then answer exactly as FastAPI does."""
    log.log(logging.INFO if err.status_code < 500 else logging.WARNING, "refused %s %s: %d %s", request.method,
            request.url.path, err.status_code, err.detail,
            extra={"event": "refused", "method": request.method, "path": request.url.path,
                   "status": err.status_code, "detail": err.detail})
    return await http_exception_handler(request, err)


def create_app(settings: Settings, service: Service) -> FastAPI:
    # read and checked before anything starts: a bad --eval-results file is an error naming it (a ValueError)
    loaded_evaluations = evaluations.load_evaluations(settings.eval_results)
    metrics = Metrics(service)
    service.batcher.on_batch = metrics.observe_batch
    service.holder.on_swap = metrics.observe_swap
    if service.generation is not None:
        service.generation.on_step = metrics.observe_generation_step
        service.generation.on_end = metrics.observe_generation_end

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="DAS continual pre-training service", version=package_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # add_docs_pages serves them, with their files (no CDN)
                  description="Upload domain corpora; each becomes a new model version learned with DAS "
                              "soft-masking; fill-mask, embeddings and registered end tasks answer any text with the "
                              "active version, with no domain id.")
    app.state.service, app.state.metrics = service, metrics
    app.state.evaluations = loaded_evaluations
    for module in (corpora, jobs, models, aliases, tasks, inference, generation, compat, batch, evaluations, health,
                   ui):
        # StrictInputs: a query parameter or form field the route does not declare is a 422 (api.strict)
        checks = [StrictInputs] if module in OPEN else [InferenceAuth, StrictInputs]
        errors = () if module in OPEN else (401, 503, *ROUTER_ERRORS.get(module, (422,)))
        app.include_router(module.router, dependencies=checks, responses=error_responses(*sorted(errors)))
    add_docs_pages(app)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, refused)  # FastAPI's HTTPException too, and unknown routes' 404
    app.add_exception_handler(OSError, disk_full)  # 507 for a full disk, whatever the route wrote
    app.add_middleware(BodyLimitMiddleware, max_json_bytes=settings.max_json_bytes,
                       uploads={"/v1/corpora": settings.max_upload_bytes,
                                "/v1/batch-predictions": settings.max_upload_bytes,
                                "/v1/tasks": 2 * settings.max_task_upload_bytes})  # train and eval
    app.add_middleware(TimingMiddleware, metrics=metrics)
    app.add_middleware(HeadMiddleware)  # a HEAD is the GET, timed and limited alike, without its body
    # outermost: every answer (a 413 or a HEAD's too) has the request's X-Request-ID, and the access line its status
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    return app
