"""/docs (Swagger UI) and /redoc (ReDoc) that work without internet: their scripts, style sheet and icon come from
this app, read from the installed `fastapi_offline` package, where FastAPI's own pages load them from a CDN.

The pages are FastAPI's (`fastapi.openapi.docs`), added as FastAPI adds its own: plain routes outside the API's
dependencies, so they stay open like /openapi.json. /favicon.ico serves the same icon for /docs, /redoc and /ui.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

ASSETS_URL = "/docs-assets"
FAVICON_URL = "/favicon.ico"
MEDIA_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
# a day, then a revalidation by ETag (answered 304): the files change only when the package is upgraded
CACHE_CONTROL = "public, max-age=86400"
# the one file ReDoc fetches from elsewhere by itself: the logo of its "API docs by Redocly" link. Without its URL the
# image is dropped (the bundle's own error handler), so the page asks no other host for anything.
REDOC_REMOTE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@lru_cache(maxsize=len(MEDIA_TYPES))
def _asset(name: str) -> tuple[bytes, str]:
    """The bytes of a file of fastapi_offline's `static` folder, and their ETag (read once per process)."""
    data = files("fastapi_offline").joinpath("static", name).read_bytes()
    if name == "redoc.standalone.js":
        data = data.replace(REDOC_REMOTE_LOGO, b"")
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def _asset_response(request: Request, name: str) -> Response:
    if name not in MEDIA_TYPES:
        raise HTTPException(404, f"the docs pages have no file {name!r}; they load {', '.join(MEDIA_TYPES)}")
    data, etag = _asset(name)
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MEDIA_TYPES[name], headers=headers)


def add_docs_pages(app: FastAPI) -> None:
    """/docs, /docs/oauth2-redirect, /redoc, the files they load (under /docs-assets/) and /favicon.ico, on an app
    built with `docs_url=None, redoc_url=None` (FastAPI's own pages off)."""

    def url(request: Request, path: str) -> str:
        return request.scope.get("root_path", "").rstrip("/") + path  # behind a proxy that strips a prefix

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url(request, app.swagger_ui_oauth2_redirect_url),
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"), swagger_favicon_url=url(request, FAVICON_URL))

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=url(request, app.openapi_url), title=f"{app.title} - ReDoc",
                              redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
                              redoc_favicon_url=url(request, FAVICON_URL), with_google_fonts=False)

    async def asset(request: Request) -> Response:
        return _asset_response(request, request.path_params["name"])

    async def favicon(request: Request) -> Response:
        return _asset_response(request, "favicon.png")

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(app.swagger_ui_oauth2_redirect_url, oauth2_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
    app.add_route(f"{ASSETS_URL}/{{name}}", asset, include_in_schema=False)
    app.add_route(FAVICON_URL, favicon, include_in_schema=False)
