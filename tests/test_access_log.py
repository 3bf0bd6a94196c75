"""The access log and request ids (api/access_log.py) on a real `das serve` with DAS_ACCESS_LOG=true: one line per
request with method, path, status, milliseconds and the request's id, as JSON fields or one text line; the id taken
from a sane X-Request-ID or made, echoed on every answer (errors and the body limit's 413 too), and carried into
the job the request creates, on every line that job logs."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_helpers import das_serve
from task_sets import topic_task, write_jsonl

from das_settings import get_settings

MADE = re.compile(r"[0-9a-f]{32}")  # a uuid4's hex


def _serve(root: Path, log_format: str) -> Iterator[tuple[str, Path]]:
    log = root / "server.log"
    with pytest.MonkeyPatch.context() as env:  # das_serve passes this process's environment on
        env.setenv("DAS_LOG_FORMAT", log_format)
        env.setenv("DAS_ACCESS_LOG", "true")
        server, url = das_serve(root / "store", root / "work", get_settings().models_dir, log=log)
    try:
        yield url, log
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def json_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path_factory.mktemp("access-json"), "json")


@pytest.fixture(scope="module")
def text_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path_factory.mktemp("access-text"), "text")


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


def _logged(log: Path, timeout_s: float = 30.0, **fields: object) -> list[dict]:
    """The JSON lines with these fields once there is one (a line is written a moment after its answer; a job's lines
    come from its process; the deadline is a guard, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in _lines(log) if all(line.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _access(log: Path, request_id: str) -> dict:
    [line] = _logged(log, event="access", request_id=request_id)  # one line per request: none from uvicorn too
    return line


def _raw(url: str, request: bytes) -> bytes:
    """Send bytes an HTTP client would refuse to send; the answer's status line and headers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
            answer += chunk
    return answer.split(b"\r\n\r\n")[0]


def test_each_request_is_logged_once_with_its_status_time_and_id(json_server):
    url, log = json_server
    with httpx.Client(base_url=url, timeout=30) as http:
        given = http.get("/healthz", headers={"X-Request-ID": "client-7f3a:1"})
        assert given.headers["x-request-id"] == "client-7f3a:1"
        line = _access(log, "client-7f3a:1")
        assert (line["level"], line["logger"], line["method"], line["path"], line["status"]) == (
            "INFO", "api.access_log", "GET", "/healthz", 200)
        assert isinstance(line["ms"], float) and line["ms"] >= 0 and round(line["ms"], 1) == line["ms"]
        assert line["client"] == "127.0.0.1" and "ts" in line
        assert line["message"].startswith('127.0.0.1 "GET /healthz" 200 ') and "request_id=client-7f3a:1" in line[
            "message"]

        made = http.head("/readyz")  # none sent: one is made, echoed and logged (a HEAD as a HEAD)
        assert MADE.fullmatch(made.headers["x-request-id"])
        assert _access(log, made.headers["x-request-id"])["method"] == "HEAD"

        # errors: the id is echoed, the access line has the status, the refusal's own line the same id
        missing = http.get("/v1/jobs/0123456789abcdef", headers={"X-Request-ID": "missing-1"})
        assert (missing.status_code, missing.headers["x-request-id"]) == (404, "missing-1")
        assert _access(log, "missing-1")["status"] == 404
        assert _logged(log, event="refused", request_id="missing-1")[0]["status"] == 404
        invalid = http.post("/v1/fill-mask", json={"texts": ["a [MASK]"], "top_k": "many"},
                            headers={"X-Request-ID": "invalid-1"})
        assert (invalid.status_code, invalid.headers["x-request-id"]) == (422, "invalid-1")
        assert (_access(log, "invalid-1")["status"], _access(log, "invalid-1")["path"]) == (422, "/v1/fill-mask")
        assert "body.top_k" in _logged(log, event="refused", request_id="invalid-1")[0]["detail"]
        # answered by the body-limit middleware, before any route
        too_large = http.post("/v1/embeddings", content=b"x" * (get_settings().max_json_bytes + 1),
                              headers={"X-Request-ID": "large-1", "content-type": "application/json"})
        assert (too_large.status_code, too_large.headers["x-request-id"]) == (413, "large-1")
        assert _access(log, "large-1")["status"] == 413
    assert not [line for line in _lines(log) if line["logger"] == "uvicorn.access"]


def test_an_unfit_request_id_is_replaced_not_refused(json_server):
    url, log = json_server
    for value in ("x" * 1000, "two words", "caf\u00e9"):  # too long, not visible ASCII
        answer = httpx.get(f"{url}/healthz", headers={"X-Request-ID": value.encode("latin-1")})
        assert answer.status_code == 200 and MADE.fullmatch(answer.headers["x-request-id"]), value[:20]
        assert _access(log, answer.headers["x-request-id"])["path"] == "/healthz"
    assert not [line for line in _lines(log) if "xxxxxxxxxx" in json.dumps(line)]
    # a newline cannot reach the app: the server's parser refuses the request, and no line of the log is forged
    head = _raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\nforged: line\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert not [line for line in log.read_text().splitlines() if "forged" in line]


def test_the_text_format_writes_one_readable_line_per_request(text_server):
    url, log = text_server
    answer = httpx.get(f"{url}/no-route%0Ainjected", headers={"X-Request-ID": "text-1"})
    assert (answer.status_code, answer.headers["x-request-id"]) == (404, "text-1")
    deadline = time.monotonic() + 30
    while not (found := [line for line in log.read_text().splitlines() if "request_id=text-1" in line]):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    [line] = found  # the newline the path held is written as \n: one line, nothing starts with "injected"
    assert re.fullmatch(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO api.access_log: 127\.0\.0\.1 '
                        r'"GET /no-route\\ninjected" 404 \d+\.\d ms request_id=text-1', line), line
    assert not [line for line in log.read_text().splitlines() if line.startswith("injected")]


def test_a_registration_carries_its_request_id_into_its_job_and_every_line_it_logs(json_server, tmp_path):
    url, log = json_server
    sets = topic_task(30, 20)
    train, evals = write_jsonl(tmp_path / "train.jsonl", sets["train"]), write_jsonl(tmp_path / "eval.jsonl",
                                                                                    sets["eval"])
    with httpx.Client(base_url=url, timeout=60) as http, open(train, "rb") as t, open(evals, "rb") as e:
        answer = http.post("/v1/tasks", data={"name": "topic"}, files={"train": t, "eval": e},
                           headers={"X-Request-ID": "register-topic-1"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 180
        while (job := http.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
    assert (job["state"], job["request_id"]) == ("succeeded", "register-topic-1"), job
    assert _logged(log, event="job_end", job_id=job_id)
    lines = [line for line in _lines(log) if line.get("job_id") == job_id]
    # the job's own lines (start, the fit from its process, end) carry both ids
    assert {"job_start", "fit", "job_end"} <= {line.get("event") for line in lines}, lines
    assert {line["request_id"] for line in lines} == {"register-topic-1"}
    assert _access(log, "register-topic-1")["status"] == 202


def test_an_unhandled_error_is_answered_500_with_its_id_and_logged(caplog):
    """No route of the service fails on purpose, so the middleware is put in front of a two-route app: Starlette's
    own 500 would be sent from outside the middleware, without the id; the middleware answers it instead."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from api.access_log import AccessLogMiddleware

    def broken(request):
        raise RuntimeError("a bug")

    app = Starlette(routes=[Route("/broken", broken), Route("/fine", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(AccessLogMiddleware, enabled=True)
    with caplog.at_level("INFO", logger="api.access_log"), TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/broken", headers={"X-Request-ID": "bug-1"})
        assert (answer.status_code, answer.text, answer.headers["x-request-id"]) == (500, "Internal Server Error",
                                                                                     "bug-1")
        assert client.get("/fine").status_code == 200
    [logged, fine] = [r for r in caplog.records if r.name == "api.access_log"]
    assert (logged.status, logged.request_id, logged.path) == (500, "bug-1", "/broken")
    assert (fine.status, fine.path) == (200, "/fine")
