"""The S3 store unreachable for a minute (a partition: the object store's process stopped with SIGSTOP, so
connections are accepted and never answered), during a publish and during a swap (issue #31, "not probed yet").
Slow: each pause is a real minute. `pytest -m slow tests/test_s3_partition.py`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from das.app import build_app
from model_store.store import ModelStore, PublishRequest

BUCKET = "das-partition"
PAUSE_S = 60.0


@pytest.fixture
def moto(tmp_path):
    """A moto S3 server in a process of its own (so it can be stopped), with one bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    yield server, endpoint
    os.kill(server.pid, signal.SIGCONT)
    server.kill()


def _options(endpoint: str) -> dict:
    return {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def _partition(server: subprocess.Popen) -> threading.Timer:
    os.kill(server.pid, signal.SIGSTOP)
    heal = threading.Timer(PAUSE_S, lambda: os.kill(server.pid, signal.SIGCONT))
    heal.start()
    return heal


@pytest.mark.slow
def test_a_publish_through_a_minute_long_partition_completes_once(moto, redis_url, tmp_path, bert_dir):
    server, endpoint = moto
    store = ModelStore.open(f"s3://{BUCKET}/p-{uuid.uuid4().hex[:8]}", redis_url=redis_url,
                            storage_options=_options(endpoint), cache_dir=tmp_path / "cache")
    store.init_base(bert_dir, "embedded")
    _partition(server)
    started = time.monotonic()
    published = store.publish(PublishRequest(bert_dir, "v0001", "legal", "embedded"))
    assert time.monotonic() - started >= PAUSE_S - 1  # it waited out the partition, then finished
    assert (published.id, store.active_id(), store.ids()) == ("v0002", "v0002", ["v0001", "v0002"])
    store.verify("v0002")  # every object complete and matching its digest


@pytest.mark.slow
def test_a_swap_through_a_minute_long_partition_keeps_answering(moto, redis_url, tmp_path, bert_dir,
                                                                 service_settings):
    server, endpoint = moto
    settings = service_settings.model_copy(update={
        "store": f"s3://{BUCKET}/s-{uuid.uuid4().hex[:8]}", "redis_url": redis_url,
        "store_options": _options(endpoint)})
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        store = client.app.state.service.store
        store.publish(PublishRequest(bert_dir, "v0001", "legal", "embedded"), activate=False)
        store.activate("v0002")
        heal = _partition(server)
        answered = 0
        while heal.is_alive():  # the partition: every request is answered, by the version served before
            answer = client.post("/v1/embeddings", json={"texts": ["still answering"]})
            assert answer.status_code == 200 and answer.json()["version"] == "v0001", answer.text
            assert client.get("/readyz").status_code == 200
            answered += 1
            time.sleep(1)
        deadline = time.monotonic() + 120
        while client.get("/readyz").json().get("version") != "v0002" and time.monotonic() < deadline:
            client.app.state.service.watcher.poke()
            time.sleep(0.5)
        assert client.get("/readyz").json()["version"] == "v0002" and answered >= 30
