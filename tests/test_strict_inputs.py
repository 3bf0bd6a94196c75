"""Inputs that say no (issue #19): a field, parameter or DAS_ variable that means nothing is named with the
nearest real one; a text over the model's length is refused unless the request sends truncate; embeddings in
OpenAI's shape."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import struct
import subprocess
import sys
import time
from concurrent.futures import wait

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict
from service_helpers import wait_for_job
from task_sets import source_task, write_jsonl
from transformers import AutoTokenizer

from api.limits import invalid_request
from api.strict import StrictInputs
from das.app import build_app
from das_settings import Settings, get_settings
from das_settings.environment import unknown_variables, warn_unknown_variables
from serving.batcher import MicroBatcher
from serving.errors import InputError
from serving.holder import ModelHolder
from serving.model import LoadedModel

LONG = "word " * 600  # over the embedded model's 512 tokens (2,999 characters: within DAS_MAX_TEXT_CHARS)
SHORT = "the licence is granted to everyone."
MODEL_MAX = 512


def _settings(root, **overrides) -> Settings:
    return Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                    poll_interval_s=0.5, heartbeat_s=1.0, max_wait_ms=2.0, **overrides)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(build_app(_settings(tmp_path_factory.mktemp("strict")))) as client:
        yield client


@pytest.fixture(scope="module")
def token_count(bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    return lambda text: len(tokenizer(text, verbose=False)["input_ids"])  # the tokenizer's own count, specials in


def refused(response) -> list[str]:
    """The messages of a 422: FastAPI's error objects (loc, msg, type), or one sentence."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return [detail]
    assert isinstance(detail, list) and all({"loc", "msg", "type"} <= set(e) for e in detail), detail
    return [e["msg"] for e in detail]


def embed_batches(client) -> float:
    """Forward passes of embeddings so far (/metrics)."""
    found = re.search(r'^das_batch_size_count\{kind="embed"\} (\S+)$', client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


# --- unknown inputs ---

def test_an_unknown_upload_field_is_named_with_the_nearest_and_nothing_is_stored(client, small_corpus):
    jobs = client.get("/v1/jobs").json()
    with open(small_corpus, "rb") as f:
        response = client.post("/v1/corpora", files={"file": (small_corpus.name, f, "text/plain")},
                               data={"domain": "legal", "step": "5", "learning_rate": "0.1"})
    messages = refused(response)
    assert "unknown form field 'step'; did you mean 'steps'?" in messages
    far = next(m for m in messages if "'learning_rate'" in m)  # no field is close: the accepted ones are listed
    assert "the accepted ones are:" in far and " lr," in far and "steps" in far, far
    assert client.get("/v1/jobs").json() == jobs
    digest = hashlib.sha256(small_corpus.read_bytes()).hexdigest()
    assert not client.app.state.service.store.blobs.has(digest)


def test_an_unknown_task_field_is_named_and_no_task_is_registered(client, tmp_path):
    jobs = client.get("/v1/jobs").json()
    train = write_jsonl(tmp_path / "train.jsonl", source_task(8, 2)["train"])
    with open(train, "rb") as f:
        response = client.post("/v1/tasks", data={"name": "typo", "epoch": "2"}, files={"train": (train.name, f)})
    assert refused(response) == ["unknown form field 'epoch'; did you mean 'epochs'?"]
    assert client.get("/v1/tasks/typo").status_code == 404
    assert client.get("/v1/jobs").json() == jobs


def test_an_unknown_query_parameter_is_named_on_a_list_and_on_inference(client):
    assert refused(client.get("/v1/jobs", params={"limt": "5"})) == [
        "unknown query parameter 'limt'; did you mean 'limit'?"]
    before = embed_batches(client)
    messages = refused(client.post("/v1/embeddings", params={"truncat": "true"}, json={"texts": [SHORT]}))
    assert len(messages) == 1 and messages[0].startswith("unknown query parameter 'truncat'"), messages
    assert embed_batches(client) == before  # nothing reached the model


def test_an_unknown_json_field_is_named_at_the_top_and_in_fill_mask(client):
    messages = refused(client.post("/v1/fill-mask", json={"texts": ["free of [MASK]."], "topk": 3}))
    assert messages == ["unknown field 'topk'; did you mean 'top_k'?"]
    messages = refused(client.post("/v1/embeddings", json={"texts": [SHORT], "truncat": True}))
    assert messages == ["unknown field 'truncat'; did you mean 'truncate'?"]
    messages = refused(client.post("/v1/tasks/any/predict", json={"texts": [SHORT], "task": ["any"]}))
    assert messages == ["unknown field 'task'; did you mean 'tasks'?"]


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = 0.5


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Inner]


