"""The local copy of an object-store's files that `from_pretrained` and the readers need: each file fetched into a
temporary name, checked against its sha256, then renamed into place, so a reader never sees a partial or altered
file (local stores read their own folders and need none of this)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from das_formats.fingerprint import sha256_file

from .backends import Backend
from .errors import CorruptVersion, StoreError
from .manifest import Manifest


class LocalCache:
    def __init__(self, backend: Backend, cache_dir: Path | None) -> None:
        self.backend, self.cache_dir = backend, cache_dir

    def root(self) -> Path:
        if self.cache_dir is None:
            raise StoreError("this store has no local cache folder")
        return self.cache_dir

    def fetch_verified(self, key: str, expected: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        self.backend.fetch_file(key, tmp)
        if sha256_file(tmp) != expected:
            tmp.unlink()
            raise CorruptVersion(f"{key} does not match its sha256 (corrupted)")
        tmp.replace(target)

    def version(self, manifest: Manifest) -> Path:
        """Fetch a whole version into the cache, verifying each file, then rename the folder into place."""
        target = self.root() / "versions" / manifest.id
        if target.is_dir():
            return target
        tmp = target.with_name(f".tmp-{manifest.id}-{uuid.uuid4().hex}")
        try:
            for name, expected in manifest.files.items():
                self.fetch_verified(f"versions/{manifest.id}/{name}", expected, tmp / name)
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
