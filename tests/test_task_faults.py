"""End tasks under faults, each class against a real server (embedded worker; the Celery path is in
tests/test_endtasks_service.py): one task never hurts the service, another task or an adaptation; a client's
retry always ends; every fit can be stopped; task files are bounded; damage stays with its task; a full disk
is a 507 that leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import post_until_served, upload, wait_for_job, wait_serving
from task_sets import source_task, write_jsonl
from typer.testing import CliRunner

from das.app import build_app
from das.cli import app as cli
from job_records import sqlite_path
from model_store.store import ModelStore
from model_store.tasks import TaskStore

SMALL_JOB = {"steps": "2", "batch_size": "4", "max_length": "32", "importance_samples": "4",
             "importance_batch_size": "4"}


def rows(n_train: int = 20, n_eval: int = 20) -> dict[str, list[tuple[str, str]]]:
    return source_task(n_train, n_eval)


def register(client, tmp_path: Path, name: str, sets: dict, **form):
    train = write_jsonl(tmp_path / f"{name}-train.jsonl", sets["train"])
    files = {"train": (train.name, train.read_bytes())}
    if sets.get("eval"):
        evals = write_jsonl(tmp_path / f"{name}-eval.jsonl", sets["eval"])
        files["eval"] = (evals.name, evals.read_bytes())
    return client.post("/v1/tasks", data={"name": name, **form}, files=files)


def fitted(client, tmp_path: Path, name: str, sets: dict, **form) -> dict:
    response = register(client, tmp_path, name, sets, **form)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    return job


def predict(client, name: str):
    return client.post(f"/v1/tasks/{name}/predict", json={"texts": ["permission is hereby granted"]})


# ------------------------------------------------------------------ 1. one task never hurts another or a job

def test_task_data_gets_the_inference_rules_at_registration(service_settings, tmp_path):
    good = [json.dumps({"text": text, "label": label}) for text, label in rows(3, 0)["train"]]
    raw = "\n".join(good + ['{"text": "bad \\ud800 text", "label": "a"}']) + "\n"
    train = tmp_path / "notes.jsonl"
    train.write_text(raw, encoding="utf-8")  # valid UTF-8 JSON: the surrogate is an escape
    with TestClient(build_app(service_settings)) as client:
        response = client.post("/v1/tasks", data={"name": "t"}, files={"train": ("notes.jsonl", train.read_bytes())})
        assert response.status_code == 422, response.text
        assert "notes.jsonl: line 7" in response.text and "surrogate" in response.text
        assert client.get("/v1/tasks").json() == []
        assert not [j for j in client.get("/v1/jobs").json() if j["kind"] == "fit"]
    result = CliRunner().invoke(cli, ["task", "add", "t", str(train), "--store", service_settings.store])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "notes.jsonl: line 7" in result.output and "Traceback" not in result.output


def test_a_task_that_cannot_be_scored_never_stops_an_adaptation(service_settings, tmp_path, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        fitted(client, tmp_path, "good", rows())
        fitted(client, tmp_path, "bad", rows(21, 20))  # other data: the store keeps each file once, by digest
        store = ModelStore.open(service_settings.store)
        tasks = TaskStore(store)
        tasks.data_path(tasks.definition("bad").train).write_bytes(b"\xff broken after registration\n")
        (Path(service_settings.store) / "tasks" / "unreadable.json").write_text("{ not json")
        job = wait_for_job(client, upload(client, small_corpus, **SMALL_JOB)["job_id"], timeout_s=180)
        assert (job["state"], job["version"]) == ("succeeded", "v0002"), job
        gate = client.get("/v1/models/v0002").json()["evaluation"]["gate"]
        unscored = {entry["task"]: entry["problem"] for entry in gate["unscored"]}
        assert set(unscored) == {"bad", "unreadable"} and "not UTF-8" in unscored["bad"], gate
        assert [d["task"] for d in gate["decisions"]] == ["good"]  # the others still decide
        problems = client.get("/v1/tasks/bad").json()["problems"]
        assert any("forgetting gate" in p["problem"] and "not UTF-8" in p["problem"] for p in problems), problems
        wait_serving(client, "v0002")
        assert post_until_served(client, "/v1/tasks/good/predict", {"texts": ["hello"]}).status_code == 200
        assert client.post("/v1/fill-mask", json={"texts": ["the [MASK] is here."]}).status_code == 200


def test_a_damaged_task_model_stays_with_its_task(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        fitted(client, tmp_path, "a", rows())
        fitted(client, tmp_path, "b", rows())
        [probe] = Path(service_settings.store).glob("task_models/v0001/a/*/probe.safetensors")
        generation = client.get("/v1/tasks/a").json()["generation"]
    damaged = bytearray(probe.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one byte flipped, then a restart
    probe.write_bytes(bytes(damaged))
    with TestClient(build_app(service_settings)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.post("/v1/embeddings", json={"texts": ["hello"]}).status_code == 200
        assert predict(client, "b").status_code == 200  # the other task serves
        answer = predict(client, "a")
        assert answer.status_code == 409 and "damaged" in answer.text and "Retry-After" not in answer.headers
        assert "replace" in answer.json()["detail"] and "delete" in answer.json()["detail"]
        assert client.get("/v1/tasks/a").json()["damaged"]
        # `das repair` lists it (a dry run changes nothing)
        result = CliRunner().invoke(cli, ["repair", "--dry-run", "--no-verify", "--store", service_settings.store,
                                          "--json"])
        assert result.exit_code == 1 and f"task_models/v0001/a/{generation}" in result.output, result.output
        assert probe.is_file()
        # registering the same data again fits anew and replaces the damaged model
        job = fitted(client, tmp_path, "a", rows(), replace="true")
        assert job["version"] == "v0001"
        assert post_until_served(client, "/v1/tasks/a/predict", {"texts": ["hello"]}).status_code == 200
        assert client.get("/v1/tasks/a").json()["damaged"] is None


def test_repair_sets_damaged_task_models_and_definitions_aside(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        fitted(client, tmp_path, "a", rows())
        fitted(client, tmp_path, "b", rows())
    store = Path(service_settings.store)
    [record] = store.glob("task_models/v0001/a/*/model.json")
    record.write_text("{ truncated")
    (store / "tasks" / "b.json").write_text("[]")
    result = CliRunner().invoke(cli, ["repair", "--no-verify", "--store", str(store), "--json"])
    findings = {f["item"]: f for f in json.loads(result.output)}
    assert result.exit_code == 0 and all(f["fixed"] for f in findings.values()), result.output
    assert {"task b", f"task model {record.parent.relative_to(store)}"} <= set(findings)
    assert not record.exists() and not (store / "tasks" / "b.json").exists()
    assert sorted(p.name for p in (store / "damaged").rglob("*") if p.is_file())  # set aside, not deleted
    assert CliRunner().invoke(cli, ["repair", "--store", str(store)]).exit_code == 0  # nothing left to do


def test_a_damaged_definition_affects_its_task_alone_and_delete_works(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        fitted(client, tmp_path, "a", rows())
        fitted(client, tmp_path, "b", rows(21, 20))
        (Path(service_settings.store) / "tasks" / "a.json").write_text('{"name": "a"')  # cut short
        listed = client.get("/v1/tasks")
        assert listed.headers["X-Damaged-Tasks"] == "a" and [t["name"] for t in listed.json()] == ["b"]
        deadline = time.time() + 60  # the watcher re-reads the tasks at its next poll; until then the old model answers
        while predict(client, "a").status_code == 200 and time.time() < deadline:
            time.sleep(0.1)
        for answer in (client.get("/v1/tasks/a"), predict(client, "a")):
            assert answer.status_code == 409 and "damaged" in answer.text and "delete" in answer.text, answer.text
        assert post_until_served(client, "/v1/tasks/b/predict", {"texts": ["hello"]}).status_code == 200
        assert client.delete("/v1/tasks/a").status_code == 204
        assert client.get("/v1/tasks/a").status_code == 404 and "X-Damaged-Tasks" not in client.get("/v1/tasks").headers


# ------------------------------------------------------------------ 2. a client's retry always ends

def test_a_rollback_queues_a_fit_and_the_409_names_it(service_settings, tmp_path, small_corpus):
    with TestClient(build_app(service_settings)) as client:
        job = wait_for_job(client, upload(client, small_corpus, **SMALL_JOB)["job_id"], timeout_s=180)
        assert job["version"] == "v0002", job
        wait_serving(client, "v0002")
        fitted(client, tmp_path, "late", rows())  # registered on v0002 only
        activated = client.post("/v1/models/v0001/activate")
        assert activated.status_code == 200, activated.text
        [fit_job] = activated.json()["fit_jobs"]
        wait_serving(client, "v0001")
        waiting = predict(client, "late")
        if waiting.status_code == 409:  # while the fit is queued or running: Retry-After, and the job named
            assert waiting.headers["Retry-After"] and fit_job in waiting.json()["detail"], waiting.text
        assert wait_for_job(client, fit_job)["state"] == "succeeded"
        assert post_until_served(client, "/v1/tasks/late/predict", {"texts": ["hello"]}).status_code == 200
        assert client.get("/v1/tasks/late").json()["last_fit"]["job_id"] == fit_job
        # activating a version every task has a model on queues nothing
        assert client.post("/v1/models/v0001/activate").json()["fit_jobs"] == []


def test_after_a_failed_fit_the_answer_says_what_happened_without_retry_after(service_settings, tmp_path,
                                                                             small_corpus):
    with TestClient(build_app(service_settings)) as client:
        # the one worker is busy with a long adaptation, so the fit waits behind it whatever the machine's load
        busy = upload(client, small_corpus, **{**SMALL_JOB, "steps": "5000"})["job_id"]
        assert wait_for_job(client, busy, states=("running",))["state"] == "running"
        response = register(client, tmp_path, "t", rows(), kind="finetune", epochs="1")
        assert response.status_code == 202
        store = ModelStore.open(service_settings.store)
        tasks = TaskStore(store)
        tasks.data_path(tasks.definition("t").train).write_bytes(b"\xff")  # its data breaks before the fit runs
        assert client.delete(f"/v1/jobs/{busy}").status_code == 200
        job = wait_for_job(client, response.json()["job_id"])
        assert job["state"] in ("failed", "rejected"), job
        answer = predict(client, "t")
        assert answer.status_code == 409 and "Retry-After" not in answer.headers, answer.text
        assert f"last fit (job {job['id']}) ended {job['state']}" in answer.json()["detail"]
        assert "register it again" in answer.json()["detail"]
        last = client.get("/v1/tasks/t").json()["last_fit"]
        assert (last["job_id"], last["state"]) == (job["id"], job["state"]) and last["error"]


def test_das_activate_queues_fits_too(service_settings, tmp_path, small_corpus, monkeypatch):
    with TestClient(build_app(service_settings)) as client:
        wait_for_job(client, upload(client, small_corpus, **SMALL_JOB)["job_id"], timeout_s=180)
        wait_serving(client, "v0002")
        fitted(client, tmp_path, "late", rows())
    monkeypatch.setenv("DAS_WORK_DIR", str(service_settings.work_dir))
    from das_settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["activate", "v0001", "--store", service_settings.store])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0 and "queued for task late" in result.output, result.output
    assert sqlite_path(service_settings.work_dir, service_settings.store).is_file()
    with TestClient(build_app(service_settings)) as client:  # the embedded worker runs it at start
        assert post_until_served(client, "/v1/tasks/late/predict", {"texts": ["hello"]}, 120).status_code == 200


# ------------------------------------------------------------------ 3. every job can be stopped

@pytest.fixture
def roomy(service_settings):
    return service_settings.model_copy(update={"max_fit_examples_seen": 10**6})


def test_cancel_stops_a_running_fit_at_its_next_step(roomy, tmp_path):
    with TestClient(build_app(roomy)) as client:
        response = register(client, tmp_path, "ft", rows(40, 0), kind="finetune", epochs="40", batch_size="4",
                            max_length="32")
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        running = wait_for_job(client, job_id, states=("running",))
        assert running["state"] == "running"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        job = wait_for_job(client, job_id)
        assert job["state"] == "cancelled", job
        assert job["progress"].get("step", 0) < job["progress"].get("total", 800)  # it stopped before the end


def test_a_fit_superseded_by_a_new_registration_ends_cancelled_with_why(roomy, tmp_path, small_corpus):
    with TestClient(build_app(roomy)) as client:
        blocker = upload(client, small_corpus, steps="300", batch_size="4", max_length="48")["job_id"]
        first = register(client, tmp_path, "t", rows())
        second = register(client, tmp_path, "t", rows(20, 10), replace="true")
        assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
        assert client.delete(f"/v1/jobs/{blocker}").status_code == 200
        old = wait_for_job(client, first.json()["job_id"])
        assert old["state"] == "cancelled" and "superseded" in old["error"], old
        assert wait_for_job(client, second.json()["job_id"])["state"] == "succeeded"


def test_a_fits_total_work_is_bounded_before_it_starts(service_settings, tmp_path):
    settings = service_settings.model_copy(update={"max_fit_examples_seen": 100})
    with TestClient(build_app(settings)) as client:
        response = register(client, tmp_path, "t", rows(), kind="finetune", epochs="3")  # 40 x 3 = 120
        assert response.status_code == 422 and "DAS_MAX_FIT_EXAMPLES_SEEN" in response.text, response.text
        assert client.get("/v1/tasks").json() == []
        assert register(client, tmp_path, "t", rows(), kind="probe").status_code == 202  # a probe is one pass


# ------------------------------------------------------------------ 4. every input has a bound

def test_labels_are_bounded_in_length_and_number(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        long_label = [(text, "x" * 300 if i % 2 else "y") for i, (text, _) in enumerate(rows()["train"])]
        answer = register(client, tmp_path, "t", {"train": long_label})
        assert answer.status_code == 422 and "line 2" in answer.text and "300 characters" in answer.text
        many = [(f"text number {i}", f"label-{i // 2}") for i in range(2004)]
        answer = register(client, tmp_path, "t", {"train": many})
        assert answer.status_code == 422 and "1002 distinct labels" in answer.text, answer.text


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs): writes on it run out of space like a full disk."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: the job records may still be open


def test_a_full_disk_is_a_507_that_leaves_nothing_behind(service_settings, tmp_path, tiny_disk):
    settings = service_settings.model_copy(update={"work_dir": tiny_disk / "work", "max_upload_bytes": 8 * 2**20,
                                                   "max_task_upload_bytes": 8 * 2**20})
    corpus = tmp_path / "big.txt"
    corpus.write_text("".join(f"document {i} of a corpus that does not fit on the disk\n" for i in range(60_000)))
    with TestClient(build_app(settings)) as client:
        answer = client.post("/v1/corpora", data={"domain": "big", **SMALL_JOB},
                             files={"file": ("big.txt", corpus.read_bytes())})
        assert answer.status_code == 507 and "disk is full" in answer.text, answer.text
        train = write_jsonl(tmp_path / "train.jsonl", [(f"a long text number {i} " * 20, "ab"[i % 2])
                                                       for i in range(6000)])
        answer = client.post("/v1/tasks", data={"name": "t"}, files={"train": ("train.jsonl", train.read_bytes())})
        assert answer.status_code == 507, answer.text
        assert [p for p in (tiny_disk / "work" / "uploads").rglob("*") if p.is_file()] == []
        assert client.get("/v1/jobs").json() == [] and client.get("/v1/tasks").json() == []
        assert client.get("/readyz").json()["status"] == "ready"
