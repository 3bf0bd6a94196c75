"""The running service: store, job registry, job submission, and serving, wired from Settings.

Embedded mode (no broker): an in-process worker thread runs the adaptation task. Distributed
mode: jobs go to Celery on Redis; API replicas follow the active version by pub/sub and polling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from model_store.store import ModelStore
from serving.batcher import MicroBatcher
from serving.holder import ModelHolder
from serving.watch import ActiveVersionWatcher
from worker.embedded import EmbeddedWorker
from worker.jobs import JobRegistry
from worker.runtime import active_channel, announce, job_registry
from worker.tasks import WorkerContext

from .pipeline import ensure_initialised, open_store
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    store: ModelStore
    jobs: JobRegistry
    holder: ModelHolder
    batcher: MicroBatcher
    watcher: ActiveVersionWatcher
    embedded: EmbeddedWorker | None = None

    @property
    def mode(self) -> str:
        return "distributed" if self.settings.broker_url else "embedded"

    def submit(self, job_id: str) -> None:
        """Queue a job for the worker(s), in acceptance order."""
        if self.embedded is not None:
            self.embedded.submit(job_id)
            return
        from worker.celery_app import TASK_NAME, queue_name

        self._celery.send_task(TASK_NAME, args=[job_id], queue=queue_name(self.settings))

    @cached_property
    def _celery(self):
        from worker.celery_app import make_celery

        return make_celery(self.settings)

    def activated(self, version: str) -> None:
        """A version became active: tell the other replicas, and swap here without waiting for a poll."""
        announce(self.settings, version)
        self.watcher.poke()

    def start(self) -> None:
        ensure_initialised(self.store, self.settings)
        self.watcher.check()  # load and warm the active version before answering
        self.batcher.start()
        self.watcher.start()
        if self.embedded is not None:
            self.embedded.start()

    def stop(self) -> None:
        """Graceful: a running embedded job checkpoints and stays queued; then serving stops."""
        if self.embedded is not None:
            self.embedded.stop()
        self.watcher.stop()
        self.batcher.stop()


def build_service(settings: Settings) -> Service:
    store = open_store(settings=settings)
    jobs = job_registry(settings)
    holder = ModelHolder(resolve=store.model_dir)
    batcher = MicroBatcher(holder, settings.max_batch_size, settings.max_wait_ms / 1000, settings.inference_queue_size)
    watcher = ActiveVersionWatcher(store.active_id, holder.ensure, settings.poll_interval_s,
                                   redis_url=settings.broker_url, channel=active_channel(settings))
    service = Service(settings, store, jobs, holder, batcher, watcher)
    if not settings.broker_url:
        ctx = WorkerContext(store=store, jobs=jobs, work_dir=settings.work_dir, heartbeat_s=settings.heartbeat_s,
                            max_attempts=settings.max_attempts, on_published=lambda version: watcher.poke())
        service.embedded = EmbeddedWorker(ctx)
    return service
