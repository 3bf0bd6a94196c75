"""The finetune kind: its own weights, served from the backbone it was tuned on until it is re-tuned
in the background after a swap, and saying so."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from service_helpers import post_until_served, upload, wait_for_job, wait_serving
from task_sets import source_task, write_jsonl

from das.app import build_app


def test_a_finetune_task_is_retuned_after_a_swap_and_says_when_it_is_stale(service_settings, tmp_path,
                                                                           small_corpus):
    sets = source_task(n_train=24, n_eval=20)
    train = write_jsonl(tmp_path / "train.jsonl", sets["train"])
    with TestClient(build_app(service_settings)) as client:
        with open(train, "rb") as f:
            response = client.post("/v1/tasks", data={"name": "ft", "kind": "finetune", "epochs": "2", "lr": "1e-4",
                                                      "batch_size": "8", "max_length": "64"},
                                   files={"train": ("train.jsonl", f)})
        assert response.status_code == 202, response.text
        assert wait_for_job(client, response.json()["job_id"])["state"] == "succeeded"
        texts = [t for t, _ in sets["heldout"][:20]]
        answer = post_until_served(client, "/v1/tasks/ft/predict", {"texts": texts})
        body = answer.json()
        assert (body["version"], body["task_model"]["kind"], body["task_model"]["fitted_on"]) == ("v0001", "finetune",
                                                                                                   "v0001")
        right = sum(r["label"] == y for r, (_, y) in zip(body["results"], sets["heldout"][:20], strict=True))
        assert right >= 14, body["results"]  # above chance (10 of 20)

        job = wait_for_job(client, upload(client, small_corpus, steps="6", lr="0.00001")["job_id"], timeout_s=180)
        assert job["state"] == "succeeded", job
        wait_serving(client, "v0002")
        seen = set()
        deadline = time.time() + 120
        while time.time() < deadline:
            model = client.post("/v1/tasks/ft/predict", json={"texts": texts[:2]}).json()["task_model"]
            seen.add((model["fitted_on"], model["stale"]))
            if model["fitted_on"] == "v0002":
                break
            time.sleep(0.2)
        assert ("v0002", False) in seen, seen  # re-tuned on the new backbone, in the background
        assert seen <= {("v0001", True), ("v0002", False)}, seen  # until then: the old tuning, marked stale
        retune = [j for j in client.get("/v1/jobs").json() if j["kind"] == "fit" and j["parent"] == "v0002"]
        assert len(retune) == 1 and retune[0]["state"] == "succeeded", retune
