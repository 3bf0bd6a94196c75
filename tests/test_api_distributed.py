"""Distributed mode: a real Redis, real `das worker` subprocesses (Celery), the API following by pub/sub."""

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from service_helpers import training_step, upload, wait_for_job, wait_serving

from das.app import build_app

PROBE = {"texts": ["permission is hereby granted, free of [MASK], to any person."], "top_k": 3}


@pytest.fixture
def distributed(service_settings, redis_url):
    """Settings with a broker and a namespace of their own in Redis."""
    settings = service_settings.model_copy(update={"broker_url": redis_url,
                                                   "redis_prefix": f"dastest-{uuid.uuid4().hex[:8]}:"})
    workers: list[subprocess.Popen] = []

    def start_worker(**env_overrides) -> subprocess.Popen:
        env = {**os.environ, "DAS_BROKER_URL": redis_url, "DAS_REDIS_PREFIX": settings.redis_prefix,
               "DAS_STORE": settings.store, "DAS_WORK_DIR": str(settings.work_dir),
               "DAS_MODELS_DIR": str(settings.models_dir), "DAS_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1",
               **env_overrides}
        proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        workers.append(proc)
        return proc

    yield settings, start_worker
    for proc in workers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_same_scenario_with_celery_workers(distributed, small_corpus, code_docs, tmp_path):
    settings, start_worker = distributed
    settings = settings.model_copy(update={"poll_interval_s": 600.0})  # replicas converge by pub/sub alone
    start_worker()
    start_worker()  # two workers: still one job at a time, in order
    with TestClient(build_app(settings)) as client, TestClient(build_app(settings)) as replica:
        assert client.get("/readyz").json()["mode"] == "distributed"
        first = upload(client, small_corpus)
        second = upload(client, small_corpus, steps="13")
        a, b = wait_for_job(client, first["job_id"]), wait_for_job(client, second["job_id"])
        assert (a["state"], a["version"], a["parent"]) == ("succeeded", "v0002", "v0001"), a
        assert (b["state"], b["version"], b["parent"]) == ("succeeded", "v0003", "v0002"), b
        assert datetime.fromisoformat(a["finished"]) <= datetime.fromisoformat(b["started"])  # ISO-8601 times
        for api in (client, replica):  # both replicas converge on the new version
            wait_serving(api, "v0003")
            assert api.post("/v1/fill-mask", json=PROBE).json()["version"] == "v0003"
        # roll back through one replica; the other hears of it
        assert client.post("/v1/models/v0002/activate").status_code == 200
        wait_serving(replica, "v0002")
        code = tmp_path / "code.txt"
        code.write_text("\n".join(code_docs[:60]), encoding="utf-8")
        c = wait_for_job(replica, upload(replica, code, domain="code")["job_id"])
        assert (c["state"], c["version"], c["parent"]) == ("succeeded", "v0004", "v0002"), c
        wait_serving(client, "v0004")


def test_a_worker_killed_mid_job_resumes_and_publishes_once(distributed, small_corpus):
    """Redelivery is bounded by the job records (lease + DAS_REDELIVER_AFTER_S), not by the broker's
    visibility timeout, which stays at its default of hours here."""
    settings, start_worker = distributed
    env = {"DAS_REDELIVER_AFTER_S": "3"}
    doomed = start_worker(**env)
    with TestClient(build_app(settings)) as client:
        job_id = upload(client, small_corpus, steps="300", batch_size="4", max_length="48")["job_id"]
        deadline = time.time() + 120
        while not list(settings.work_dir.glob("*/checkpoints/step-000100")) and time.time() < deadline:
            time.sleep(0.05)
        assert list(settings.work_dir.glob("*/checkpoints/step-000100")), "no checkpoint before the kill"
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        killed = time.time()
        start_worker(**env)
        while client.get(f"/v1/jobs/{job_id}").json()["attempts"] < 2:
            assert time.time() - killed < 60, "the job was not redelivered within 60 s"
            time.sleep(0.2)
        resumed_after = time.time() - killed  # worker start-up + lease (3 s) + redelivery (3 s)
        assert resumed_after < 60
        job = wait_for_job(client, job_id, timeout_s=180)
        assert job["state"] == "succeeded" and job["attempts"] == 2, job
        assert [m["id"] for m in client.get("/v1/models").json()] == ["v0001", "v0002"]
        manifest = client.get("/v1/models/v0002").json()
        assert manifest["metrics"]["resumed_from_step"] >= 100


def test_sigterm_to_a_worker_leaves_its_job_resumable(distributed, small_corpus):
    settings, start_worker = distributed
    worker = start_worker()
    with TestClient(build_app(settings)) as client:
        job_id = upload(client, small_corpus, steps="150")["job_id"]
        while training_step(client.get(f"/v1/jobs/{job_id}").json()) < 10:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        assert worker.wait(60) == 0
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert (job["state"], job["attempts"]) == ("queued", 0)  # a shutdown is not a failed attempt
        start_worker()
        job = wait_for_job(client, job_id, timeout_s=180)
        assert (job["state"], job["attempts"], job["version"]) == ("succeeded", 1, "v0002")
        assert client.get("/v1/models/v0002").json()["metrics"]["resumed_from_step"] >= 10
