"""The service in embedded mode: the in-process worker, hot swap, rollback, graceful shutdown."""

import time
from datetime import datetime

from fastapi.testclient import TestClient
from service_helpers import training_step, upload, wait_for_job, wait_serving

from das.app import build_app

PROBE = {"texts": ["permission is hereby granted, free of [MASK], to any person."], "top_k": 3}


def test_upload_adapt_swap_rollback_and_upload_again(service_settings, small_corpus, code_docs, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        assert client.get("/readyz").json()["version"] == "v0001"
        before = client.post("/v1/fill-mask", json=PROBE).json()
        assert before["version"] == "v0001"
        accepted = upload(client, small_corpus)
        job = wait_for_job(client, accepted["job_id"])
        assert job["state"] == "succeeded", job
        assert (job["version"], job["parent"]) == ("v0002", "v0001")
        assert list(job["phases_s"])[:2] == ["queued", "prepare"] and job["phases_s"]["train"] > 0
        wait_serving(client, "v0002")
        after = client.post("/v1/fill-mask", json=PROBE).json()
        assert after["version"] == "v0002" and after["results"] != before["results"]
        models = client.get("/v1/models").json()
        assert [(m["id"], m["status"]) for m in models] == [("v0001", "retired"), ("v0002", "active")]
        assert models[1]["corpus"]["sha256"] == accepted["corpus_id"]
        # roll back, then learn another corpus on top of v0001
        assert client.post("/v1/models/v0001/activate").json()["status"] == "active"
        wait_serving(client, "v0001")
        assert client.post("/v1/embeddings", json={"texts": ["a"]}).json()["version"] == "v0001"
        code = tmp_path / "code.txt"
        code.write_text("\n".join(code_docs[:60]), encoding="utf-8")
        job = wait_for_job(client, upload(client, code, domain="code")["job_id"])
        assert (job["state"], job["version"], job["parent"]) == ("succeeded", "v0003", "v0001")
        wait_serving(client, "v0003")
        importance = client.get("/v1/models/v0003/importance").json()
        assert set(importance["cumulative"]) == {"head", "intermediate", "output"}
        assert set(importance) == {"version", "cumulative", "added", "domain"}
        png = client.get("/v1/models/v0003/importance", params={"format": "png"})
        assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        # the same bytes again are recognised by their digest
        again = upload(client, small_corpus)
        assert again["corpus_known"] and again["corpus_id"] == accepted["corpus_id"]
        wait_for_job(client, again["job_id"])
        metrics = client.get("/metrics").text
        assert 'das_jobs{state="succeeded"} 3.0' in metrics and "das_request_seconds_bucket" in metrics
        assert 'das_batch_size_count{kind="fill_mask"}' in metrics


def test_cancel_and_jobs_run_in_order(service_settings, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        first = upload(client, small_corpus, steps="40")
        second = upload(client, small_corpus, steps="41")
        third = upload(client, small_corpus, steps="42")
        cancelled = client.delete(f"/v1/jobs/{third['job_id']}").json()
        assert cancelled["state"] == "cancelled"
        assert client.delete(f"/v1/jobs/{third['job_id']}").status_code == 409
        a, b = wait_for_job(client, first["job_id"]), wait_for_job(client, second["job_id"])
        assert (a["version"], b["version"], b["parent"]) == ("v0002", "v0003", "v0002")  # a chain, in order
        assert datetime.fromisoformat(a["finished"]) <= datetime.fromisoformat(b["started"])  # never two at once
        assert client.get(f"/v1/jobs/{third['job_id']}").json()["state"] == "cancelled"
        assert [m["id"] for m in client.get("/v1/models").json()] == ["v0001", "v0002", "v0003"]


def test_graceful_shutdown_leaves_a_running_job_resumable(service_settings, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        job_id = upload(client, small_corpus, steps="120")["job_id"]
        wait_for_job(client, job_id, states=("running",))
        while training_step(client.get(f"/v1/jobs/{job_id}").json()) < 5:
            time.sleep(0.05)
    # the app stopped mid-job: the job is queued again, its checkpoint kept
    with TestClient(build_app(service_settings)) as client:
        job = wait_for_job(client, job_id, timeout_s=180)
        assert job["state"] == "succeeded" and job["version"] == "v0002"
        manifest = client.get("/v1/models/v0002").json()
        assert manifest["metrics"]["resumed_from_step"] >= 5
