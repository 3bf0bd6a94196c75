"""The worker's healthcheck (`das worker --ping`, docker-compose.yml's) against a real Celery worker on a real Redis.

Each worker here has a node name and a DAS_REDIS_PREFIX (hence a queue) of its own: other workers on the same Redis
neither answer for it nor take its jobs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from service_helpers import training_step, upload, wait_for_job

from das.app import build_app
from job_records import RedisJobs
from worker.health import busy_marker, check_worker
from worker.queue import make_celery

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 60  # a check that has not ended by then hangs: its own bound is --timeout (3 s) a step


def compose_healthcheck() -> list[str]:
    """The worker's healthcheck command as docker-compose.yml runs it (exec form, without the "CMD")."""
    test = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return test[1:]


def das(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `das ARGV...` as the image would (the `das` entry point of this environment)."""
    assert argv[0] == "das", argv
    return subprocess.run([sys.executable, "-c", "from das.cli import app; app()", *argv[1:]], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.fixture
def deployment(service_settings, redis_url):
    """Settings of a distributed service with a namespace of its own, its workers' environment, and a node name."""
    settings = service_settings.model_copy(update={"broker_url": redis_url,
                                                   "redis_prefix": f"dastest-{uuid.uuid4().hex[:8]}:"})
    env = {**os.environ, "DAS_BROKER_URL": redis_url, "DAS_REDIS_PREFIX": settings.redis_prefix,
           "DAS_STORE": settings.store, "DAS_WORK_DIR": str(settings.work_dir),
           "DAS_MODELS_DIR": str(settings.models_dir), "DAS_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1"}
    node = f"health-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    yield settings, env, node
    busy_marker(node).unlink(missing_ok=True)


@pytest.fixture
def running_worker(deployment):
    """A real `das worker` under the deployment's node name, once it answers."""
    settings, env, node = deployment
    proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "worker", "--node", node],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120  # a guard: the worker imports its job code before it answers
        while check_worker(settings, node, timeout_s=1).alive is False:
            assert proc.poll() is None, "the worker exited while starting"
            assert time.time() < deadline, "the worker did not answer within 120 s of its start"
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_healthcheck_passes_while_the_worker_answers(deployment, running_worker):
    _, env, node = deployment
    result = das([*compose_healthcheck(), "--node", node], env)
    assert result.returncode == 0, result.stderr
    assert f"{node} answers through" in result.stdout
    os.killpg(running_worker.pid, signal.SIGKILL)  # the worker dies: the same check fails
    running_worker.wait()
    result = das([*compose_healthcheck(), "--node", node], env)
    assert result.returncode == 1 and f"{node} did not answer within 3 s" in result.stderr, result


def test_a_broker_without_this_worker_fails_the_healthcheck(deployment):
    _, env, node = deployment
    result = das([*compose_healthcheck(), "--node", node], env)
    assert result.returncode == 1
    assert f"{node} did not answer within 3 s through" in result.stderr and "runs no job" in result.stderr


def test_an_unreachable_broker_fails_the_healthcheck(deployment):
    _, env, _ = deployment
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = das(compose_healthcheck(), {**env, "DAS_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 1 and f"cannot reach the broker redis://127.0.0.1:{port}/0" in result.stderr, result


def test_a_broker_that_never_answers_fails_the_healthcheck_within_its_timeout(deployment):
    _, env, _ = deployment
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = das([*compose_healthcheck(), "--timeout", "1"], {**env, "DAS_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 1 and "cannot reach the broker" in result.stderr and "Timeout" in result.stderr, result


def test_a_worker_busy_with_a_job_passes_the_healthcheck(deployment, running_worker, small_corpus):
    """The solo pool answers no ping while a job trains; the job's live lease vouches for the worker then."""
    settings, env, node = deployment
    with TestClient(build_app(settings)) as client:
        job_id = upload(client, small_corpus, steps="3000")["job_id"]
        deadline = time.time() + 120
        while training_step(client.get(f"/v1/jobs/{job_id}").json()) < 1:
            assert time.time() < deadline, "the job did not start training within 120 s"
            time.sleep(0.1)
        assert make_celery(settings).control.ping(destination=[node], timeout=1) == []  # silent while it trains
        result = das([*compose_healthcheck(), "--node", node], env)
        assert result.returncode == 0, result.stderr
        assert f"{node} runs job {job_id} (its lease is alive" in result.stdout
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert wait_for_job(client, job_id)["state"] == "cancelled"
    assert not busy_marker(node).exists()  # the task ended: the worker answers for itself again
    result = das([*compose_healthcheck(), "--node", node], env)
    assert result.returncode == 0 and f"{node} answers through" in result.stdout, result


def test_a_marker_counts_only_with_its_process_and_its_lease(deployment):
    """The busy marker alone proves nothing: its process must run and its job's lease must be alive."""
    settings, _, node = deployment
    jobs = RedisJobs(settings.broker_url, prefix=settings.redis_prefix)
    busy_marker(node).write_text(f'{{"job": "job-1", "pid": {os.getpid()}}}')
    assert not check_worker(settings, node, timeout_s=1).alive  # no lease
    assert jobs.claim("job-1", "a worker", ttl_s=30)
    health = check_worker(settings, node, timeout_s=1)
    assert health.alive and "runs job job-1" in health.message
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    busy_marker(node).write_text(f'{{"job": "job-1", "pid": {gone.pid}}}')  # its worker died mid-task
    assert not check_worker(settings, node, timeout_s=1).alive
    busy_marker(node).write_text("not json")
    assert not check_worker(settings, node, timeout_s=1).alive
    jobs.release("job-1", "a worker")
