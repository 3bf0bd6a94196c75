"""Accepted work survives infrastructure faults (issue #8, class 4), with a private Redis we can kill.

The Redis here runs with the flags docker-compose.yml gives it, so the test holds the deployment
to its promise: a job answered 202 is on disk before the answer.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job

from das.app import build_app

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"texts": ["permission is hereby granted, free of [MASK], to any person."], "top_k": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server with the compose file's flags, on a free loopback port, data in `folder`."""

    def __init__(self, folder: Path) -> None:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        args = shlex.split(compose["services"]["redis"]["command"])
        assert args[0] == "redis-server"
        self.flags = [a for a in args[1:]]
        self.flags[self.flags.index("--dir") + 1] = str(folder)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", *self.flags, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill9()


@pytest.fixture
def settings(service_settings, private_redis):
    return service_settings.model_copy(update={"broker_url": private_redis.url, "redis_prefix": "faults:"})


def _worker(settings) -> subprocess.Popen:
    env = {**os.environ, "DAS_BROKER_URL": settings.broker_url, "DAS_REDIS_PREFIX": settings.redis_prefix,
           "DAS_STORE": settings.store, "DAS_WORK_DIR": str(settings.work_dir),
           "DAS_MODELS_DIR": str(settings.models_dir), "DAS_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_a_job_answered_202_survives_kill_9_of_redis(settings, private_redis, small_corpus):
    with TestClient(build_app(settings)) as client:
        job_id = upload(client, small_corpus)["job_id"]  # no worker yet: the job waits in Redis
        private_redis.kill9()
        private_redis.start()  # the same data folder: what the AOF holds is what survived
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        worker = _worker(settings)
        try:
            job = wait_for_job(client, job_id, timeout_s=180)
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        assert (job["state"], job["version"]) == ("succeeded", "v0002"), job


def test_with_redis_down_the_api_says_503_and_stores_nothing(settings, private_redis, small_corpus):
    with TestClient(build_app(settings)) as client:
        job_id = upload(client, small_corpus)["job_id"]
        private_redis.kill9()
        corpora = Path(settings.store) / "corpora"
        before = sorted(p.name for p in corpora.iterdir())
        other = small_corpus.with_name("other.txt")
        other.write_text("a document that was never stored\nand a second one\n", encoding="utf-8")
        with open(other, "rb") as f:
            response = client.post("/v1/corpora", files={"file": (other.name, f, "text/plain")},
                                   data={"domain": "legal"})
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        assert sorted(p.name for p in corpora.iterdir()) == before  # nothing stored for a refused upload
        for route in ("/v1/jobs", f"/v1/jobs/{job_id}"):
            response = client.get(route)
            assert response.status_code == 503 and "unavailable" in response.json()["detail"]
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 503
        assert client.post("/v1/fill-mask", json=PROBE).status_code == 200  # inference does not need Redis
        assert client.get("/metrics").status_code == 200
