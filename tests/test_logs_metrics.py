"""Logs and metrics an operator can use: the log lines of real jobs, swaps, fits, gate decisions and refused requests
(as `das serve` writes them, JSON lines through das_settings.logs), the Celery worker writing through the same
handler, and /metrics after a real fit and a real adaptation."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import upload, wait_for_job, wait_serving
from task_sets import topic_task, write_jsonl

from das.app import build_app
from das_settings import Settings
from das_settings.logs import configure_logging
from job_records import AdaptRequest, FitRequest

HARMLESS = {"steps": "2", "lr": "0.00001"}  # a real adaptation that changes next to nothing: the gate accepts it


@pytest.fixture
def log_stream():
    """The process's logs as `das serve` configures them with DAS_LOG_FORMAT=json, written to a buffer; the
    root logger is put back as it was afterwards."""
    root = logging.getLogger()
    level, stream = root.level, io.StringIO()
    handler = configure_logging(Settings(log_format="json", log_level="INFO"), stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def events(stream: io.StringIO, event: str, **fields) -> list[dict]:
    return [line for line in lines(stream)
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())]


def logged(stream: io.StringIO, event: str, timeout_s: float = 30.0, **fields) -> list[dict]:
    """The lines of `event` once there is one: a job's own lines come from its process a moment after its record
    says it ended (the deadline is a guard, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not (found := events(stream, event, **fields)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample of the Prometheus text `text` (labels in any order), None if absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == {k: str(v) for k, v in labels.items()}:
            return float(match[3])
    return None


def test_json_log_lines_parse_with_their_fields_and_the_text_form_is_one_line(log_stream):
    log = logging.getLogger("das.test")
    log.info("job %s ended", "j1", extra={"event": "job_end", "job_id": "j1", "seconds": 1.5, "level": "hidden"})
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("it failed")
    logging.getLogger("das.test").debug("not at INFO")
    first, second = lines(log_stream)
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "das.test", "job j1 ended")
    assert (first["event"], first["job_id"], first["seconds"]) == ("job_end", "j1", 1.5)
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None  # ISO-8601 with its zone
    assert second["level"] == "ERROR" and "ValueError: broken" in second["exception"]

    text = io.StringIO()
    handler = configure_logging(Settings(log_format="text", log_level="WARNING"), stream=text)
    log.info("below WARNING")
    log.warning("disk %s", "low", extra={"event": "x"})
    assert len(lines(log_stream)) == 2, "configuring again replaces the handler it installed"
    [line] = text.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING das.test: disk low", line), line
    logging.getLogger().removeHandler(handler)


def test_log_settings_are_checked_and_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("DAS_LOG_LEVEL", "debug")
    monkeypatch.setenv("DAS_LOG_FORMAT", "json")
    monkeypatch.setenv("DAS_ACCESS_LOG", "true")
    settings = Settings()
    assert (settings.log_level, settings.log_format, settings.access_log) == ("DEBUG", "json", True)
    for field, value in (("log_level", "LOUD"), ("log_format", "xml")):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: value})


