"""Files uploaded as multipart form data, shared by the routes that take them (corpora, tasks, batch predictions):
each streamed to a temporary folder under $DAS_WORK_DIR/uploads, bounded and hashed as it arrives; its name reduced
to safe characters; and the form fields an endpoint takes for every field of a settings class."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Form, HTTPException, UploadFile

from das_formats.config import setting_fields

from .service import UPLOADS

CHUNK = 1 << 20
MAX_FILENAME_CHARS = 128


def upload_dir(service) -> str:
    """The folder uploads are streamed into (each request in a temporary folder of its own)."""
    root = Path(service.settings.work_dir) / UPLOADS
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


async def save_upload(upload: UploadFile, path: Path, limit: int, too_large: str, *,
                      digest: bool = False) -> tuple[int, str | None]:
    """Stream `upload` to `path`, never the whole of it in memory; (bytes, its sha256 hex if `digest`, else None).
    413 with `too_large` as soon as it passes `limit` bytes."""
    size, sha = 0, hashlib.sha256() if digest else None
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, too_large)
            if sha is not None:
                sha.update(chunk)
            out.write(chunk)
    return size, sha.hexdigest() if sha is not None else None


def safe_filename(name: str) -> str:
    """The base name of an uploaded file, reduced to safe characters (it is kept in records and manifests)."""
    base = re.split(r"[\\/]", name)[-1]  # a client may send a path, with either separator
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")  # no control characters, quotes, ..; no leading dots
    if len(base) > MAX_FILENAME_CHARS:
        suffix = Path(base).suffix[:16]
        base = base[: MAX_FILENAME_CHARS - len(suffix)] + suffix
    return base or "upload"


def setting_form_fields(endpoint: Callable[..., Awaitable[Any]],
                        settings_class: type | None = None) -> Callable[..., Awaitable[Any]]:
    """Give an endpoint one optional form field per field of `settings_class` (DASConfig unless told);
    it receives the ones sent as `overrides`."""
    fields = setting_fields(settings_class)
    signature = inspect.signature(endpoint, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]

    def form_field(f) -> inspect.Parameter:
        kind = Literal[f.choices] if f.choices else f.type
        info = Form(description=f"{f.help} (default: {f.default})")
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[kind | None, info])

    async def wrapper(**kwargs: Any) -> Any:
        sent = {f.name: kwargs.pop(f.name) for f in fields}
        return await endpoint(**kwargs, overrides={k: v for k, v in sent.items() if v is not None})

    params = own + [form_field(f) for f in fields]
    wrapper.__name__, wrapper.__doc__ = endpoint.__name__, endpoint.__doc__
    wrapper.__signature__ = signature.replace(parameters=params)  # what FastAPI reads
    return wrapper
