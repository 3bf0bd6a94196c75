"""GET /v1/models/{v}/training: a version's per-step training log (train_metrics.json's history), which the manifest
leaves out and the /ui page draws as its loss curve. A real adaptation of the embedded model on a real store."""

from __future__ import annotations

import json

import pytest

from das_formats.config import DASConfig
from das_formats.layout import METRICS
from model_store.store import ModelStore
from pipeline.adaptation import adapt_active

STEPS = 5
TINY = DASConfig(steps=STEPS, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                 checkpoint_every=0, lr=1e-4, log_every=2)
INFER = "training-route-inference-token"


@pytest.fixture
def adapted(service_settings, bert_dir, corpus_file, tmp_path) -> ModelStore:
    """v0001 (the embedded base model) and v0002, adapted from it on a legal corpus for STEPS steps."""
    store = ModelStore.open(service_settings.store)
    store.init_base(bert_dir, "bert-tiny")
    adapt_active(store, corpus_file, "legal", TINY, work_dir=tmp_path / "adapt")
    return store


def test_a_versions_training_log_is_served_and_a_damaged_one_refused(service_settings, adapted):
    from fastapi.testclient import TestClient

    from das.app import build_app

    settings = service_settings.model_copy(update={"inference_token": INFER})
    auth = {"Authorization": f"Bearer {INFER}"}
    with TestClient(build_app(settings)) as client:
        assert client.get("/v1/models/v0002/training").status_code == 401  # a read under the inference token
        answer = client.get("/v1/models/v0002/training", headers=auth)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # logged: every log_every-th step and the last (steps 1, 3, 5), each with its loss parts
        assert (body["version"], body["steps"]) == ("v0002", STEPS)
        assert [h["step"] for h in body["history"]] == [1, 3, 5]
        assert "loss" in body["losses"] and "mlm" in body["losses"]
        assert all(set(body["losses"]) | {"step", "lr", "tokens_per_s"} == set(h) for h in body["history"])
        manifest = client.get("/v1/models/v0002", headers=auth).json()
        assert "history" not in manifest["metrics"]  # the manifest keeps the summary only
        assert body["history"][-1]["loss"] == pytest.approx(manifest["metrics"]["final"]["loss"])

        base = client.get("/v1/models/v0001/training", headers=auth)
        assert base.status_code == 404 and "base model" in base.json()["detail"]
        assert client.get("/v1/models/v0042/training", headers=auth).status_code == 404
        assert client.get("/v1/models/latest/training", headers=auth).status_code == 422

        # a log that is not what the manifest's digest says: refused, with the fix named
        stored = adapted.backend.local_path(f"versions/v0002/{METRICS}")
        metrics = json.loads(stored.read_text())
        metrics["history"][0]["loss"] = 0.0
        stored.write_text(json.dumps(metrics))
        damaged = client.get("/v1/models/v0002/training", headers=auth)
        assert damaged.status_code == 409 and f"{METRICS} does not match its sha256" in damaged.json()["detail"]
        assert "das repair" in damaged.json()["detail"]
