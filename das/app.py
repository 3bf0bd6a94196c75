"""The composition root: the API app with its torch side plugged in (what `das serve` runs).

`api/` imports no torch; the functions below import it on their first call, when the service
loads a version or runs a job, so a process starts answering /healthz before torch is loaded.
"""

from __future__ import annotations

import gc
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI

from api.main import create_app
from api.service import ModelRuntime, build_service
from das_data.base_models import ensure_initialised
from das_settings import Settings, get_settings
from model_store.store import ModelStore
from model_store.tasks import TaskStore
from worker.context import Outcome, WorkerContext


def torch_runtime(settings: Settings) -> ModelRuntime:
    onnx = None

    def load_version(version: str, folder: Path, current):
        nonlocal onnx
        from serving.model import LoadedModel
        from serving.onnx_cache import OnnxCache

        _freeze_imported_objects()
        if onnx is None and settings.serves_onnx:
            onnx = OnnxCache(settings.onnx_cache_dir)
        return LoadedModel.load(version, folder, current, device=settings.device, int8=settings.serve_int8, onnx=onnx)

    def load_tasks(store: ModelStore, version: str, current):
        from serving.tasks import load_task_set

        return load_task_set(TaskStore(store), version, current)

    def run_job(job_id: str, ctx: WorkerContext) -> Outcome:
        if settings.job_isolation == "process":
            from worker.job_process import run_in_child

            return run_in_child(job_id, ctx, settings)
        from worker.jobs import run_job as run

        return run(job_id, ctx)

    def prepare_jobs() -> None:
        if settings.job_isolation == "process":
            from worker.job_process import start_fork_server

            start_fork_server()

    return ModelRuntime(load_version=load_version, load_tasks=load_tasks, run_job=run_job,
                        initialise_store=ensure_initialised, prepare_jobs=prepare_jobs)


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    return create_app(settings, build_service(settings, torch_runtime(settings)))


@lru_cache(maxsize=1)
def _freeze_imported_objects() -> None:
    """Once torch and transformers are imported: move their ~200k long-lived objects out of the
    cyclic GC's reach. A full collection then scans only what came later, and one that happens
    while a new version loads pauses requests for ~60 ms instead of ~170 ms (bench/swap.py).
    Models are not frozen: an old version is freed by the collector after a swap."""
    gc.collect()
    gc.freeze()
