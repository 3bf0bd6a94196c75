"""The running service: store, job records, job submission and serving, wired from Settings.

Embedded mode (no broker): an in-process worker thread runs the jobs. Distributed mode: jobs go
to Celery on Redis; API replicas follow the active version by pub/sub and polling.

This module imports no torch. What needs it (loading a version, running a job, creating v0001
from a hub model) arrives as a `ModelRuntime` from the caller (`das.app`), and is imported only
when it first runs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from das_settings import Settings
from job_records import JobRegistry
from model_store.checking import checked_folder
from model_store.store import STALE_S, ModelStore
from serving.batcher import MicroBatcher
from serving.generation import GenerationScheduler
from serving.holder import ModelHolder, Servable
from serving.pinned import PinnedVersions
from serving.watch import ActiveVersionWatcher
from worker.context import RunJob
from worker.embedded import EmbeddedWorker
from worker.retention import expire_quietly
from worker.runtime import announce, build_worker_context, job_registry, open_store

log = logging.getLogger(__name__)
UPLOADS = "uploads"  # under $DAS_WORK_DIR: POST /v1/corpora streams each upload into a temporary folder here


@dataclass(frozen=True)
class ModelRuntime:
    """The torch side of the service, passed in: each callable imports torch on its first call."""

    load_version: Callable[[str, Path, Servable | None], Servable]  # (version, folder, current) -> a warmable model
    load_tasks: Callable[[ModelStore, str, object | None], object | None]  # serving.tasks.load_task_set
    run_job: RunJob  # worker.jobs.run_job
    initialise_store: Callable[[ModelStore, Settings], object]  # das_data.base_models.ensure_initialised
    prepare_jobs: Callable[[], None] = lambda: None  # run by the embedded worker before its first job


@dataclass
class Service:
    settings: Settings
    store: ModelStore
    jobs: JobRegistry
    holder: ModelHolder
    batcher: MicroBatcher
    watcher: ActiveVersionWatcher
    runtime: ModelRuntime
    pinned: PinnedVersions  # other versions kept loaded for requests that name one (DAS_MAX_LOADED_VERSIONS)
    embedded: EmbeddedWorker | None = None
    generation: GenerationScheduler | None = None  # decodes a causal LM's sequences together (/v1/completions)

    @property
    def mode(self) -> str:
        return "distributed" if self.settings.broker_url else "embedded"

    def submit(self, job_id: str) -> None:
        """Queue a job for the worker(s), in acceptance order."""
        if self.embedded is not None:
            self.embedded.submit(job_id)
            return
        from worker.queue import send_job

        self.jobs.update(job_id, dispatched=time.time())  # before sending: redelivery must not race it
        send_job(self._celery, self.settings, job_id)

    @cached_property
    def _celery(self):
        from worker.queue import make_celery

        return make_celery(self.settings)

    def activated(self, version: str) -> None:
        """A version became active: tell the other replicas, and swap here without waiting for a poll."""
        announce(self.settings, version)
        self.watcher.poke()

    def tasks_changed(self) -> None:
        """A task was registered or deleted: every API process re-reads the task models it serves."""
        active = self.store.active_id()
        if active is not None:
            announce(self.settings, active)
        self.watcher.poke()

    def problem(self) -> str | None:
        """What keeps the active version from being served, with the fix; None when nothing does."""
        try:
            return self.store.pointer_problem() or self.watcher.error
        except Exception as err:  # noqa: BLE001 - the store cannot be reached: say so
            return f"the store cannot be read ({type(err).__name__}: {err})"

    def start(self) -> None:
        if removed := clean_uploads(self.settings.work_dir):
            log.info("removed %d temporary uploads left by a process that died", len(removed))
        self.runtime.initialise_store(self.store, self.settings)
        expire_quietly(self.store, self.jobs, self.settings.batch_retention_s)
        try:
            self.watcher.check()  # load and warm the active version before answering
        except Exception:  # noqa: BLE001 - e.g. a damaged active version: answer 503 saying why (problem())
            log.exception("cannot serve the active version")
        self.batcher.start()
        if self.generation is not None:
            self.generation.start()
        self.watcher.start()
        if self.embedded is not None:
            self.embedded.start()

    def stop(self) -> None:
        """Graceful: a running embedded job checkpoints and stays queued; then serving stops."""
        if self.embedded is not None:
            self.embedded.stop()
        self.watcher.stop()
        if self.generation is not None:
            self.generation.stop()
        self.batcher.stop()


def clean_uploads(work_dir: Path, dry_run: bool = False, older_than_s: float = STALE_S) -> list[Path]:
    """Temporary uploads untouched for `older_than_s`, removed unless `dry_run`.

    The upload route removes its folder on any error or cancellation; only a process that died
    mid-upload leaves one. A younger one may be an upload in progress (of another process), so stays.
    """
    root = Path(work_dir) / UPLOADS
    cutoff = time.time() - older_than_s
    stale = [path for path in sorted(root.iterdir()) if _last_touched(path) < cutoff] if root.is_dir() else []
    for path in [] if dry_run else stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _last_touched(path: Path) -> float:
    """The newest mtime of a path and, for a folder, of its entries (an upload writes into its folder)."""
    try:
        entries = list(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
        return max(p.lstat().st_mtime for p in [path, *entries])
    except FileNotFoundError:  # removed meanwhile
        return time.time()


def build_service(settings: Settings, runtime: ModelRuntime) -> Service:
    store = open_store(settings)
    jobs = job_registry(settings)
    holder = ModelHolder(resolve=lambda version: checked_folder(store, version, settings.version_check_timeout_s),
                         load=runtime.load_version,
                         load_tasks=lambda version, current: runtime.load_tasks(store, version, current))
    batcher = MicroBatcher(holder, settings.max_batch_size, settings.max_wait_ms / 1000, settings.inference_queue_size,
                           gather_s=settings.batch_gather_ms / 1000)
    pinned = PinnedVersions(holder, settings.max_loaded_versions)
    watcher = ActiveVersionWatcher(store.active_id, _follow(holder, pinned), settings.poll_interval_s,
                                   redis_url=settings.broker_url, channel=settings.active_channel)
    holder.on_checked = watcher.poke  # a check that outlived ensure()'s wait ended: swap (or report) now
    generation = GenerationScheduler(holder, settings.max_concurrent_sequences, settings.generation_queue_size,
                                     settings.generation_timeout_s)
    service = Service(settings, store, jobs, holder, batcher, watcher, runtime, pinned, generation=generation)
    if not settings.broker_url:
        ctx = build_worker_context(settings, store=store, jobs=jobs, on_published=lambda version: watcher.poke())
        service.embedded = EmbeddedWorker(ctx, runtime.run_job, prepare=runtime.prepare_jobs)
        ctx.submit = service.embedded.submit
    return service


def _follow(holder: ModelHolder, pinned: PinnedVersions) -> Callable[[str], bool]:
    """What the watcher does at each check of the active pointer: swap to it (or re-read its task models), drop it
    from the pinned versions (the holder serves it), and re-read the pinned versions' task models."""
    def follow(version: str) -> bool:
        swapped = holder.ensure(version)
        current = holder.current
        if not swapped and current is not None and current.version != version:  # its files are still checked:
            holder.ensure(current.version)  # the version serving meanwhile gets its newly fitted task models
        pinned.discard(version)
        pinned.refresh_tasks()
        return swapped

    return follow
