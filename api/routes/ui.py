"""The web page of the model's history (GET /ui): static files from `api/ui/`, no build step, no data of its own.

The page is open (it holds nothing); the API calls it makes carry the token the user pastes into it.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
ASSET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(js|css)")
# the page loads nothing from elsewhere and runs no inline script; its SVG is built by its own modules
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                      "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}

router = APIRouter(tags=["ui"])


def _file(name: str) -> FileResponse:
    path = UI_DIR / name
    if not path.is_file():
        raise HTTPException(404, f"the page has no file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/ui", include_in_schema=False)
def page() -> FileResponse:
    """The page: versions, importance history, end tasks and jobs, read from this API with a pasted token."""
    return _file("index.html")


@router.get("/ui/", include_in_schema=False)
def page_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    """A script module or style sheet of the page (a plain name in api/ui/, nothing else)."""
    if not ASSET_NAME.fullmatch(name):
        raise HTTPException(404, f"the page has no file {name!r}")
    return _file(name)
