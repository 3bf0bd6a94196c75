"""Batch predictions: a JSONL file answered line by line by a job (the embedded worker thread, and a real Celery
worker on Redis), each line answered as POST /v1/predict, /v1/embeddings and /v1/fill-mask answer the same text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import upload, wait_for_job
from task_sets import source_task
from test_endtasks_service import celery_worker, register, wait_task  # noqa: F401 - a fixture, and helpers

from das.app import build_app

SCORE_TOLERANCE = 1e-5  # the same version and features; a batch pads its rows to other widths than a request


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for text, _ in source_task()["heldout"][:50]]


def batch(client, rows: list[dict] | bytes, **form) -> object:
    body = rows if isinstance(rows, bytes) else "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.post("/v1/batch-predictions", files={"file": ("lines.jsonl", body)}, data=form)


def output(client, job_id: str) -> list[dict]:
    response = client.get(f"/v1/jobs/{job_id}/output")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def assert_same_task_answers(batch_answer: dict, request_answer: dict) -> None:
    assert batch_answer.keys() == request_answer.keys()
    for task, answer in request_answer.items():
        assert batch_answer[task]["label"] == answer["label"], (task, batch_answer, answer)
        assert batch_answer[task]["scores"] == pytest.approx(answer["scores"], abs=SCORE_TOLERANCE)


def check_predictions_equal_the_service(client, texts: list[str]) -> None:
    """~50 lines through a job: one answer per line, in order, with its id, as POST /v1/predict answers them."""
    rows = [{"id": f"t{i}", "text": text} for i, text in enumerate(texts)]
    rows[7].pop("id")  # a line without an id gets its line number
    accepted = batch(client, rows)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert (body["lines"], body["kind"], body["tasks"]) == (len(texts), "predict", ["source"])
    job = wait_for_job(client, body["job_id"], timeout_s=180)
    assert (job["state"], job["kind"], job["version"], job["parent"]) == ("succeeded", "predict", "v0001",
                                                                          "v0001"), job
    assert (job["progress"]["step"], job["progress"]["total"], job["lines"]) == (len(texts), len(texts), len(texts))
    answers = output(client, body["job_id"])
    assert [a["id"] for a in answers] == [r.get("id", 8) for r in rows]
    expected = client.post("/v1/predict", json={"texts": texts[:25]}).json()["results"]
    expected += client.post("/v1/predict", json={"texts": texts[25:]}).json()["results"]
    for answer, want in zip(answers, expected, strict=True):
        assert_same_task_answers(answer["result"], want)


def test_batch_predictions_with_the_embedded_worker(service_settings, tmp_path, texts):
    with TestClient(build_app(service_settings)) as client:
        fit = register(client, tmp_path, "source", source_task())
        assert wait_for_job(client, fit["job_id"])["state"] == "succeeded"
        wait_task(client, "source", "v0001")
        check_predictions_equal_the_service(client, texts)

        # embeddings and fill-mask lines get the answers of their routes
        embedded = wait_for_job(client, batch(client, [{"text": t} for t in texts[:6]], kind="embed").json()["job_id"])
        vectors = client.post("/v1/embeddings", json={"texts": texts[:6]}).json()["embeddings"]
        for answer, vector in zip(output(client, embedded["id"]), vectors, strict=True):
            assert answer["result"] == pytest.approx(vector, abs=SCORE_TOLERANCE)
        masked = ["permission is hereby [MASK] to any person.", "the [MASK] is provided as is, [MASK] warranty."]
        filled = wait_for_job(client, batch(client, [{"text": t} for t in masked], kind="fill_mask",
                                            top_k="3").json()["job_id"])
        candidates = client.post("/v1/fill-mask", json={"texts": masked, "top_k": 3}).json()["results"]
        for answer, per_text in zip(output(client, filled["id"]), candidates, strict=True):
            assert [[c["token"] for c in mask] for mask in answer["result"]] == \
                   [[c["token"] for c in mask] for mask in per_text]


def test_a_bad_line_is_a_422_naming_it_and_nothing_is_queued(service_settings, tmp_path):
    with TestClient(build_app(service_settings)) as client:
        store = Path(service_settings.store) / "corpora"
        before = sorted(p.name for p in store.iterdir()) if store.is_dir() else []
        good = json.dumps({"text": "a line", "id": 1}).encode() + b"\n"
        cases = {good + b'{"text": "two", "id": 2\n': "line 2 is not valid JSON",
                 good + b"\n" + b'{"id": 3}\n': 'line 3 lacks "text"',
                 good + b'{"text": "  "}\n': 'line 2: "text" is empty',
                 good + b'{"text": "x", "txt": "y"}\n': "line 2 has unknown key(s) 'txt'",
                 good + b'{"text": "x", "id": [1]}\n': 'line 2: "id" must be a string or an integer',
                 good + json.dumps({"text": "x" * 4001}).encode(): "the limit is 4000 (DAS_MAX_TEXT_CHARS)",
                 good + b"\xff\n": "not UTF-8 (invalid byte at offset 28, line 2)",
                 good + b'{"text": "x", "id": ' + b"9" * 5000 + b"}\n":
                     "line 2 is not readable JSON (Exceeds the limit",
                 good + b'{"text": "x", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n":
                     "line 2 nests 100001 levels deep",
                 b"": "holds no lines"}
        for body, said in cases.items():
            answer = batch(client, body, kind="embed")
            assert answer.status_code == 422 and said in answer.json()["detail"], (body[:60], answer.text)
        masked = json.dumps({"text": "a [MASK] line"}).encode() + b"\n"
        unmasked = batch(client, masked + good, kind="fill_mask")
        assert unmasked.status_code == 422 and "line 2: \"text\" holds no mask token" in unmasked.json()["detail"]
        assert batch(client, good, tasks="nope").status_code == 422  # no such task
        assert batch(client, good, kind="embed", tasks="nope").status_code == 422  # tasks are for predict only
        assert batch(client, good).status_code == 409  # predict with no task served
        assert client.get("/v1/jobs").json() == []
        after = sorted(p.name for p in store.iterdir()) if store.is_dir() else []
        assert after == before


def test_too_many_lines_is_a_422_naming_the_setting(service_settings):
    settings = service_settings.model_copy(update={"max_batch_prediction_lines": 3})
    with TestClient(build_app(settings)) as client:
        answer = batch(client, [{"text": f"line {i}"} for i in range(4)], kind="embed")
        assert answer.status_code == 422, answer.text
        assert "line 4" in answer.json()["detail"] and "DAS_MAX_BATCH_PREDICTION_LINES" in answer.json()["detail"]
        assert client.get("/v1/jobs").json() == []


def test_cancel_stops_a_running_batch_and_the_output_route_says_why_there_is_none(service_settings, small_corpus):
    lines = [{"text": f"line number {i} of a long file that someone wants embedded"} for i in range(6000)]
    with TestClient(build_app(service_settings)) as client:
        job_id = batch(client, lines, kind="embed").json()["job_id"]
        deadline = time.time() + 120
        while (client.get(f"/v1/jobs/{job_id}").json()["progress"].get("step") or 0) < 64:
            assert time.time() < deadline, "the batch did not start"
            time.sleep(0.02)
        assert client.get(f"/v1/jobs/{job_id}/output").status_code == 404  # not written yet
        cancelled = client.delete(f"/v1/batch-predictions/{job_id}")  # the inference token's own cancel
        assert cancelled.status_code == 200, cancelled.text
        job = wait_for_job(client, job_id)
        assert job["state"] == "cancelled" and job["progress"]["step"] < len(lines), job
        assert job["output_sha256"] is None
        missing = client.get(f"/v1/jobs/{job_id}/output")
        assert missing.status_code == 404 and "no output yet (cancelled)" in missing.json()["detail"]
        assert not list((service_settings.work_dir / "batch-predictions").glob("*.jsonl"))  # its partial answers
        assert client.delete(f"/v1/batch-predictions/{job_id}").status_code == 409  # already ended
        # another kind of job has no output, and is not cancelled here
        adapt = upload(client, small_corpus)["job_id"]
        assert client.get(f"/v1/jobs/{adapt}/output").status_code == 409
        assert client.delete(f"/v1/batch-predictions/{adapt}").status_code == 409
        assert client.delete(f"/v1/jobs/{adapt}").status_code == 200


def test_batch_predictions_with_a_celery_worker(celery_worker, tmp_path, texts):  # noqa: F811 - the fixture
    with TestClient(build_app(celery_worker)) as client:
        assert client.get("/readyz").json()["mode"] == "distributed"
        fit = register(client, tmp_path, "source", source_task())
        assert wait_for_job(client, fit["job_id"], timeout_s=180)["state"] == "succeeded"
        wait_task(client, "source", "v0001")
        check_predictions_equal_the_service(client, texts)


LONG = " ".join(["word"] * 600)  # over 512 tokens, within DAS_MAX_TEXT_CHARS


def test_a_line_over_the_maximum_sequence_gets_an_error_unless_the_upload_says_truncate(service_settings):
    """As on the inference routes (TEI's rule): a text over the model's maximum sequence is refused unless
    truncate; the batch refuses that line only, and says per answered line whether its text was cut."""
    short = ["a short line", "another short line about licences", "and a third"]
    rows = [{"id": "s0", "text": short[0]}, {"id": "long", "text": LONG}, {"id": "s1", "text": short[1]},
            {"id": "s2", "text": short[2]}]
    with TestClient(build_app(service_settings)) as client:
        refused = client.post("/v1/embeddings", json={"texts": [LONG]})
        assert refused.status_code == 422, refused.text
        whole = int(refused.json()["detail"].split(" has ")[1].split(" tokens")[0])  # the service's own count
        assert whole > 512
        vectors = client.post("/v1/embeddings", json={"texts": short}).json()["embeddings"]
        cut_vector = client.post("/v1/embeddings", json={"texts": [LONG], "truncate": True}).json()["embeddings"][0]

        accepted = batch(client, rows, kind="embed")
        assert accepted.status_code == 202 and accepted.json()["truncate"] is False, accepted.text
        job = wait_for_job(client, accepted.json()["job_id"])
        assert (job["state"], job["truncate"]) == ("succeeded", False), job
        answers = output(client, job["id"])
        assert [a["id"] for a in answers] == ["s0", "long", "s1", "s2"]
        assert answers[1] == {"id": "long", "error": f"text has {whole} tokens; the model reads at most 512 "
                                                     "(specials included): shorten it, or upload with truncate=true "
                                                     "to have it cut"}
        for answer, vector in zip([answers[0], *answers[2:]], vectors, strict=True):
            assert answer.keys() == {"id", "result", "truncated"} and answer["truncated"] is False
            assert answer["result"] == pytest.approx(vector, abs=SCORE_TOLERANCE)

        accepted = batch(client, rows, kind="embed", truncate="true")
        assert accepted.status_code == 202 and accepted.json()["truncate"] is True, accepted.text
        job = wait_for_job(client, accepted.json()["job_id"])
        assert (job["state"], job["truncate"]) == ("succeeded", True), job
        answers = output(client, job["id"])
        assert [a["truncated"] for a in answers] == [False, True, False, False]
        assert answers[1]["result"] == pytest.approx(cut_vector, abs=SCORE_TOLERANCE)  # cut as the service cuts
        for answer, vector in zip([answers[0], *answers[2:]], vectors, strict=True):
            assert answer["result"] == pytest.approx(vector, abs=SCORE_TOLERANCE)


def test_auto_truncate_makes_every_batch_cut_its_long_lines(service_settings):
    settings = service_settings.model_copy(update={"auto_truncate": True})
    with TestClient(build_app(settings)) as client:
        accepted = batch(client, [{"text": "short"}, {"text": LONG}], kind="embed")
        assert accepted.status_code == 202 and accepted.json()["truncate"] is True, accepted.text
        job = wait_for_job(client, accepted.json()["job_id"])
        assert (job["state"], job["truncate"]) == ("succeeded", True), job
        assert [(a["id"], a["truncated"]) for a in output(client, job["id"])] == [(1, False), (2, True)]
