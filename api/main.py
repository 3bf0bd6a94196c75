"""The FastAPI application: routers per resource, the service started and stopped with the app.

`das.app.build_app` builds the service with its torch side; this package never imports torch.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from das_settings import Settings, package_version

from .limits import BodyLimitMiddleware
from .metrics import Metrics, TimingMiddleware
from .routes import corpora, health, inference, jobs, models
from .service import Service


def create_app(settings: Settings, service: Service) -> FastAPI:
    metrics = Metrics(service)
    service.batcher.on_batch = metrics.observe_batch

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="DAS continual pre-training service", version=package_version(), lifespan=lifespan,
                  description="Upload domain corpora; each becomes a new model version learned with DAS "
                              "soft-masking; fill-mask and embeddings answer any text with the active version.")
    app.state.service, app.state.metrics = service, metrics
    for module in (corpora, jobs, models, inference, health):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_json_bytes=settings.max_json_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    return app