def register_topic(client, tmp_path) -> str:
    sets = topic_task(30, 20)
    train = write_jsonl(tmp_path / "topic-train.jsonl", sets["train"])
    evals = write_jsonl(tmp_path / "topic-eval.jsonl", sets["eval"])
    with open(train, "rb") as t, open(evals, "rb") as e:
        response = client.post("/v1/tasks", data={"name": "topic"},
                               files={"train": (train.name, t), "eval": (evals.name, e)})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_a_fit_and_an_adaptation_are_logged_and_counted(service_settings, small_corpus, tmp_path, log_stream):
    with TestClient(build_app(service_settings)) as client:
        # a fit job: its start, its end with seconds, the fit with its score
        fit_id = register_topic(client, tmp_path)
        assert wait_for_job(client, fit_id)["state"] == "succeeded"
        [start] = logged(log_stream, "job_start", job_id=fit_id)
        assert (start["kind"], start["task"], start["parent"], start["attempt"]) == ("fit", "topic", "v0001", 1)
        [end] = logged(log_stream, "job_end", job_id=fit_id)
        assert (end["state"], end["kind"], end["task"]) == ("succeeded", "fit", "topic") and end["seconds"] > 0
        [fit] = logged(log_stream, "fit", task="topic", version="v0001")
        assert fit["seconds"] > 0 and 0 <= fit["macro_f1"] <= 100

        # a real adaptation: start, the gate's decision with its scores, the end, the swap
        job_id = upload(client, small_corpus, **HARMLESS)["job_id"]
        job = wait_for_job(client, job_id, timeout_s=240)
        assert (job["state"], job["version"]) == ("succeeded", "v0002"), job
        wait_serving(client, "v0002")
        [start] = logged(log_stream, "job_start", job_id=job_id)
        assert (start["kind"], start["domain"], start["parent"]) == ("adapt", "legal", "v0001")
        [decision] = logged(log_stream, "gate_decision", task="topic", parent="v0001")
        assert decision["decision"] == "accepted" and decision["reference"] == "v0001"
        assert abs(decision["reference_f1"] - decision["candidate_f1"] - decision["drop"]) < 0.01
        assert "macro-F1" in decision["message"] and "topic accepted" in decision["message"]
        [end] = logged(log_stream, "job_end", job_id=job_id)
        assert (end["state"], end["version"], end["domain"]) == ("succeeded", "v0002", "legal")
        assert end["seconds"] > 0
        assert f"job {job_id} succeeded" in end["message"]
        # the log stream is the process's: a line of an earlier test's service may land in it (seen once under load);
        # this service's own swaps are counted exactly by its metrics below (das_swaps_total == 2)
        swap = logged(log_stream, "swap", version="v0002")[-1]
        assert swap["previous"] == "v0001" and swap["seconds"] > 0
        assert events(log_stream, "swap", version="v0001"), "the first version loaded is logged too"

        # refused requests: the reason is logged, the answer is as before
        missing = client.get("/v1/jobs/00000000")
        assert (missing.status_code, missing.json()) == (404, {"detail": "no job 00000000"})
        [refused] = events(log_stream, "refused", path="/v1/jobs/00000000")
        assert (refused["level"], refused["method"], refused["status"]) == ("INFO", "GET", 404)
        assert refused["detail"] == "no job 00000000"
        invalid = client.post("/v1/fill-mask", json={"texts": ["a [MASK]"], "top_k": "many"})
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "top_k"]
        [refused] = events(log_stream, "refused", path="/v1/fill-mask", status=422)
        assert "body.top_k" in refused["detail"] and refused["method"] == "POST"
        too_large = client.post("/v1/embeddings", content=b"x" * (service_settings.max_json_bytes + 1),
                                headers={"content-type": "application/json"})
        assert too_large.status_code == 413
        [refused] = events(log_stream, "refused", path="/v1/embeddings", status=413)
        assert refused["detail"] == too_large.json()["detail"] and refused["method"] == "POST"

        # /metrics: swaps and their seconds, the served version, fit seconds, the gate, the queue by kind
        text = client.get("/metrics").text
        assert metric(text, "das_swaps_total") == 2  # v0001 at start, then v0002
        assert metric(text, "das_swap_seconds_count") == 2 and metric(text, "das_swap_seconds_sum") > 0
        assert metric(text, "das_served_version_info", version="v0002") == 1
        assert metric(text, "das_active_version", version="v0002") == 1
        assert metric(text, "das_fit_seconds_count", task="topic") == 1
        record = client.app.state.service.jobs.get(fit_id)  # the job record's own times, whatever the API shows
        assert metric(text, "das_fit_seconds_sum", task="topic") == pytest.approx(record.finished - record.started)
        assert metric(text, "das_gate_decisions", task="topic", decision="accepted") == 1
        assert metric(text, "das_gate_decisions", task="topic", decision="rejected") is None
        assert metric(text, "das_jobs_queued", kind="adapt") == 0 and metric(text, "das_jobs_queued", kind="fit") == 0

        # jobs waiting for a worker, counted per kind (records accepted, not handed to the worker)
        service = client.app.state.service
        for request in (AdaptRequest("legal", job["corpus_id"], 60, {}), AdaptRequest("code", job["corpus_id"], 60, {}),
                        FitRequest("topic", "g", "0" * 64, 10)):
            service.jobs.create(request)
        text = client.get("/metrics").text
        assert metric(text, "das_jobs_queued", kind="adapt") == 2 and metric(text, "das_jobs_queued", kind="fit") == 1


def test_the_celery_worker_logs_through_our_handler(service_settings, redis_url, tmp_path):
    """`das worker` with DAS_LOG_FORMAT=json: Celery's own lines come out as our JSON lines, at DAS_LOG_LEVEL."""
    log_file = tmp_path / "worker.log"
    env = {**os.environ, "DAS_BROKER_URL": redis_url, "DAS_REDIS_PREFIX": f"dastest-{uuid.uuid4().hex[:8]}:",
           "DAS_STORE": service_settings.store, "DAS_WORK_DIR": str(service_settings.work_dir),
           "DAS_MODELS_DIR": str(service_settings.models_dir), "DAS_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1"}
    with open(log_file, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        deadline, ready = time.time() + 120, []
        while not ready and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            ready = [line for line in log_file.read_text().splitlines() if "ready" in line]
        assert ready, log_file.read_text()[-3000:]
        line = json.loads(ready[0])
        assert line["logger"].startswith("celery") and line["level"] == "INFO" and "ts" in line
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
