"""Helpers shared by the service tests: a small job's form, waiting for a job to end, and `das serve` in a process
of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

JOB_FORM = {"domain": "legal", "steps": "12", "batch_size": "4", "max_length": "64"}


def upload(client, path, **form) -> dict:
    with open(path, "rb") as f:
        response = client.post("/v1/corpora", files={"file": (path.name, f, "text/plain")},
                               data={**JOB_FORM, **form})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_job(client, job_id: str, timeout_s: float = 120.0, states=("succeeded", "failed", "cancelled",
                                                                         "rejected")) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout_s}s: {job}")


def post_until_served(client, path: str, body: dict, timeout_s: float = 60.0):
    """POST until the answer is 200 (the watcher has picked a new task model up); the deadline is a guard."""
    deadline = time.time() + timeout_s
    while True:
        answer = client.post(path, json=body)
        if answer.status_code == 200 or time.time() > deadline:
            return answer
        time.sleep(0.1)


def wait_serving(client, version: str, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if client.get("/v1/models/current").json().get("serving") == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the API did not swap to {version}")


def das_serve(store: Path, work: Path, models: Path, log: Path | None = None,
              extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`das serve` (embedded, no tokens unless `extra_env` sets them) on a free port over `store`, started and ready:
    (its process, its URL). `extra_env`: settings of its own (DAS_INFERENCE_TOKEN, ...)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DAS_STORE": str(store), "DAS_WORK_DIR": str(work), "DAS_MODELS_DIR": str(models),
           "DAS_POLL_INTERVAL_S": "0.5"}
    for name in ("DAS_URL", "DAS_TOKEN", "DAS_BROKER_URL", "DAS_MANAGEMENT_TOKEN", "DAS_INFERENCE_TOKEN"):
        env.pop(name, None)
    env.update(extra_env or {})
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    server = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port)],
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError(f"das serve did not get ready at {url}")


def training_step(job: dict) -> int:
    """The training step a job's record reports (0 before training: the importance passes report batches)."""
    progress = job.get("progress") or {}
    return (progress.get("step") or 0) if progress.get("phase") == "train" else 0
