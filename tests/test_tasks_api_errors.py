"""Bad input to the end-task routes: a clear 4xx each, and nothing half-stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_helpers import post_until_served, upload, wait_for_job
from task_sets import source_task, write_jsonl

from das.app import build_app

GOOD = [("the licence grants permission", "licence"), ("permission is hereby granted", "licence"),
        ("return the sum of two numbers", "code"), ("read the file and return its lines", "code")]


@pytest.fixture
def client(service_settings):
    settings = service_settings.model_copy(update={"max_task_upload_bytes": 4096, "max_task_text_chars": 200})
    with TestClient(build_app(settings)) as c:
        yield c


def post_task(client, tmp_path, train_rows, eval_rows=None, name="t", raw_train: bytes | None = None, **form):
    train = tmp_path / "train.jsonl"
    if raw_train is not None:
        train.write_bytes(raw_train)
    else:
        write_jsonl(train, train_rows)
    files = {"train": ("train.jsonl", train.read_bytes())}
    if eval_rows is not None:
        files["eval"] = ("eval.jsonl", write_jsonl(tmp_path / "eval.jsonl", eval_rows).read_bytes())
    return client.post("/v1/tasks", data={"name": name, **form}, files=files)


def nothing_stored(client, service_settings) -> bool:
    return client.get("/v1/tasks").json() == [] and not [j for j in client.get("/v1/jobs").json() if j["kind"] == "fit"]


@pytest.mark.parametrize(("rows", "form", "raw", "status", "message"), [
    (GOOD, {"colour": "blue"}, None, 422, "unknown form field 'colour'"),  # api.strict, for every route
    (GOOD, {"l2": "-1"}, None, 422, "l2 must be within"),
    (GOOD, {"kind": "zeroshot"}, None, 422, "kind"),
    (GOOD, {"name": "Bad Name"}, None, 422, "invalid task name"),
    ([(t, "licence") for t, _ in GOOD], {}, None, 422, "at least 2 labels"),
    (GOOD[:3], {}, None, 422, "'code'"),  # one example of 'code'
    (GOOD + [("   ", "code")], {}, None, 422, '"text" is empty'),
    (GOOD + [("x" * 300, "code")], {}, None, 422, "300 characters"),
    (None, {}, b'{"text": "a", "label": "b", "extra": 1}\n', 422, "unknown key(s) 'extra'"),
    (None, {}, b"\xff\xfe not utf-8", 422, "UTF-8"),
    (None, {}, b'{"text": "a", "label": "b"}\n' * 200, 413, "exceeds the limit of 4096 bytes"),
])
def test_bad_registration_is_refused_and_nothing_is_stored(client, service_settings, tmp_path, rows, form, raw,
                                                           status, message):
    response = post_task(client, tmp_path, rows, raw_train=raw, **{"name": "t", **form})
    assert response.status_code == status, response.text
    assert message in response.text.replace('\\"', '"'), response.text
    assert nothing_stored(client, service_settings)


def test_eval_labels_must_be_known_in_train(client, service_settings, tmp_path):
    response = post_task(client, tmp_path, GOOD, [("what is this", "poetry")])
    assert response.status_code == 422 and "poetry" in response.text
    assert nothing_stored(client, service_settings)


def test_a_taken_name_is_409_unless_replace(client, tmp_path):
    first = post_task(client, tmp_path, GOOD)
    assert first.status_code == 202, first.text
    assert wait_for_job(client, first.json()["job_id"])["state"] == "succeeded"
    again = post_task(client, tmp_path, GOOD)
    assert again.status_code == 409 and "replace=true" in again.json()["detail"]
    replaced = post_task(client, tmp_path, GOOD, replace="true", l2="0.01")
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["task"]["generation"] != first.json()["task"]["generation"]
    assert wait_for_job(client, replaced.json()["job_id"])["state"] == "succeeded"


def test_predict_unknown_task_is_404_and_a_task_being_fitted_is_409(client, tmp_path, small_corpus):
    assert client.post("/v1/tasks/nope/predict", json={"texts": ["hello"]}).status_code == 404
    assert client.post("/v1/predict", json={"texts": ["hello"], "tasks": ["nope"]}).status_code == 404
    assert client.post("/v1/predict", json={"texts": ["hello"]}).status_code == 409  # no task served yet
    blocker = upload(client, small_corpus, steps="400", batch_size="4", max_length="48")["job_id"]
    rows = [(text[:100], label) for text, label in source_task()["train"][:10] + source_task()["train"][-10:]]
    registered = post_task(client, tmp_path, rows)
    assert registered.status_code == 202, registered.text
    job_id = registered.json()["job_id"]
    waiting = client.post("/v1/tasks/t/predict", json={"texts": ["hello"]})
    assert waiting.status_code == 409 and waiting.headers["Retry-After"], waiting.text
    assert f"fit job {job_id} is queued" in waiting.json()["detail"]  # the job it waits for, named
    assert client.delete(f"/v1/jobs/{blocker}").status_code == 200
    assert wait_for_job(client, job_id)["state"] == "succeeded"
    answer = post_until_served(client, "/v1/tasks/t/predict", {"texts": ["permission is hereby granted"]})
    assert answer.status_code == 200 and answer.json()["results"][0]["label"] in ("code", "licence")


def test_delete_makes_predictions_404(client, tmp_path):
    job_id = post_task(client, tmp_path, GOOD).json()["job_id"]
    assert wait_for_job(client, job_id)["state"] == "succeeded"
    assert client.delete("/v1/tasks/t").status_code == 204
    assert client.delete("/v1/tasks/t").status_code == 404
    assert client.post("/v1/tasks/t/predict", json={"texts": ["hello"]}).status_code == 404
    assert client.get("/v1/tasks").json() == []


def test_when_the_queue_refuses_a_job_the_upload_is_503_and_the_job_is_not_left_queued(client, tmp_path,
                                                                                       small_corpus):
    service = client.app.state.service

    def broker_away(job_id: str) -> None:  # fault injection: what a Celery client raises with no broker
        raise ConnectionError("broker unreachable")

    service.submit = broker_away
    with open(small_corpus, "rb") as f:
        corpus = client.post("/v1/corpora", files={"file": ("c.txt", f)}, data={"domain": "legal", "steps": "4"})
    task = post_task(client, tmp_path, GOOD)
    for response in (corpus, task):
        assert response.status_code == 503 and response.headers["Retry-After"] == "5", response.text
    jobs = client.get("/v1/jobs").json()
    assert len(jobs) == 2 and all(j["state"] == "failed" and "could not queue" in j["error"] for j in jobs)
