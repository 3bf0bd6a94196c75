"""What a worker needs to run jobs, and what running one can come to (torch-free)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from job_records import JobRegistry
from model_store.store import ModelStore


class Outcome(Enum):
    DONE = "done"  # the job is in a final state (or someone else finished it)
    WAIT = "wait"  # an earlier job is pending, or another worker holds this one: try again later
    RETRY = "retry"  # a transient failure, or a shutdown left it resumable


@dataclass
class WorkerContext:
    store: ModelStore
    jobs: JobRegistry
    work_dir: Path
    heartbeat_s: float = 5.0
    max_attempts: int = 3
    device: str = "cpu"
    gate_max_drop: float = 1.0  # DAS_GATE_MAX_DROP: macro-F1 points an end task may lose to a new version
    train_procs: int = 1  # DAS_TRAIN_PROCS: processes an adaptation trains on (this one is rank 0)
    batch_retention_s: float = 7 * 86400  # DAS_BATCH_RETENTION_S: a finished batch prediction's files stay this long
    on_published: Callable[[str], None] = lambda version: None
    submit: Callable[[str], None] = lambda job_id: None  # queue a job the worker created (finetune re-tuning)
    stop: threading.Event = field(default_factory=threading.Event)  # set on shutdown
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


RunJob = Callable[[str, WorkerContext], Outcome]  # worker.jobs.run_job, injected where torch must wait
