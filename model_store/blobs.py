"""Content-addressed blobs: uploaded corpora and end-task data under corpora/<sha256>, each kept once however often
it is uploaded. A blob is read from the backend's own folder when it has one, otherwise fetched into the local
cache and checked against its digest."""

from __future__ import annotations

from pathlib import Path

from das_formats.fingerprint import sha256_file

from . import names
from .backends import Backend
from .errors import StoreError
from .local_cache import LocalCache
from .manifest import CorpusInfo

PREFIX = "corpora"


class Blobs:
    def __init__(self, backend: Backend, cache: LocalCache) -> None:
        self.backend = backend
        self.cache = cache

    def has(self, sha256: str) -> bool:
        return self.backend.exists(f"{PREFIX}/{names.digest(sha256)}")

    def path(self, sha256: str) -> Path:
        """A local path holding the blob's bytes (checked against `sha256` when fetched); StoreError if absent."""
        names.digest(sha256)
        local = self.backend.local_path(f"{PREFIX}/{sha256}")
        if local is not None:
            if not local.is_file():
                raise StoreError(f"no corpus {sha256} in the store")
            return local
        target = self.cache.root() / PREFIX / sha256
        if not target.is_file():
            self.cache.fetch_verified(f"{PREFIX}/{sha256}", sha256, target)
        return target

    def delete(self, sha256: str) -> None:
        """Remove a blob (a batch prediction's files past their retention); one that is gone already is fine."""
        self.backend.delete(f"{PREFIX}/{names.digest(sha256)}")
        if self.cache.cache_dir is not None:
            (self.cache.root() / PREFIX / sha256).unlink(missing_ok=True)

    def put(self, path: Path, sha256: str | None = None) -> str:
        """Store a file under corpora/<its sha256> and return the digest (the same bytes twice are stored once).
        `sha256`: the digest the caller already took of these bytes (an upload hashed as it streamed), so the file
        is not read a second time."""
        sha = names.digest(sha256) if sha256 is not None else sha256_file(path)
        if not self.backend.exists(f"{PREFIX}/{sha}"):
            self.backend.put_file(path, f"{PREFIX}/{sha}")
        return sha

    def put_corpus(self, path: Path, documents: int, filename: str = "", sha256: str | None = None) -> CorpusInfo:
        """Store a domain corpus; its reference holds its digest, size and parsed document count."""
        return CorpusInfo(sha256=self.put(path, sha256), size=path.stat().st_size, documents=documents,
                          filename=Path(filename).name)