def test_a_route_added_later_is_covered_with_no_code_of_its_own():
    """The check reads each route's declaration: a new route with a nested body model and a query parameter."""
    router = APIRouter()

    @router.post("/later")
    async def later(body: Outer, page: int = 1) -> dict:
        return {"page": page}

    app = FastAPI()
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router, dependencies=[StrictInputs])
    with TestClient(app) as client:
        assert client.post("/later", params={"page": "2"}, json={"items": [{"threshold": 0.1}]}).json() == {"page": 2}
        assert refused(client.post("/later", params={"pgae": "2"}, json={"items": []})) == [
            "unknown query parameter 'pgae'; did you mean 'page'?"]
        assert refused(client.post("/later", json={"items": [{"threshold": 0.1}, {"treshold": 0.2}]})) == [
            "unknown field 'treshold' in 'items.1'; did you mean 'threshold'?"]


# --- unknown DAS_ variables ---

def test_an_unknown_das_variable_is_reported_with_the_nearest_setting(caplog):
    environ = {"DAS_MAX_TEXT": "3", "das_store": "s", "DAS_TEST_REDIS_URL": "redis://x", "DAS_ZZZ": "1",
               "PATH": "/bin", "DAS_URL": "http://127.0.0.1:8000", "DAS_TOKEN": "t"}  # the client's: no setting
    assert unknown_variables(environ) == [
        "DAS_MAX_TEXT is not a setting and is ignored; did you mean DAS_MAX_TEXTS?",
        "DAS_ZZZ is not a setting and is ignored; the settings are the fields of das_settings.Settings"]
    with caplog.at_level(logging.WARNING, logger="das_settings.environment"):
        warn_unknown_variables(environ)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "DAS_MAX_TEXTS" in caplog.records[0].getMessage()


