"""Embedded mode runs each job in a child process: a child killed mid-training (as the kernel's out-of-memory killer
kills) fails only its job; the API answers throughout, and the next job runs."""

import json
import os
import signal
import time
from pathlib import Path

from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job

from das.app import build_app
from das_formats.exits import describe_exit
from das_settings import get_settings
from worker.job_process import running_children

PROBE = {"texts": ["permission is hereby granted, free of [MASK], to any person."], "top_k": 3}


def _running_pid(client, job_id: str, timeout_s: float = 120.0) -> int:
    """The pid of the job's process once it is working (a training step, or a batch's first lines, done)."""
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


def _descendants(root: int) -> set[int]:
    """Every living process below `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_class7_nothing_is_left_behind_a_killed_servers_job_process_exits(tmp_path, small_corpus):
    """kill -9 of `das serve` mid-job: its job process and the fork server exit too (the job does not train on,
    renewing its lease for nobody)."""
    import httpx
    from service_helpers import das_serve

    server, url = das_serve(tmp_path / "store", tmp_path / "work", get_settings().models_dir, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        with open(small_corpus, "rb") as f:
            job_id = httpx.post(f"{url}/v1/corpora", data={"domain": "legal", "steps": "20000"},
                                files={"file": ("c.txt", f)}).json()["job_id"]
        while time.monotonic() < deadline:
            job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
            if ((job.get("progress") or {}).get("step") or 0) > 0:
                break
            time.sleep(0.2)
        below = _descendants(server.pid)
        assert below, "the job runs in no process of its own"
        server.kill()
        server.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in below if _alive(pid)], (tmp_path / "server.log").read_text()[-2000:]
    finally:
        server.kill()


def test_class7_nothing_is_left_behind_a_failed_batch_jobs_answers_go(service_settings):
    from worker.retention import partial_answers

    lines = "".join(json.dumps({"text": f"line {i} of a long batch"}) + "\n" for i in range(20_000)).encode()
    with TestClient(build_app(service_settings)) as client:
        answer = client.post("/v1/batch-predictions", data={"kind": "embed"}, files={"file": ("b.jsonl", lines)})
        job_id = answer.json()["job_id"]
        pid = _running_pid(client, job_id)
        partial = partial_answers(service_settings.work_dir, job_id)
        assert partial.is_file() and partial.stat().st_size > 0
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(client, job_id)
        assert job["state"] == "failed" and "killed by SIGKILL" in job["error"], job
        assert not partial.exists()
