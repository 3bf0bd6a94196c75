"""Hot swap under load: concurrent inference (loopback only) while versions are activated; zero failures."""

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from das_engine.config import DASConfig
from model_store.store import ModelStore
from worker.adaptation import adapt_active


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, bert_dir, corpus_file, service_settings):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    config = DASConfig(steps=6, batch_size=4, max_length=48, importance_samples=8, checkpoint_every=0, lr=1e-3)
    adapt_active(store, corpus_file, "legal", config, work_dir=tmp_path / "work", activate=False)
    port = _free_port()
    env = {**os.environ, "DAS_STORE": str(tmp_path / "store"), "DAS_WORK_DIR": str(tmp_path / "work"),
           "DAS_MODELS_DIR": str(service_settings.models_dir), "DAS_POLL_INTERVAL_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(30)


def test_zero_failed_requests_while_versions_swap(server):
    failures, answers, swapping = [], [], threading.Event()
    swapping.set()

    def load(kind: str) -> None:
        body = {"texts": ["the licence is [MASK] to everyone.", "free of [MASK]."], "top_k": 2}
        path = "/v1/fill-mask" if kind == "fill" else "/v1/embeddings"
        with httpx.Client(base_url=server, timeout=30) as client:
            for _ in range(400):  # bounded
                if not swapping.is_set():
                    return
                response = client.post(path, json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                else:
                    answers.append(response.json()["version"])

    threads = [threading.Thread(target=load, args=(k,)) for k in ("fill", "fill", "embed", "embed")]
    for t in threads:
        t.start()
    active_at_some_point = {"v0001"}
    with httpx.Client(base_url=server, timeout=30) as admin:
        for version in ("v0002", "v0001", "v0002"):
            time.sleep(0.3)
            assert admin.post(f"/v1/models/{version}/activate").status_code == 200
            active_at_some_point.add(version)
            deadline = time.time() + 30
            while admin.get("/v1/models/current").json()["serving"] != version and time.time() < deadline:
                time.sleep(0.05)
        time.sleep(0.3)
    swapping.clear()
    for t in threads:
        t.join()
    assert failures == []
    assert len(answers) > 50
    assert set(answers) <= active_at_some_point and set(answers) == {"v0001", "v0002"}
