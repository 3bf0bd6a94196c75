"""Issue #31's classes of hostile input, one test (or a few) per class, each named after it.

Every case talks to the real embedded service (TestClient on das.app's app, its real store and job records)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from das.app import build_app

HUGE_INT = b"9" * 5000
DEEP = b"[" * 100_000 + b"]" * 100_000


def _cursor(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.fixture
def client(service_settings):
    with TestClient(build_app(service_settings), raise_server_exceptions=False) as client:
        yield client


def _refused(answer, *says: str) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    text = answer.text
    assert "Traceback" not in text
    for said in says:
        assert said in text, (said, text[:300])


# -- 1. the server parses anything it is sent without a 500 ------------------------------------------------------

def test_class1_server_parses_anything_without_a_500_task_and_batch_files(client):
    good = json.dumps({"text": "a fine line", "label": "a"}).encode() + b"\n"
    for bad, says in ((b'{"text": "x", "label": ' + HUGE_INT + b"}\n", "line 2 is not readable JSON"),
                      (b'{"text": "x", "label": ' + DEEP + b"}\n", "line 2 nests 100001 levels deep")):
        answer = client.post("/v1/tasks", data={"name": "hostile"}, files={"train": ("train.jsonl", good + bad)})
        _refused(answer, "train.jsonl: ", says)
        line = json.dumps({"text": "a fine line"}).encode() + b"\n"
        answer = client.post("/v1/batch-predictions", data={"kind": "embed"},
                             files={"file": ("lines.jsonl", line + bad.replace(b'"label"', b'"id"'))})
        _refused(answer, "lines.jsonl: ", says)
    assert client.get("/v1/tasks").json() == [] and client.get("/v1/jobs").json() == []  # nothing stored or queued


def test_class1_server_parses_anything_without_a_500_corpora(client, legal_docs):
    deep_first = b"{" + b"[" * 5000 + b"\n" + "\n".join(legal_docs[:40]).encode()  # text whose first line starts {
    answer = client.post("/v1/corpora", data={"domain": "legal", "steps": "1"},
                         files={"file": ("legal.txt", deep_first)})
    assert answer.status_code == 202, answer.text  # a text line that merely starts with "{" is text
    for bad, says in ((b'{"text": ' + HUGE_INT + b"}\n", "line 1 is not readable JSON"),
                      (b'{"text": ' + DEEP + b"}\n", "line 1 nests 100001 levels deep")):
        _refused(client.post("/v1/corpora", data={"domain": "legal"}, files={"file": ("c.jsonl", bad)}),
                 "c.jsonl", says)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models", "/v1/tasks"])
def test_class1_server_parses_anything_without_a_500_cursors(client, path):
    listing = path.rsplit("/", 1)[1]
    for cursor in (_cursor(json.dumps([listing, 2**63]).encode()), _cursor(json.dumps([listing, 2**64]).encode()),
                   _cursor(b"[" * 3000 + b"]" * 3000), _cursor(b'["' + listing.encode() + b'", ' + HUGE_INT + b"]"),
                   "A" * 5000):
        _refused(client.get(path, params={"cursor": cursor}), "invalid cursor")


def test_class1_server_parses_anything_without_a_500_bodies(client):
    for body in (b'{"texts": [' + HUGE_INT + b"]}", b'{"texts": ' + DEEP + b"}", b'{"texts": ["a"]' + b"}" * 5000,
                 b"\xff\xfe", b'{"texts": ["a"], "texts": 1e999}'):
        for path in ("/v1/embeddings", "/v1/predict", "/v1/fill-mask"):
            answer = client.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code in (400, 422) and "Traceback" not in answer.text, (path, answer.text[:200])


# -- 6. inputs that say what they mean ---------------------------------------------------------------------------

def test_class6_inputs_say_what_they_mean_repeated_fields(client, small_corpus):
    body = small_corpus.read_bytes()
    twice = client.post("/v1/corpora", data={"domain": ["a", "b"]}, files={"file": ("c.txt", body)})
    _refused(twice, "form field 'domain' was sent 2 times; send it once")
    two_files = client.post("/v1/corpora", data={"domain": "legal"},
                            files=[("file", ("c.txt", body)), ("file", ("d.txt", body))])
    _refused(two_files, "form field 'file' was sent 2 times")
    _refused(client.get("/v1/jobs", params=[("limit", "1"), ("limit", "5")]), "query parameter 'limit' was sent 2")
    assert client.get("/v1/jobs").json() == []  # nothing queued


def test_class6_inputs_say_what_they_mean_query_strings_on_health_and_ui(client):
    for path in ("/healthz", "/readyz", "/metrics", "/ui", "/ui/"):
        answer = client.get(path, params={"utm_source": "a-link", "check": "1"})
        assert answer.status_code in (200, 503) and "unknown query parameter" not in answer.text, (path, answer.text)
    _refused(client.get("/v1/jobs", params={"utm_source": "x"}), "unknown query parameter 'utm_source'")


def test_class6_inputs_say_what_they_mean_head_on_every_get_route(client):
    schema = client.get("/openapi.json").json()["paths"]
    paths = [path for path, methods in schema.items() if "get" in methods and "{" not in path]
    paths += ["/openapi.json", "/docs", "/v1/models/v0001", "/v1/models/v0001/importance", "/ui", "/ui/index.html"]
    assert len(paths) > 10
    for path in paths:
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"" and head.headers.get("content-type") == got.headers.get("content-type"), path


def test_class6_inputs_say_what_they_mean_alias_names_by_case(client):
    for name, says in (("Production", "differs from 'production' only by case"), ("PRODUCTION", "only by case"),
                       ("V0001", "looks like a version id")):
        _refused(client.put(f"/v1/aliases/{name}", json={"version": "v0001"}), says)
    assert client.put("/v1/aliases/staging", json={"version": "v0001"}).status_code == 200


@pytest.mark.parametrize("token", ["tök", "a token", "tab\there", ""])
def test_class6_inputs_say_what_they_mean_tokens_in_visible_ascii(token):
    from pydantic import ValidationError

    from das_settings import Settings

    with pytest.raises(ValidationError, match="must be visible ASCII characters only"):
        Settings(inference_token=token)


# -- 4. logs cannot be forged -------------------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 INFO api.auth: management token accepted for admin"


def test_class4_logs_cannot_be_forged(service_settings):
    import io
    from urllib.parse import quote

    from das_settings.logs import configure_logging

    stream = io.StringIO()
    handler = configure_logging(service_settings, stream)
    try:
        with TestClient(build_app(service_settings), raise_server_exceptions=False) as client:
            forged = quote("\n" + FORGED + "\r\u2028")
            client.get(f"/healthz?x{forged}=1")
            client.get(f"/v1/jobs?x{forged}=1")  # an unknown query parameter: refused, and logged
            client.get(f"/v1/models/v0001{forged}")  # a path parameter
            client.post("/v1/corpora", data={f"d{chr(10)}{FORGED}": "x"}, files={"file": ("c.txt", b"text")})
    finally:
        import logging
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert any("\\n" + FORGED in line for line in lines), "the refusals were not logged at all"
    assert not any(line.startswith(FORGED[:10]) for line in lines), [ln for ln in lines if ln.startswith("2026-01")]
    assert "\u2028" not in stream.getvalue() and "\r" not in stream.getvalue()


# -- 2. an error costs less than the request ----------------------------------------------------------------------

def test_class2_an_error_costs_less_than_the_request_validation(service_settings):
    import io
    import logging

    from das_settings.logs import configure_logging

    stream = io.StringIO()
    handler = configure_logging(service_settings, stream)
    huge = json.dumps({"texts": [[i] for i in range(100_000)]})  # 100,000 wrong-typed items (~900 KB)
    many = json.dumps({"texts": [[i] for i in range(4_000)]})  # within the list's bound: each item is wrong
    try:
        with TestClient(build_app(service_settings.model_copy(update={"max_json_bytes": 2_000_000})),
                        raise_server_exceptions=False) as client:
            answers = [client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
                       for body in (huge, many)]
    finally:
        logging.getLogger().removeHandler(handler)
    for answer in answers:
        assert answer.status_code == 422 and len(answer.content) < 5_000, len(answer.content)
    huge_detail, many_detail = (answer.json()["detail"] for answer in answers)
    # the long list is refused by its length before any item is looked at, its input echoed as a short preview
    assert len(huge_detail) == 1 and "at most 4096 items, not 100000" in huge_detail[0]["msg"], huge_detail
    assert "(a list of 100000 items)" in huge_detail[0]["input"]
    assert len(many_detail) == 11 and many_detail[-1]["msg"] == "and 3990 more errors like these; fix those first"
    assert all(len(line) < 5_000 for line in stream.getvalue().splitlines())


def test_class2_an_error_costs_less_than_the_request_a_long_input_is_not_echoed(client):
    answer = client.post("/v1/fill-mask", json={"texts": ["x"], "top_k": "9" * 50_000})
    assert answer.status_code == 422 and len(answer.content) < 2_000, len(answer.content)


def test_class2_an_error_costs_less_than_the_request_predict_answers_are_bounded(service_settings, tmp_path):
    from service_helpers import wait_for_job
    from task_sets import source_task, write_jsonl

    sets = source_task(n_train=20, n_eval=0)
    train = write_jsonl(tmp_path / "train.jsonl", sets["train"])
    settings = service_settings.model_copy(update={"max_predict_scores": 5})
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        registered = client.post("/v1/tasks", data={"name": "source"}, files={"train": ("train.jsonl",
                                                                                         train.read_bytes())})
        assert registered.status_code == 202, registered.text
        assert wait_for_job(client, registered.json()["job_id"])["state"] == "succeeded"
        texts = ["a licence text", "def f(): pass", "a third text"]  # 3 texts x 2 labels = 6 scores > 5
        for path in ("/v1/predict", "/v1/tasks/source/predict"):
            _refused(client.post(path, json={"texts": texts}), "6 label scores", "DAS_MAX_PREDICT_SCORES", "top_k")
            answer = client.post(path, json={"texts": texts, "top_k": 1})  # 3 scores
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            for per_text in results:
                one = per_text["source"] if "source" in per_text else per_text
                assert list(one["scores"]) == [one["label"]]


# -- 3. a hung store never stalls the service ---------------------------------------------------------------------

def test_class3_a_hung_store_never_stalls_the_service_holder(tmp_path):
    """One stuck check (its read never returns) holds back no swap to another version and no task reload."""
    import threading
    import time

    from serving.holder import ModelHolder

    released = threading.Event()
    checked = []

    def resolve(version: str):
        if version == "v0002":
            released.wait(30)  # a read that does not return until released
        return tmp_path / version

    class Served:
        def __init__(self, version, tasks=()):
            self.version, self.tasks = version, tasks

        def warm(self):
            pass

        def with_tasks(self, tasks):
            return Served(self.version, tasks)

    class Tasks:
        tasks = {"a task": None}

    reloads = []
    holder = ModelHolder(resolve=resolve, load=lambda version, folder, current: Served(version),
                         load_tasks=lambda version, current: reloads.append(version) or Tasks(),
                         check_wait_s=0.2)
    holder.on_checked = lambda: checked.append(True)
    assert holder.ensure("v0001") and holder.current.version == "v0001"
    assert holder.ensure("v0002") is False and holder.current.version == "v0001"  # still checking: not waited for
    assert holder.checking()[0] == "v0002"
    assert holder.ensure("v0001") is True and reloads[-1] == "v0001"  # the serving version's tasks reload meanwhile
    assert holder.ensure("v0003") and holder.current.version == "v0003"  # another swap goes through
    released.set()
    deadline = time.time() + 10
    while not checked and time.time() < deadline:
        time.sleep(0.05)
    assert checked and holder.ensure("v0002") and holder.current.version == "v0002"  # its check ended: it swaps
    assert holder.checking() is None


def test_class3_a_hung_store_never_stalls_the_service(service_settings, tmp_path):
    """A version whose weights file never answers a read (a FIFO with no writer: a stalled NFS read) is activated:
    the service keeps answering on the version it serves, the check stops after DAS_VERSION_CHECK_TIMEOUT_S, and
    /readyz and the log say why; a rollback meanwhile is served."""
    import os
    import shutil
    import time

    from model_store.store import PublishRequest

    settings = service_settings.model_copy(update={"version_check_timeout_s": 3.0})
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        service = client.app.state.service
        store = service.store
        base = store.manifest("v0001")
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in base.files:
            if name not in ("manifest.json", "README.md"):
                shutil.copyfile(store.model_dir("v0001") / name, copy / name)
        store.publish(PublishRequest(copy, "v0001", "legal", base.base_model), activate=False)
        weights = next(n for n in store.manifest("v0002").files if n.startswith("model"))
        stalled = store.backend.local_path(f"versions/v0002/{weights}")
        stalled.unlink()
        os.mkfifo(stalled)  # opening it for reading blocks until a writer comes: none will
        try:
            store.activate("v0002")
            service.watcher.poke()
            time.sleep(1.0)
            answer = client.post("/v1/embeddings", json={"texts": ["still answering"]})
            assert answer.status_code == 200 and answer.json()["version"] == "v0001"  # the hang stalls nothing
            deadline = time.time() + 30
            while time.time() < deadline:
                ready = client.get("/readyz").json()
                if "problem" in ready:
                    break
                time.sleep(0.2)
            assert ready["status"] == "ready" and ready["version"] == "v0001", ready
            assert "v0002 cannot be served" in ready["problem"] and "took over 3 s" in ready["problem"], ready
            store.activate("v0001")  # the rollback
            service.watcher.poke()
            deadline = time.time() + 30
            while "problem" in client.get("/readyz").json() and time.time() < deadline:
                service.watcher.poke()
                time.sleep(0.2)
            assert "problem" not in client.get("/readyz").json()
        finally:
            stalled.unlink()


# -- 5. the lower-privilege token cannot starve the higher one ---------------------------------------------------

def _batch_lines(n: int) -> bytes:
    return "".join(json.dumps({"text": f"line {i} of a long batch"}) + "\n" for i in range(n)).encode()


def _a_long_batch_answering(client) -> tuple[str, float]:
    """(job id, a deadline 120 s on) of a 20,000-line batch prediction, once it has answered its first lines."""
    import time

    batch = client.post("/v1/batch-predictions", data={"kind": "embed"},
                        files={"file": ("b.jsonl", _batch_lines(20_000))}).json()["job_id"]
    deadline = time.time() + 120
    while time.time() < deadline and not (client.get(f"/v1/jobs/{batch}").json().get("progress") or {}).get("step"):
        time.sleep(0.1)
    return batch, deadline


def test_class5_batch_jobs_cannot_starve_adaptations(service_settings, small_corpus):
    """A long batch prediction running when an adaptation arrives yields after its current chunk of lines: the
    adaptation runs next, then the batch resumes where it stopped and answers every line once."""

    from service_helpers import upload, wait_for_job

    with TestClient(build_app(service_settings)) as client:
        batch, deadline = _a_long_batch_answering(client)
        adapt = wait_for_job(client, upload(client, small_corpus, steps="2")["job_id"])
        batch_now = client.get(f"/v1/jobs/{batch}").json()
        assert adapt["state"] == "succeeded" and batch_now["state"] in ("queued", "running"), (adapt, batch_now)
        done = wait_for_job(client, batch, timeout_s=300)
        assert done["state"] == "succeeded" and done["finished"] > adapt["finished"]  # ISO-8601 UTC: ordered as text
        lines = client.get(f"/v1/jobs/{batch}/output").text.splitlines()
        assert [json.loads(line)["id"] for line in lines] == list(range(1, 20_001))  # each line once, in order


def test_class5_batch_jobs_are_capped_per_token_and_in_all(service_settings):
    settings = service_settings.model_copy(update={"inference_token": "infer-token", "management_token": "mgmt-token",
                                                   "max_queued_batch_jobs_per_token": 2, "max_queued_batch_jobs": 3})
    infer, mgmt = {"Authorization": "Bearer infer-token"}, {"Authorization": "Bearer mgmt-token"}
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        def queue(headers):
            return client.post("/v1/batch-predictions", data={"kind": "embed"}, headers=headers,
                               files={"file": ("b.jsonl", _batch_lines(20_000))})

        assert queue(infer).status_code == 202 and queue(infer).status_code == 202
        third = queue(infer)
        assert third.status_code == 429 and "DAS_MAX_QUEUED_BATCH_JOBS_PER_TOKEN=2" in third.text, third.text
        assert third.headers["Retry-After"]
        assert queue(mgmt).status_code == 202  # the other token has its own share
        over = queue(mgmt)
        assert over.status_code == 429 and "DAS_MAX_QUEUED_BATCH_JOBS=3" in over.text, over.text
        jobs = client.get("/v1/jobs", params={"kind": "predict"}, headers=mgmt).json()
        assert len(jobs) == 3
        for job in jobs:
            client.delete(f"/v1/batch-predictions/{job['id']}", headers=mgmt)


def test_class5_batch_files_go_after_their_retention(service_settings):
    import time

    from service_helpers import wait_for_job

    from worker.retention import expire_batch_files

    with TestClient(build_app(service_settings)) as client:
        job_id = client.post("/v1/batch-predictions", data={"kind": "embed"},
                             files={"file": ("b.jsonl", _batch_lines(5))}).json()["job_id"]
        job = wait_for_job(client, job_id)
        assert client.get(f"/v1/jobs/{job_id}/output").status_code == 200
        service = client.app.state.service
        store, jobs = service.store, service.jobs
        files = [job["input_sha256"], job["output_sha256"]]
        assert all(store.blobs.has(sha) for sha in files)
        assert expire_batch_files(store, jobs, 3600, now=time.time()) == []  # not old yet
        assert expire_batch_files(store, jobs, 3600, now=jobs.get(job_id).finished + 3601) == [job_id]
        assert not any(store.blobs.has(sha) for sha in files)
        gone = client.get(f"/v1/jobs/{job_id}/output")
        assert gone.status_code == 410 and "DAS_BATCH_RETENTION_S" in gone.text


def test_class5_batch_files_go_but_a_corpus_with_the_same_bytes_stays(service_settings, legal_docs):
    """Blobs are content-addressed and shared: a JSONL corpus is also a valid batch input. Expiring the batch leaves
    the corpus its version names (and the batch's answers go)."""
    from service_helpers import upload, wait_for_job

    from worker.retention import expire_batch_files

    path = service_settings.work_dir.parent / "legal.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in legal_docs[:40]), encoding="utf-8")
    with TestClient(build_app(service_settings)) as client:
        adapted = wait_for_job(client, upload(client, path, steps="1")["job_id"])
        assert adapted["state"] == "succeeded", adapted
        job_id = client.post("/v1/batch-predictions", data={"kind": "embed"},
                             files={"file": ("b.jsonl", path.read_bytes())}).json()["job_id"]
        job = wait_for_job(client, job_id)
        store, jobs = client.app.state.service.store, client.app.state.service.jobs
        assert job["input_sha256"] == store.manifest(adapted["version"]).corpus.sha256  # one blob, two uses
        assert expire_batch_files(store, jobs, 3600, now=jobs.get(job_id).finished + 3601) == [job_id]
        assert store.blobs.has(job["input_sha256"]) and not store.blobs.has(job["output_sha256"])


def test_class7_nothing_is_left_behind_a_batch_cancelled_while_it_waits(service_settings, small_corpus):
    """A batch that yielded to an adaptation (its partial answers kept to resume from) and is then cancelled while
    it waits in the queue leaves no partial answers once the worker comes back to it."""
    import time

    from service_helpers import upload, wait_for_job

    from worker.retention import partial_answers

    with TestClient(build_app(service_settings)) as client:
        batch, deadline = _a_long_batch_answering(client)
        adapt = upload(client, small_corpus, steps="30")["job_id"]
        partial = partial_answers(service_settings.work_dir, batch)
        while time.time() < deadline and client.get(f"/v1/jobs/{batch}").json()["state"] != "queued":
            time.sleep(0.05)  # it yielded after its current chunk, its answers so far kept
        assert partial.is_file()
        assert client.delete(f"/v1/batch-predictions/{batch}").json()["state"] == "cancelled"
        assert wait_for_job(client, adapt)["state"] == "succeeded"
        while time.time() < deadline and partial.exists():
            time.sleep(0.1)
        assert not partial.exists()


def test_class2_top_k_keeps_the_answered_label_when_rounded_scores_tie():
    from serving.batcher import _top_labels

    tied = {"label": "b", "scores": {"a": 0.5, "b": 0.5, "c": 0.0}}  # rounded scores; b won before rounding
    assert _top_labels(tied, 1) == {"label": "b", "scores": {"b": 0.5}}
    assert _top_labels(tied, 2)["scores"] == {"b": 0.5, "a": 0.5}
    assert _top_labels(tied, 0) is tied and _top_labels(tied, 3) is tied
