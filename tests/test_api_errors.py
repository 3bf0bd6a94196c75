"""Bad input gets a clear 4xx and loses nothing; auth; limits; a full queue answers 503."""

import json

import pytest
from fastapi.testclient import TestClient

from das.app import build_app
from das_settings import Settings, get_settings

MGMT, INFER = "m-secret", "i-secret"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-errors")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, inference_token=INFER, max_texts=4, max_text_chars=200,
                        max_upload_bytes=4096, max_json_bytes=2048)
    with TestClient(build_app(settings)) as c:
        yield c


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def _upload(client, content: bytes, name="c.txt", token=MGMT, **form):
    return client.post("/v1/corpora", files={"file": (name, content, "text/plain")},
                       data={"domain": "legal", **form}, headers=_auth(token))


@pytest.mark.parametrize("content,message", [
    ("café au lait\n".encode("latin-1"), "not UTF-8"),
    (b"", "empty"),
    (b"\x00\x01binary\x00", "binary"),
    (b"\n \n", "no documents"),
    (b'{"text": "ok"}\n{"body": 1}\n', "line 2 has no string field 'text'"),
])
def test_bad_corpora(client, content, message):
    response = _upload(client, content, name="c.jsonl" if b"{" in content else "c.txt")
    assert response.status_code == 422 and message in response.json()["detail"], response.text


@pytest.mark.parametrize("form,message", [({"domain": "../evil"}, "invalid domain"),
                                          ({"steps": "0"}, "steps"), ({"mask_mode": "both"}, "mask_mode")])
def test_bad_job_settings(client, form, message):
    response = _upload(client, b"a real document about licences\n", **form)
    assert response.status_code == 422 and message in response.text


def test_upload_over_the_limit_is_413_and_queues_nothing(client):
    before = client.get("/v1/jobs", headers=_auth(MGMT)).json()
    response = _upload(client, b"word " * 20_000)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert client.get("/v1/jobs", headers=_auth(MGMT)).json() == before


@pytest.mark.parametrize("body,status,message", [
    ({"texts": ["no mask here"]}, 422, "mask token '[MASK]'"),
    ({"texts": ["[MASK]"] * 5}, 422, "at most 4 texts"),
    ({"texts": ["x" * 201 + " [MASK]"]}, 422, "the limit is 200"),
    ({"texts": [" "]}, 422, "empty"),
    ({"texts": []}, 422, "at least 1"),
    ({"texts": ["a [MASK]"], "top_k": 0}, 422, "greater than or equal to 1"),
    ({"text": "a [MASK]"}, 422, "texts"),
])
def test_bad_inference_requests(client, body, status, message):
    response = client.post("/v1/fill-mask", json=body, headers=_auth(INFER))
    assert response.status_code == status and message in response.text, response.text


def test_malformed_and_oversized_json(client):
    response = client.post("/v1/embeddings", content=b"{not json", headers={**_auth(INFER),
                                                                            "content-type": "application/json"})
    assert response.status_code == 422
    big = json.dumps({"texts": ["a" * 3000]})
    headers = {**_auth(INFER), "content-type": "application/json"}
    response = client.post("/v1/embeddings", content=big, headers=headers)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


@pytest.mark.parametrize("path,status", [("/v1/models/v0042", 404), ("/v1/models/..%2Fetc", 404),
                                         ("/v1/models/..etc", 422), ("/v1/models/v1", 422), ("/v1/jobs/nope", 422),
                                         ("/v1/jobs/0000000000", 404),
                                         ("/v1/models/v0042/importance", 404)])
def test_unknown_and_invalid_ids(client, path, status):
    assert client.get(path, headers=_auth(MGMT)).status_code == status


def test_activate_unknown_version_is_404(client):
    assert client.post("/v1/models/v0042/activate", headers=_auth(MGMT)).status_code == 404


def test_auth(client):
    fill = {"texts": ["a [MASK]"]}
    assert client.post("/v1/fill-mask", json=fill).status_code == 401
    assert client.post("/v1/fill-mask", json=fill, headers=_auth("wrong")).status_code == 401
    assert client.post("/v1/fill-mask", json=fill, headers=_auth(INFER)).status_code == 200
    assert client.post("/v1/fill-mask", json=fill, headers=_auth(MGMT)).status_code == 200
    # the inference token cannot manage
    assert _upload(client, b"a document\n", token=INFER).status_code == 401
    assert client.post("/v1/models/v0001/activate", headers=_auth(INFER)).status_code == 401
    assert client.post("/v1/models/v0001/activate", headers=_auth(MGMT)).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_full_queue_answers_503_with_retry_after(client):
    batcher = client.app.state.service.batcher
    batcher.stop()  # hold the model: requests pile up
    try:
        while True:
            try:
                batcher.queue.put_nowait(None)
            except Exception:  # noqa: BLE001 - queue.Full
                break
        response = client.post("/v1/fill-mask", json={"texts": ["a [MASK]"]}, headers=_auth(INFER))
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    finally:
        while not batcher.queue.empty():
            batcher.queue.get_nowait()


def test_openapi_lists_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/corpora", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/models", "/v1/models/current",
                 "/v1/models/{version}", "/v1/models/{version}/importance", "/v1/models/{version}/activate",
                 "/v1/fill-mask", "/v1/embeddings", "/healthz", "/readyz", "/metrics"):
        assert path in paths


def test_every_training_setting_is_an_upload_field(client):
    from das_formats.config import setting_fields

    schema = client.get("/openapi.json").json()["components"]["schemas"]
    form = next(v for k, v in schema.items() if k.startswith("Body_upload_corpus"))
    assert {f.name for f in setting_fields()} <= set(form["properties"])
    response = _upload(client, b"one document about licences\nanother one\n", name="notes.txt",
                       lr="0.0005", contrastive_weight="0.5", negative_rule="abs", mlm_pass_as_anchor="false",
                       steps="2")
    assert response.status_code == 202, response.text
    job = client.get(f"/v1/jobs/{response.json()['job_id']}", headers=_auth(MGMT)).json()
    settings = job["settings"]
    assert (settings["lr"], settings["contrastive_weight"], settings["negative_rule"]) == (0.0005, 0.5, "abs")
    assert settings["mlm_pass_as_anchor"] is False and settings["steps"] == 2 and settings["batch_size"] == 16
    assert job["corpus_filename"] == "notes.txt" and job["kind"] == "adapt"
    client.delete(f"/v1/jobs/{job['id']}", headers=_auth(MGMT))


@pytest.mark.parametrize("field,value,message", [
    ("negative_rule", "sideways", "'clamp' or 'abs'"),
    ("steps", "0", "DASConfig.steps must be >= 1"),
    ("lr", "fast", "valid number"),
])
def test_bad_settings_are_refused_before_a_job_exists(client, field, value, message):
    before = [j["id"] for j in client.get("/v1/jobs", headers=_auth(MGMT)).json()]
    response = _upload(client, b"a document\n", **{field: value})
    assert response.status_code == 422 and message in response.text, response.text
    assert [j["id"] for j in client.get("/v1/jobs", headers=_auth(MGMT)).json()] == before
