"""The OpenAPI schema tells the truth: the bearer scheme (so /docs has an Authorize button), `security` on every
route that needs a token, and the error answers each route can give with their body (ErrorOut), which real
error answers match."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.schemas import ErrorOut
from das.app import build_app

MGMT, INFER = "m-secret", "i-secret"
OPEN = {"/healthz", "/readyz", "/metrics"}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from das_settings import Settings, get_settings

    root = tmp_path_factory.mktemp("openapi")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, inference_token=INFER, max_wait_ms=2.0)
    with TestClient(build_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    found = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()
             if method in METHODS]
    assert len(found) > 20, found  # the walk sees the whole API (a check that walks nothing passes)
    return found


def _ref(response: dict) -> str:
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_the_bearer_scheme_is_declared(schema):
    assert schema["components"]["securitySchemes"]["bearer"]["type"] == "http"
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_route_but_the_open_ones_carries_the_bearer_security(schema):
    for path, method, op in _operations(schema):
        if path in OPEN:
            assert "security" not in op, (method, path)
        else:
            assert op.get("security") == [{"bearer": []}], (method, path, op.get("security"))


def test_the_error_answers_are_declared_with_their_schema(schema):
    error_out = schema["components"]["schemas"]["ErrorOut"]
    assert error_out["required"] == ["detail"] and error_out["properties"]["detail"]["type"] == "string"
    for path, method, op in _operations(schema):
        if path in OPEN:
            continue
        codes = op["responses"]
        for code in ("401", "503"):  # a token; a backing service away
            assert _ref(codes[code]) == "ErrorOut", (method, path, code)
        assert _ref(codes["422"]) == "InvalidOut", (method, path)
    # the codes each route really gives, as the routes raise them
    expected = {("post", "/v1/corpora"): {"413", "422", "507"}, ("get", "/v1/jobs/{job_id}"): {"404"},
                ("delete", "/v1/jobs/{job_id}"): {"404", "409"}, ("post", "/v1/tasks"): {"409", "413", "507"},
                ("post", "/v1/predict"): {"404", "409"}, ("post", "/v1/fill-mask"): {"413", "422"},
                ("post", "/v1/batch-predictions"): {"409", "413", "422", "507"},
                ("get", "/v1/jobs/{job_id}/output"): {"404", "409"},
                ("post", "/v1/models/{version}/activate"): {"404", "409"}}
    for (method, path), codes in expected.items():
        declared = schema["paths"][path][method]["responses"]
        assert codes <= set(declared), (method, path, sorted(declared))
        assert all(_ref(declared[code]) == ("InvalidOut" if code == "422" else "ErrorOut") for code in codes)


def test_real_error_answers_match_error_out(client, schema):
    auth = {"Authorization": f"Bearer {INFER}"}
    answers = {("get", "/v1/jobs/{job_id}", 401): client.get("/v1/jobs/nope"),
               ("get", "/v1/jobs/{job_id}", 404): client.get("/v1/jobs/0000000000", headers=auth),
               ("get", "/v1/tasks/{name}", 404): client.get("/v1/tasks/nope", headers=auth),
               ("post", "/v1/predict", 409): client.post("/v1/predict", json={"texts": ["hi"]}, headers=auth),
               ("post", "/v1/models/{version}/activate", 401): client.post("/v1/models/v0001/activate",
                                                                            headers=auth)}
    for (method, path, code), response in answers.items():
        assert response.status_code == code, (method, path, response.text)
        ErrorOut.model_validate(response.json())
        assert set(response.json()) == {"detail"}
        assert str(code) in schema["paths"][path][method]["responses"], (method, path, code)


def test_the_token_is_read_as_before(client):
    """The scheme in any case, spaces around the token; a bare token, another scheme or a wrong token: 401."""
    for header, status in ((f"bearer {INFER}", 200), (f"BEARER   {INFER}  ", 200), (f"Bearer {MGMT}", 200),
                           (INFER, 401), (f"Token {INFER}", 401), ("Bearer", 401), (f"Bearer {INFER}x", 401)):
        response = client.get("/v1/jobs", headers={"Authorization": header})
        assert response.status_code == status, (header, response.text)
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json() == {"detail": "missing or wrong bearer token"}


def test_the_schema_is_valid_openapi(schema):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(schema)
