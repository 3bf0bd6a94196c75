"""Who may read what (docs/service.md): with tokens set, every route but /healthz, /readyz, /metrics and the docs
pages needs a token. The route table is walked, not listed by hand: a route added later is checked too."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from api.deps import management_auth
from das.app import build_app

MGMT, INFER = "m-secret", "i-secret"
OPEN = {"/healthz", "/readyz", "/metrics"}
PAGE = {"/ui", "/ui/", "/ui/{name}"}  # the web page's static files (api/routes/ui.py): no data, open
# the docs pages and the files they load (api/offline_docs.py): no data, open
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs-assets/{name}", "/favicon.ico"}
PLACEHOLDERS = {"version": "v0001", "job_id": "0123456789abcdef", "name": "topic"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _url(path: str) -> str:
    """The route's path with a placeholder for each parameter."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PLACEHOLDERS[m.group(1)], path)


def _routes(app):
    """Every route as the app serves it (the routers' routes with their prefixes and inherited dependencies)."""
    return list(iter_route_contexts(app.routes))


def _calls(app) -> list[tuple[str, str, object]]:
    """(method, url, route) for every method of every API route."""
    calls = [(method, _url(route.path), route) for route in _routes(app)
             if isinstance(route.original_route, APIRoute) for method in sorted(route.methods)]
    assert len(calls) > len(OPEN) + 10, calls  # the walk sees the whole table (a check that walks nothing passes)
    return calls


def _manages(route) -> bool:
    return any(d.call is management_auth for d in route.dependant.dependencies)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from das_settings import Settings, get_settings

    root = tmp_path_factory.mktemp("auth-rule")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, inference_token=INFER, max_wait_ms=2.0)
    with TestClient(build_app(settings)) as c:
        yield c


def test_the_route_table_holds_what_the_rule_speaks_of(client):
    calls = _calls(client.app)
    paths = {url for _, url, _ in calls}
    assert OPEN <= paths, paths
    other = {r.path for r in _routes(client.app) if not isinstance(r.original_route, APIRoute)}
    assert other == DOCS, other  # nothing but the docs pages escapes the API routes' dependencies
    managed = {(m, r.path) for m, _, r in calls if _manages(r)}
    assert {("POST", "/v1/corpora"), ("DELETE", "/v1/jobs/{job_id}"), ("POST", "/v1/models/{version}/activate"),
            ("POST", "/v1/tasks"), ("DELETE", "/v1/tasks/{name}")} <= managed


def test_every_route_but_the_open_ones_needs_a_token(client):
    """Without a token (or with a wrong one): 401 everywhere but the open routes and the docs pages."""
    for method, url, route in _calls(client.app):
        for headers in ({}, _auth("wrong")):
            response = client.request(method, url, headers=headers)
            if route.path in OPEN | PAGE:
                assert response.status_code != 401, (method, url)
            else:
                assert response.status_code == 401, (method, url, headers, response.status_code, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
    for path in DOCS - {"/docs/oauth2-redirect", "/docs-assets/{name}"} | {"/docs-assets/swagger-ui.css"}:
        assert client.get(path).status_code == 200, path


def test_the_inference_token_reads_and_only_the_management_token_manages(client):
    for method, url, route in _calls(client.app):
        if method == "GET":
            for token in (INFER, MGMT):
                response = client.get(url, headers=_auth(token))
                assert response.status_code != 401, (url, token, response.text)
        if _manages(route):  # never sent with the management token: these change the store
            assert client.request(method, url, headers=_auth(INFER)).status_code == 401, (method, url)


def test_a_read_answers_with_a_token(client):
    """The issue's examples: job records and manifests answer with the inference token, not without."""
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/models/v0001").status_code == 401
    assert client.get("/v1/jobs", headers=_auth(INFER)).status_code == 200
    manifest = client.get("/v1/models/v0001", headers=_auth(INFER))
    assert manifest.status_code == 200 and manifest.json()["id"] == "v0001"


def test_without_tokens_every_route_stays_open(service_settings):
    assert not (service_settings.management_token or service_settings.inference_token)
    with TestClient(build_app(service_settings)) as c:
        for method, url, _ in _calls(c.app):
            if method == "GET":
                assert c.get(url).status_code != 401, url
