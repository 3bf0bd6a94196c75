"""Hot swap under load: concurrent inference (loopback only) while versions are activated; zero failures."""

import threading
import time

import httpx
import pytest
from service_helpers import das_serve

from das_formats.config import DASConfig
from model_store.store import ModelStore
from pipeline.adaptation import adapt_active


@pytest.fixture
def server(tmp_path, bert_dir, corpus_file, service_settings):
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    config = DASConfig(steps=6, batch_size=4, max_length=48, importance_samples=8, checkpoint_every=0, lr=1e-3)
    adapt_active(store, corpus_file, "legal", config, work_dir=tmp_path / "work", activate=False)
    proc, base = das_serve(tmp_path / "store", tmp_path / "work", service_settings.models_dir)
    yield base
    proc.terminate()
    proc.wait(30)


def test_zero_failed_requests_while_versions_swap(server):
    """Each swap happens while requests flow (it waits for fresh answers first, not for a time), and
    each client sees the versions in the order they were activated."""
    failures, swapping = [], threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]  # per client, the version of each answer in order
    answered, more = [0], threading.Condition()  # answers so far, and their signal
    swapping.set()

    def load(client_no: int, kind: str) -> None:
        texts = ["the licence is [MASK] to everyone.", "free of [MASK]."]
        body = {"texts": texts, "top_k": 2} if kind == "fill" else {"texts": texts}  # embeddings take no top_k
        path = "/v1/fill-mask" if kind == "fill" else "/v1/embeddings"
        with httpx.Client(base_url=server, timeout=30) as client:
            for _ in range(100_000):  # bounded: a guard only, the swaps end the loop
                if not swapping.is_set():
                    return
                response = client.post(path, json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                else:
                    seen[client_no].append(response.json()["version"])
                    with more:
                        answered[0] += 1
                        more.notify_all()

    def fresh_answers(n: int = 20) -> None:
        """Wait for n answers from now on (at most one per client began before)."""
        with more:
            target = answered[0] + n
            assert more.wait_for(lambda: answered[0] >= target, timeout=60), "no more answers"  # a liveness guard

    threads = [threading.Thread(target=load, args=(i, k)) for i, k in enumerate(("fill", "fill", "embed", "embed"))]
    for t in threads:
        t.start()
    order = ["v0001", "v0002", "v0001", "v0002"]
    try:
        with httpx.Client(base_url=server, timeout=30) as admin:
            for version in order[1:]:
                fresh_answers()  # requests are in flight when the swap starts
                assert admin.post(f"/v1/models/{version}/activate").status_code == 200
                deadline = time.time() + 60  # a liveness guard
                while admin.get("/v1/models/current").json()["serving"] != version:
                    assert time.time() < deadline, f"{version} was never served"
                    time.sleep(0.05)
            fresh_answers()
    finally:
        swapping.clear()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    for versions in seen:
        runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        assert _is_subsequence(runs, order), versions  # never back to a version already swapped out
    assert {v for versions in seen for v in versions} == {"v0001", "v0002"}


def _is_subsequence(items: list[str], of: list[str]) -> bool:
    rest = iter(of)
    return all(item in rest for item in items)