def test_das_serve_warns_of_an_unknown_variable_at_start(tmp_path):
    env = {**os.environ, "DAS_STORE": str(tmp_path / "store"), "DAS_WORK_DIR": str(tmp_path / "work"),
           "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_MAX_TEXT": "3",
           "DAS_TEST_REDIS_URL": "redis://127.0.0.1:6379/0"}
    proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.time() + 120  # a guard: the warning comes before the app is built
        while time.time() < deadline and not any("DAS_MAX_TEXT " in line for line in lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.terminate()
        proc.wait(30)
    warning = next((line for line in lines if "DAS_MAX_TEXT " in line), None)
    assert warning is not None, "".join(lines)
    assert "WARNING" in warning and "did you mean DAS_MAX_TEXTS?" in warning
    assert not any("DAS_TEST_REDIS_URL" in line for line in lines)


# --- truncation ---

@pytest.fixture
def batcher(bert_dir):
    holder = ModelHolder(resolve=lambda version: bert_dir, load=LoadedModel.load)
    holder.ensure("v0001")
    b = MicroBatcher(holder, max_batch_size=64, max_wait_s=0.3, queue_size=16)  # a long wait: one batch
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("kind", ["embed", "fill_mask"])
def test_a_text_over_the_model_length_is_refused_alone_in_a_mixed_batch(batcher, kind, token_count):
    text = f"[MASK] {LONG}" if kind == "fill_mask" else LONG
    short = "free of [MASK]." if kind == "fill_mask" else SHORT
    plain = batcher.submit(kind, [short], truncate=False)
    refuse = batcher.submit(kind, [short, text], truncate=False)
    cut = batcher.submit(kind, [short, text], truncate=True)
    wait([plain, refuse, cut], timeout=60)
    with pytest.raises(InputError) as err:
        refuse.result()
    whole = token_count(text)
    assert whole > MODEL_MAX
    assert str(err.value).startswith(f"text 1 has {whole} tokens; the model reads at most {MODEL_MAX} "), err.value
    assert "truncate: true" in str(err.value)
    assert plain.result()[0] == cut.result()[0] == "v0001"
    assert (plain.truncated, cut.truncated) == ([False], [False, True])
    assert cut.tokens == token_count(short) + MODEL_MAX  # what the model read: the long text cut, specials in
    assert plain.tokens == token_count(short)


def test_truncate_refused_accepted_and_flagged_through_the_api(client, token_count):
    messages = refused(client.post("/v1/embeddings", json={"texts": [SHORT, LONG]}))
    assert messages == [f"text 1 has {token_count(LONG)} tokens; the model reads at most {MODEL_MAX} (specials "
                        f"included): shorten it, or send truncate: true to have it cut to the first {MODEL_MAX}"]
    answer = client.post("/v1/embeddings", json={"texts": [SHORT, LONG], "truncate": True})
    assert answer.status_code == 200, answer.text
    assert answer.json()["truncated"] == [False, True] and len(answer.json()["embeddings"]) == 2
    refused(client.post("/v1/fill-mask", json={"texts": [f"[MASK] {LONG}"]}))
    answer = client.post("/v1/fill-mask", json={"texts": ["free of [MASK].", f"[MASK] {LONG}"], "truncate": True})
    assert answer.status_code == 200, answer.text
    assert answer.json()["truncated"] == [False, True]
    assert client.post("/v1/fill-mask", json={"texts": ["free of [MASK]."]}).json()["truncated"] == [False]


def test_truncate_on_task_predictions(client, tmp_path):
    sets = source_task(12, 4)
    train, evals = write_jsonl(tmp_path / "t.jsonl", sets["train"]), write_jsonl(tmp_path / "e.jsonl", sets["eval"])
    with open(train, "rb") as t, open(evals, "rb") as e:
        accepted = client.post("/v1/tasks", data={"name": "source"}, files={"train": (train.name, t),
                                                                           "eval": (evals.name, e)})
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(client, accepted.json()["job_id"])["state"] == "succeeded"
    deadline, body = time.time() + 60, {"texts": [SHORT, LONG], "truncate": True}
    answer = client.post("/v1/tasks/source/predict", json=body)
    while answer.status_code != 200 and time.time() < deadline:  # until the watcher serves the task model
        time.sleep(0.1)
        answer = client.post("/v1/tasks/source/predict", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["truncated"] == [False, True] and len(answer.json()["results"]) == 2
    both = client.post("/v1/predict", json=body).json()
    assert both["truncated"] == [False, True] and set(both["results"][1]) == {"source"}
    assert "text 1 has" in refused(client.post("/v1/predict", json={"texts": [SHORT, LONG]}))[0]
    assert "text 0 has" in refused(client.post("/v1/tasks/source/predict", json={"texts": [LONG]}))[0]


def test_auto_truncate_cuts_as_before(tmp_path):
    with TestClient(build_app(_settings(tmp_path, auto_truncate=True))) as client:
        answer = client.post("/v1/embeddings", json={"texts": [SHORT, LONG]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["truncated"] == [False, True]


# --- OpenAI's embeddings shape ---

def test_embeddings_in_openais_shape(client, token_count):
    """The body OpenAI's clients send to POST {base_url}/embeddings, by a plain httpx request."""
    version = client.get("/readyz").json()["version"]
    texts = ["the licence is granted.", "return the sum of the list."]
    ours = client.post("/v1/embeddings", json={"texts": texts}).json()
    answer = client.post("/v1/embeddings", json={"input": texts, "model": version, "encoding_format": "float"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["object"], body["model"], body["version"], body["truncated"]) == ("list", version, version,
                                                                                    [False, False])
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    assert [d["embedding"] for d in body["data"]] == ours["embeddings"]
    tokens = sum(token_count(t) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # OpenAI's clients ask for base64 (little-endian float32) unless told otherwise; one text may be a string
    packed = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert floats == pytest.approx(ours["embeddings"][0], abs=1e-6) and packed["model"] == version
    # `model` means what `version` means (an id or an alias): one the store does not hold is a 404 naming it
    unknown = client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
    assert unknown.status_code == 404 and "'text-embedding-3-small'" in unknown.json()["detail"], unknown.text
    assert client.post("/v1/embeddings", json={"input": "x", "model": "production"}).json()["model"] == version
    (message,) = refused(client.post("/v1/embeddings", json={"input": "x", "model": version, "version": "v0009"}))
    assert "differ; send one of them" in message
    assert "exactly one of `texts`" in refused(client.post("/v1/embeddings", json={"input": "x", "texts": ["y"]}))[0]
    assert "exactly one of `texts`" in refused(client.post("/v1/embeddings", json={}))[0]


@pytest.mark.parametrize("command", [["versions"], ["serve", "--port", "1"], ["card", "v0001"]])
def test_a_bad_setting_is_one_line_naming_its_variable(command, tmp_path):
    """Every local command checks the DAS_ settings first: a value no setting accepts is exit code 2 and one line
    that names the variable as the user set it (not a pydantic field, not a traceback)."""
    env = {**os.environ, "DAS_STORE": str(tmp_path / "store"), "DAS_LOG_FORMAT": "xml", "DAS_MAX_TEXTS": "-3"}
    done = subprocess.run([sys.executable, "-c", "from das.cli import app; app()", *command], env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "DAS_LOG_FORMAT='xml'" in output and "DAS_MAX_TEXTS='-3'" in output and "Traceback" not in output
    assert "log_format\n" not in output
