"""Paging, shared by the list routes: a page of items, and an opaque cursor to the next one (X-Next-Cursor and
Link rel="next")."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request, Response

from das_formats.jsonl import parse_json

T = TypeVar("T")

MAX_PAGE = 1000
MAX_CURSOR_CHARS = 1000  # far above any cursor this service gives (a listing name and one key)
MAX_JOB_NUMBER = 2**63 - 1  # the job records' integer column
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items per page, 1-{MAX_PAGE}")]
Cursor = Annotated[str | None, Query(description="the X-Next-Cursor header of the previous page (or follow its "
                                                 "Link rel=\"next\"); omitted: the first page")]


def encode_cursor(listing: str, key: str | int) -> str:
    """An opaque cursor: the listing it belongs to and the key of the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps([listing, key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, listing: str, check: Callable[[Any], Any]) -> Any:
    """The key a cursor of `listing` holds (`check` raises ValueError or TypeError for one that cannot be); 422 for a
    cursor this service did not give for that listing."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        found, key = parse_json(base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4)))
        if found != listing:
            raise ValueError(f"a cursor of {found!r}")
        return check(key)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise HTTPException(422, f"invalid cursor {cursor[:100]!r}: pass the X-Next-Cursor header (or follow the "
                                 f"Link rel=\"next\") of the previous page of {listing}, or no cursor for the "
                                 "first page") from None


def page(request: Request, response: Response, listing: str, items: list[T], limit: int,
         key: Callable[[T], str | int]) -> list[T]:
    """The first `limit` of `items` (read with one more, so a next page shows); when there is a next page, its
    cursor goes in `X-Next-Cursor` and its URL (this one, with the cursor) in `Link: <...>; rel="next"`."""
    if len(items) <= limit:
        return items
    items = items[:limit]
    cursor = encode_cursor(listing, key(items[-1]))
    url = request.url.include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    response.headers["X-Next-Cursor"] = cursor
    return items


def job_number(key: Any) -> int:
    """The key of a jobs cursor: a job's sequence number."""
    if type(key) is not int or not 1 <= key <= MAX_JOB_NUMBER:
        raise TypeError("not a job number")
    return key
