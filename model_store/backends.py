"""Where the store's bytes live: a local (or shared) filesystem, or S3-compatible object storage.

Keys are '/'-separated paths built only from validated names (see names.py). Each backend makes
one write visible atomically: the local one by rename (after fsync), the object store by writing
one object last (a version is visible once its manifest exists).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from das_formats.fingerprint import sha256_file


class Backend(Protocol):
    location: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_atomic(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list_dir(self, prefix: str) -> list[str]: ...
    def put_file(self, src: Path, key: str) -> None: ...
    def publish_dir(self, src: Path, prefix: str, digests: dict[str, str], last: str) -> None: ...
    def fetch_file(self, key: str, dest: Path) -> None: ...
    def file_digest(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
    def remove_partials(self, prefix: str) -> list[str]: ...


class IntegrityError(RuntimeError):
    """Bytes in the store do not match the digest recorded for them."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


class LocalBackend:
    """A folder on a local or shared filesystem; publishes by rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_atomic(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_dir(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        return sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else []

    def put_file(self, src: Path, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            _copy_synced(src, tmp)
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def publish_dir(self, src: Path, prefix: str, digests: dict[str, str], last: str) -> None:
        """Copy into a hidden temporary folder, verify every digest, then rename into place."""
        final = self._path(prefix)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex}")
        tmp.mkdir()
        try:
            for name in [*[n for n in digests if n != last], last]:
                _copy_synced(src / name, tmp / name)
            for name, expected in digests.items():
                if name != last and sha256_file(tmp / name) != expected:
                    raise IntegrityError(f"{name} changed while it was copied into the store")
            _fsync_dir(tmp)
            os.rename(tmp, final)  # fails if `final` exists: a version is never overwritten
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def fetch_file(self, key: str, dest: Path) -> None:
        _copy_synced(self._path(key), dest)

    def file_digest(self, key: str) -> str:
        return sha256_file(self._path(key))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def remove_partials(self, prefix: str) -> list[str]:
        """Temporary folders and files left by writers that died (call under the writer lock)."""
        path = self._path(prefix)
        removed = []
        for child in path.glob(".tmp-*") if path.is_dir() else []:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            removed.append(child.name)
        return removed


class FsspecBackend:
    """S3-compatible object storage (or any fsspec filesystem); the manifest object is written last."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        import fsspec

        options = {"use_listings_cache": False, "skip_instance_cache": True, **(storage_options or {})}
        self.fs, self.base = fsspec.core.url_to_fs(url, **options)
        self.base = self.base.rstrip("/")
        self.location = url

    def _key(self, key: str) -> str:
        if ".." in key.split("/"):
            raise ValueError(f"key {key!r} escapes the store")
        return f"{self.base}/{key}"

    def local_path(self, key: str) -> Path | None:
        return None

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._key(key))

    def write_atomic(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(key), data)  # one PUT: readers see the old or the new object

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._key(key))

    def list_dir(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._key(prefix), detail=False)
        except FileNotFoundError:
            return []
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in entries)

    def put_file(self, src: Path, key: str) -> None:
        self.fs.put_file(str(src), self._key(key))

    def publish_dir(self, src: Path, prefix: str, digests: dict[str, str], last: str) -> None:
        """Upload every file, check each object's size, and write `last` (the manifest) at the end."""
        for name in digests:
            if name == last:
                continue
            key = self._key(f"{prefix}/{name}")
            self.fs.put_file(str(src / name), key)
            if self.fs.info(key)["size"] != (src / name).stat().st_size:
                raise IntegrityError(f"{name}: the stored object's size differs from the file's")
        self.fs.put_file(str(src / last), self._key(f"{prefix}/{last}"))

    def fetch_file(self, key: str, dest: Path) -> None:
        self.fs.get_file(self._key(key), str(dest))

    def file_digest(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._key(key), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        if self.fs.exists(self._key(key)):
            self.fs.rm_file(self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        if self.fs.exists(self._key(prefix)):
            self.fs.rm(self._key(prefix), recursive=True)

    def remove_partials(self, prefix: str) -> list[str]:
        return []  # partial uploads are version prefixes without a manifest; the store removes those


def open_backend(location: str, storage_options: dict | None = None) -> LocalBackend | FsspecBackend:
    """'s3://bucket/prefix' (or another fsspec URL) -> object storage; anything else -> a local folder."""
    if "://" in location and not location.startswith("file://"):
        return FsspecBackend(location, storage_options)
    return LocalBackend(location.removeprefix("file://"))
