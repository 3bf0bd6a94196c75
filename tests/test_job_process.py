"""Embedded mode runs each job in a child process: a child killed mid-training (as the kernel's out-of-memory killer
kills) fails only its job; the API answers throughout, and the next job runs."""

import os
import signal
import time

from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job

from das.app import build_app
from worker.job_process import describe_exit, running_children

PROBE = {"texts": ["permission is hereby granted, free of [MASK], to any person."], "top_k": 3}


def _running_pid(client, job_id: str, timeout_s: float = 120.0) -> int:
    """The pid of the job's process once it is training (a step done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        pid = running_children().get(job_id)
        if pid is not None and job["state"] == "running" and ((job.get("progress") or {}).get("step") or 0) > 0:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start training in its own process: {job}")


def test_a_job_process_killed_mid_training_fails_only_its_job(service_settings, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        assert client.post("/v1/fill-mask", json=PROBE).status_code == 200
        job_id = upload(client, small_corpus, steps="20000")["job_id"]
        pid = _running_pid(client, job_id)
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(client, job_id)
        assert job["state"] == "failed", job
        assert "killed by SIGKILL" in job["error"] and "out-of-memory" in job["error"], job["error"]
        assert "smaller batch_size" in job["error"]
        # the API process answered on: the version it served, its health, and the next job
        answer = client.post("/v1/fill-mask", json=PROBE)
        assert answer.status_code == 200 and answer.json()["version"] == "v0001"
        assert client.get("/readyz").status_code == 200
        assert [m["id"] for m in client.get("/v1/models").json()] == ["v0001"], "nothing was published"
        job = wait_for_job(client, upload(client, small_corpus)["job_id"])
        assert (job["state"], job["version"]) == ("succeeded", "v0002"), job
        deadline = time.monotonic() + 60  # a job's process exits a moment after its record ends
        while running_children() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running_children() == {}


def test_exit_descriptions_name_the_signal_or_status():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(3) == "exit status 3"
