"""Is this machine's Celery worker alive? The check behind `das worker --ping` (the compose file's healthcheck).

Celery answers for itself: a ping sent through the broker to this worker's node (celery@HOSTNAME by default). A
worker runs one job at a time on the solo pool, and the solo pool answers no ping while a job runs (the job holds the
only thread), so a silent node still counts as alive when it marked the job it runs (`busy_marker`, written by
worker.celery_worker around each task) and that job's lease is alive: the job's heartbeat renews the lease every
DAS_HEARTBEAT_S, and it lapses within three heartbeats of the worker's death. Every step is bounded by the timeout.

Torch-free: the check imports Celery and the job records, never the job code.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redis.exceptions import RedisError

from das_settings import Settings

from .queue import make_celery
from .runtime import job_registry


@dataclass(frozen=True)
class WorkerHealth:
    alive: bool
    message: str  # one line: who answered, or what to look at


def default_node() -> str:
    """Celery's own default node name, which `das worker` keeps unless told otherwise: celery@HOSTNAME."""
    return f"celery@{socket.gethostname()}"


def busy_marker(node: str) -> Path:
    """The file a worker keeps while a task runs: {"job": id, "pid": pid}. Local to the machine (a container's
    /tmp), so a ping on the worker's own machine finds it."""
    return Path(tempfile.gettempdir()) / f"das-worker-{node}.busy.json"


def check_worker(settings: Settings, node: str, timeout_s: float) -> WorkerHealth:
    """Ping `node` through the broker; a node that does not answer is alive only while busy with a leased job."""
    app = make_celery(settings)
    # one connection attempt, bounded reads: an unreachable or silent broker fails within the timeout
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "max_retries": 0,
                                         "socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    broker = maybe_sanitize_url(settings.broker_url or "")  # no password in a log
    try:
        replies = app.control.ping(destination=[node], timeout=timeout_s)
    except (OperationalError, OSError) as err:  # refused, timed out, unknown host
        return WorkerHealth(False, f"cannot reach the broker {broker}: {err}")
    finally:
        app.close()
    if any(node in reply for reply in replies):
        return WorkerHealth(True, f"{node} answers through {broker}")
    job = _job_in_progress(node)
    if job is not None:
        try:
            leased = job_registry(settings).lease_alive(job)
        except RedisError as err:
            return WorkerHealth(False, f"{node} did not answer, and its job {job}'s lease cannot be read: {err}")
        if leased:
            return WorkerHealth(True, f"{node} runs job {job} (its lease is alive; a worker answers no ping while "
                                      "a job runs)")
    return WorkerHealth(False, f"{node} did not answer within {timeout_s:g} s through {broker} and runs no job: is "
                               "`das worker` running on this machine, with this broker and DAS_REDIS_PREFIX?")


def _job_in_progress(node: str) -> str | None:
    """The job id in `node`'s busy marker, if the process that wrote it still runs."""
    try:
        marker = json.loads(busy_marker(node).read_text())
        job, pid = str(marker["job"]), int(marker["pid"])
    except (OSError, ValueError, KeyError, TypeError):  # no marker (no task runs), or a broken one
        return None
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:  # the worker died mid-task and left its marker
        return None
    except PermissionError:  # it exists, under another user
        pass
    return job

