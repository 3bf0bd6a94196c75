"""End tasks through the service: register, predict with no domain id, re-fit across a swap, the
forgetting gate. The same scenario runs in embedded mode and with a real Celery worker on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job, wait_serving
from task_sets import source_task, topic_task, write_jsonl

from das.app import build_app

HARMLESS = {"steps": "8", "lr": "0.00001"}
FORGETFUL = {"steps": "30", "lr": "0.5", "batch_size": "8"}  # an absurd learning rate: it wrecks the features


def register(client, tmp_path, name: str, sets: dict, **form) -> dict:
    train = write_jsonl(tmp_path / f"{name}-train.jsonl", sets["train"])
    evals = write_jsonl(tmp_path / f"{name}-eval.jsonl", sets["eval"])
    with open(train, "rb") as t, open(evals, "rb") as e:
        response = client.post("/v1/tasks", data={"name": name, **form},
                               files={"train": (train.name, t), "eval": (evals.name, e)})
    assert response.status_code == 202, response.text
    return response.json()


def wait_task(client, name: str, version: str, timeout_s: float = 60.0) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        serving = client.get(f"/v1/tasks/{name}").json()["serving"]
        if serving and serving["fitted_on"] == version:
            return serving
        time.sleep(0.2)
    raise AssertionError(f"task {name} is not served on {version}")


def accuracy(client, name: str, rows: list[tuple[str, str]]) -> tuple[float, dict]:
    right = 0
    for start in range(0, len(rows), 50):  # within DAS_MAX_TEXTS per request
        chunk = rows[start:start + 50]
        response = client.post(f"/v1/tasks/{name}/predict", json={"texts": [t for t, _ in chunk]})
        assert response.status_code == 200, response.text
        body = response.json()
        right += sum(answer["label"] == label for answer, (_, label) in zip(body["results"], chunk, strict=True))
    return right / len(rows), body


def scenario(client, tmp_path, small_corpus) -> None:
    source, topic = source_task(), topic_task()
    jobs = [register(client, tmp_path, name, sets)["job_id"] for name, sets in (("source", source), ("topic", topic))]
    for job_id in jobs:
        job = wait_for_job(client, job_id)
        assert (job["state"], job["kind"], job["version"]) == ("succeeded", "fit", "v0001"), job
    wait_task(client, "source", "v0001")
    wait_task(client, "topic", "v0001")

    # a probe fitted well above chance, answering texts it never saw
    acc, body = accuracy(client, "source", source["heldout"])
    assert acc > 0.8, body
    assert (body["version"], body["task_model"]["fitted_on"], body["task_model"]["stale"]) == ("v0001", "v0001", False)
    assert set(body["results"][0]["scores"]) == {"code", "licence"}

    # two tasks of two domains from one backbone pass, with no domain id
    texts = [source["heldout"][0][0], topic["heldout"][0][0]]
    both = client.post("/v1/predict", json={"texts": texts, "tasks": ["source", "topic"]}).json()
    assert both["version"] == "v0001" and set(both["task_models"]) == {"source", "topic"}
    assert all(set(per_text) == {"source", "topic"} for per_text in both["results"])
    everything = client.post("/v1/predict", json={"texts": texts}).json()
    assert set(everything["task_models"]) == {"source", "topic"}

    # a harmless version passes the gate; the swap moves the backbone and its task models together
    job = wait_for_job(client, upload(client, small_corpus, **HARMLESS)["job_id"], timeout_s=180)
    assert (job["state"], job["version"]) == ("succeeded", "v0002"), job
    wait_serving(client, "v0002")
    _, body = accuracy(client, "source", source["heldout"][:4])
    assert (body["version"], body["task_model"]["fitted_on"]) == ("v0002", "v0002")
    manifest = client.get("/v1/models/v0002").json()
    assert set(manifest["evaluation"]["tasks"]) == {"source", "topic"}
    assert manifest["evaluation"]["gate"]["rejected"] is False

    # a version trained to forget is published as rejected, with the scores that decided it
    job = wait_for_job(client, upload(client, small_corpus, **FORGETFUL)["job_id"], timeout_s=180)
    assert (job["state"], job["version"]) == ("rejected", "v0003"), job
    assert "forgetting gate rejected v0003" in job["error"] and "task 'source'" in job["error"], job
    rejected = client.get("/v1/models/v0003").json()
    assert rejected["status"] == "rejected"
    assert any(d["rejected"] and d["drop"] > 1.0 for d in rejected["evaluation"]["gate"]["decisions"])
    assert client.get("/v1/models/current").json()["id"] == "v0002"
    history = client.get("/v1/tasks/source").json()["history"]
    assert [m["version"] for m in history] == ["v0001", "v0002", "v0003"]
    assert history[0]["scores"]["macro_f1"] > 80


def test_end_tasks_in_embedded_mode(service_settings, tmp_path, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        scenario(client, tmp_path, small_corpus)
        # a rejected version can be activated by hand; its task models came with it
        assert client.post("/v1/models/v0003/activate").status_code == 200
        wait_serving(client, "v0003")
        _, body = accuracy(client, "topic", topic_task()["heldout"][:4])
        assert (body["version"], body["task_model"]["fitted_on"]) == ("v0003", "v0003")
        # force=true overrides the gate, and the decision it overrode is kept
        assert client.post("/v1/models/v0002/activate").status_code == 200
        job = wait_for_job(client, upload(client, small_corpus, force="true", **FORGETFUL)["job_id"], timeout_s=180)
        assert (job["state"], job["version"]) == ("succeeded", "v0004"), job
        forced = client.get("/v1/models/v0004").json()
        assert forced["status"] == "active" and forced["evaluation"]["gate"]["forced"] is True
        assert any(d["rejected"] for d in forced["evaluation"]["gate"]["decisions"])


@pytest.fixture
def celery_worker(service_settings, redis_url):
    settings = service_settings.model_copy(update={"broker_url": redis_url,
                                                   "redis_prefix": f"dastest-{uuid.uuid4().hex[:8]}:"})
    env = {**os.environ, "DAS_BROKER_URL": redis_url, "DAS_REDIS_PREFIX": settings.redis_prefix,
           "DAS_STORE": settings.store, "DAS_WORK_DIR": str(settings.work_dir),
           "DAS_MODELS_DIR": str(settings.models_dir), "DAS_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    yield settings
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_end_tasks_with_a_celery_worker(celery_worker, tmp_path, small_corpus):
    with TestClient(build_app(celery_worker)) as client, TestClient(build_app(celery_worker)) as replica:
        scenario(client, tmp_path, small_corpus)
        # the other replica heard of the task models and the swap the way it hears of versions
        wait_serving(replica, "v0002")
        _, body = accuracy(replica, "topic", topic_task()["heldout"][:4])
        assert (body["version"], body["task_model"]["fitted_on"]) == ("v0002", "v0002")
        # a task registered on v0002 only, then a rollback: the activation queues its fit on the Celery worker, and
        # a client's retry ends (409 with Retry-After naming the job while it runs, then an answer)
        late = register(client, tmp_path, "late", source_task(20, 10))
        assert wait_for_job(client, late["job_id"])["state"] == "succeeded"
        activated = client.post("/v1/models/v0001/activate").json()
        [fit_job] = activated["fit_jobs"]
        wait_serving(replica, "v0001")
        waiting = replica.post("/v1/tasks/late/predict", json={"texts": ["hello"]})
        if waiting.status_code == 409:
            assert fit_job in waiting.json()["detail"] and waiting.headers["Retry-After"], waiting.text
        assert wait_for_job(client, fit_job)["state"] == "succeeded"
        wait_task(replica, "late", "v0001")
