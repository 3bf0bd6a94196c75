"""The model store: immutable versions, an atomically switched active pointer, lineage, corpora.

Layout (the same keys on a filesystem and in object storage):

    ACTIVE                    {"version": "v0003", "updated": ...}, replaced atomically
    versions/v0001/           a Hugging Face model folder + importance files + manifest.json
    corpora/<sha256>          uploaded corpora, content-addressed

A version becomes visible only complete (rename locally; manifest written last in object
storage). Writers hold one lock. Nothing is unpickled: pickle files are refused at publish.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_settings import package_version

from . import names
from .backends import Backend, FsspecBackend, LocalBackend, open_backend, sha256_file
from .layout import IMPORTANCE_FILES, MANIFEST, PICKLE_SUFFIXES
from .locks import FileLock, RedisLock, WriterLock
from .manifest import CorpusInfo, Manifest, now_iso

POINTER = "ACTIVE"


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message says why."""


class LineageError(StoreError):
    """The parent of a new version is no longer the active version."""


class VersionNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptVersion(StoreError):
    """A file of a version does not match its recorded digest."""


@dataclass
class PublishRequest:
    """What the caller knows about a new version; the store adds id, time, status and digests."""

    folder: Path
    parent: str | None
    domain: str | None
    base_model: str
    corpus: CorpusInfo | None = None
    settings: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    request_id: str | None = None


class ModelStore:
    def __init__(self, backend: Backend, lock: WriterLock, cache_dir: Path | None = None) -> None:
        self.backend = backend
        self.lock = lock
        self.cache_dir = Path(cache_dir) if cache_dir else None

    @classmethod
    def open(cls, location: str | Path, *, redis_url: str | None = None, storage_options: dict | None = None,
             cache_dir: str | Path | None = None, lock_timeout_s: float = 60.0) -> ModelStore:
        """A local folder (file lock, or Redis lock if given) or an object-store URL (needs Redis)."""
        backend = open_backend(str(location), storage_options)
        if redis_url:
            lock: WriterLock = RedisLock(redis_url, f"das:store-lock:{backend.location}", timeout_s=lock_timeout_s)
        elif isinstance(backend, LocalBackend):
            lock = FileLock(backend.root / ".lock", timeout_s=lock_timeout_s)
        else:
            raise StoreError(f"{location}: an object-store backend needs a Redis URL for its writer lock")
        if cache_dir is None and isinstance(backend, FsspecBackend):
            cache_dir = Path(tempfile.gettempdir()) / "das-store-cache" / uuid.uuid5(
                uuid.NAMESPACE_URL, backend.location).hex
        return cls(backend, lock, Path(cache_dir) if cache_dir else None)

    # ---------------------------------------------------------------- reading
    def active_id(self) -> str | None:
        try:
            return names.version_id(json.loads(self.backend.read_bytes(POINTER))["version"])
        except FileNotFoundError:
            return None

    def ids(self) -> list[str]:
        """Published version ids, oldest first (a version is published once its manifest exists)."""
        found = [n for n in self.backend.list_dir("versions") if names.VERSION_RE.fullmatch(n)]
        return sorted((n for n in found if self.backend.exists(f"versions/{n}/{MANIFEST}")), key=names.version_number)

    def manifest(self, version_id: str) -> Manifest:
        return self._manifest(version_id, self.active_id())

    def versions(self) -> list[Manifest]:
        active = self.active_id()  # read the pointer once, not once per version
        return [self._manifest(v, active) for v in self.ids()]

    def _manifest(self, version_id: str, active: str | None) -> Manifest:
        names.version_id(version_id)
        try:
            manifest = Manifest.from_json(self.backend.read_bytes(f"versions/{version_id}/{MANIFEST}"))
        except FileNotFoundError:
            raise VersionNotFound(f"no version {version_id} in the store") from None
        return manifest.with_status("active") if manifest.id == active else manifest

    def active(self) -> Manifest | None:
        active = self.active_id()
        return self.manifest(active) if active else None

    def find_by_request(self, request_id: str) -> Manifest | None:
        """The version a request (a job) published, if any."""
        return next((m for m in reversed(self.versions()) if m.request_id == request_id), None)

    def verify(self, version_id: str) -> None:
        """Check every file of a version against its digest; raise CorruptVersion if one differs."""
        manifest = self.manifest(version_id)
        for name, expected in manifest.files.items():
            if manifest.status == "archived" and not self.backend.exists(f"versions/{version_id}/{name}"):
                continue  # weights removed by gc
            try:
                actual = self.backend.file_digest(f"versions/{version_id}/{name}")
            except FileNotFoundError:
                raise CorruptVersion(f"{version_id}: {name} is missing") from None
            if actual != expected:
                raise CorruptVersion(f"{version_id}: {name} does not match its sha256 (corrupted)")

    def model_dir(self, version_id: str, verify: bool = True) -> Path:
        """A local folder that `from_pretrained` loads; object-store versions are fetched into the cache."""
        manifest = self.manifest(version_id)
        if manifest.status == "archived":
            raise StoreError(f"{version_id} is archived: gc removed its weights")
        local = self.backend.local_path(f"versions/{version_id}")
        if local is not None:
            if verify:
                self.verify(version_id)
            return local
        return self._cached(manifest)

    def importance_file(self, version_id: str, kind: str = "importance") -> Path | None:
        """Local path of one importance file of a version, or None if the version has none (v0001)."""
        manifest = self.manifest(version_id)
        name = IMPORTANCE_FILES[kind]
        if name not in manifest.files:
            return None
        local = self.backend.local_path(f"versions/{version_id}/{name}")
        if local is not None:
            return local
        target = self._cache_root() / "importance" / version_id / name
        if not target.is_file():
            self._fetch_verified(f"versions/{version_id}/{name}", manifest.files[name], target)
        return target

    def has_corpus(self, sha256: str) -> bool:
        return self.backend.exists(f"corpora/{names.digest(sha256)}")

    def corpus_path(self, sha256: str) -> Path:
        names.digest(sha256)
        local = self.backend.local_path(f"corpora/{sha256}")
        if local is not None:
            if not local.is_file():
                raise StoreError(f"no corpus {sha256} in the store")
            return local
        target = self._cache_root() / "corpora" / sha256
        if not target.is_file():
            self._fetch_verified(f"corpora/{sha256}", sha256, target)
        return target

    # ---------------------------------------------------------------- writing
    def put_corpus(self, path: Path, documents: int, filename: str = "") -> CorpusInfo:
        """Store a corpus under its sha256 (the same bytes twice are stored once)."""
        sha = sha256_file(path)
        if not self.backend.exists(f"corpora/{sha}"):
            self.backend.put_file(path, f"corpora/{sha}")
        return CorpusInfo(sha256=sha, size=path.stat().st_size, documents=documents, filename=Path(filename).name)

    def init_base(self, folder: Path, base_model: str) -> Manifest:
        """Create v0001 from the base model as given, and activate it, if the store is empty."""
        with self.lock.hold():
            if self.ids():
                return self.manifest(self.ids()[0])
            return self._publish_locked(PublishRequest(Path(folder), None, None, base_model), activate=True)

    def publish(self, request: PublishRequest, activate: bool = True) -> Manifest:
        """Add a version whose parent must still be the active version; make it active by default.

        Idempotent per `request_id`: a request that already published gets that version back.
        """
        with self.lock.hold():
            if request.request_id is not None:
                done = self.find_by_request(request.request_id)
                if done is not None:
                    return done
            active = self.active_id()
            if request.parent != active:
                raise LineageError(
                    f"the new version's parent {request.parent} is no longer the active version ({active}); "
                    f"adapt the active version instead, or activate {request.parent} first to branch from it")
            return self._publish_locked(request, activate)

    def activate(self, version_id: str) -> Manifest:
        """Make a version active (a rollback when it is an older one): one atomic pointer write."""
        with self.lock.hold():
            manifest = self.manifest(version_id)
            if manifest.status in ("archived", "rejected"):
                raise StoreError(f"{version_id} is {manifest.status} and cannot be activated")
            self.backend.write_atomic(POINTER, json.dumps({"version": version_id, "updated": now_iso()}).encode())
            return manifest.with_status("active")

    def set_status(self, version_id: str, status: str) -> Manifest:
        """Mark a non-active version 'rejected' or 'candidate' (the only change a version ever sees)."""
        if status not in ("candidate", "rejected"):
            raise StoreError(f"status {status!r} cannot be set directly")
        with self.lock.hold():
            manifest = self.manifest(version_id)
            if manifest.status == "active":
                raise StoreError(f"{version_id} is active; activate another version first")
            if manifest.status == "archived":
                raise StoreError(f"{version_id} is archived")
            return self._write_manifest(manifest.with_status(status))

    def gc(self, keep: int) -> list[str]:
        """Remove the weights of all but the newest `keep` versions and the active one.

        Manifests and importance files are kept, so the history and the importance chain survive.
        """
        if keep < 1:
            raise StoreError("gc --keep must be at least 1")
        with self.lock.hold():
            manifests = self.versions()
            protected = {m.id for m in manifests[-keep:]} | {m.id for m in manifests if m.status == "active"}
            archived = []
            for manifest in manifests:
                version_id = manifest.id
                if version_id in protected or manifest.status == "archived":
                    continue
                for name in manifest.files:
                    if name not in IMPORTANCE_FILES.values() and name.endswith(".safetensors"):
                        self.backend.delete(f"versions/{version_id}/{name}")
                self._write_manifest(manifest.with_status("archived"))
                archived.append(version_id)
            return archived

    # ---------------------------------------------------------------- internals
    def _publish_locked(self, request: PublishRequest, activate: bool) -> Manifest:
        self._remove_partials()
        files = self._files_of(Path(request.folder))
        number = max((names.version_number(n) for n in self.backend.list_dir("versions")
                      if names.VERSION_RE.fullmatch(n)), default=0) + 1
        version_id = names.format_version(number)
        manifest = Manifest(
            id=version_id, parent=request.parent, created=now_iso(), status="candidate",
            domain=names.domain_name(request.domain) if request.domain else None, corpus=request.corpus,
            base_model=request.base_model, files=files, settings=request.settings or {},
            metrics=request.metrics or {}, package_version=package_version(), request_id=request.request_id)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / MANIFEST).write_text(manifest.to_json())
            staging = _overlay(Path(request.folder), Path(tmp), files)
            self.backend.publish_dir(staging, f"versions/{version_id}", {**files, MANIFEST: ""}, last=MANIFEST)
        if activate:
            self.backend.write_atomic(POINTER, json.dumps({"version": version_id, "updated": now_iso()}).encode())
        return self.manifest(version_id)

    def _files_of(self, folder: Path) -> dict[str, str]:
        if not (folder / "config.json").is_file():
            raise StoreError(f"{folder} is not a model folder (no config.json)")
        files = {}
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                continue  # e.g. a finished run's empty checkpoints folder
            if path.suffix in PICKLE_SUFFIXES:
                raise StoreError(f"{path.name}: pickle files are refused; save the model with safetensors")
            files[names.file_name(path.name)] = sha256_file(path)
        if not any(n.endswith(".safetensors") and n not in IMPORTANCE_FILES.values() for n in files):
            raise StoreError(f"{folder} holds no safetensors weights")
        if MANIFEST in files:
            raise StoreError(f"{folder} already holds a {MANIFEST}")
        return files

    def _write_manifest(self, manifest: Manifest) -> Manifest:
        stored = manifest.with_status("candidate") if manifest.status == "active" else manifest
        self.backend.write_atomic(f"versions/{manifest.id}/{MANIFEST}", stored.to_json().encode())
        return self.manifest(manifest.id)

    def _remove_partials(self) -> None:
        """Leftovers of writers that died: hidden temp folders, and object prefixes with no manifest."""
        self.backend.remove_partials("versions")
        if isinstance(self.backend, FsspecBackend):
            for name in self.backend.list_dir("versions"):
                if not self.backend.exists(f"versions/{name}/{MANIFEST}"):
                    self.backend.delete_prefix(f"versions/{name}")

    def _cache_root(self) -> Path:
        if self.cache_dir is None:
            raise StoreError("this store has no local cache folder")
        return self.cache_dir

    def _fetch_verified(self, key: str, expected: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        self.backend.fetch_file(key, tmp)
        if sha256_file(tmp) != expected:
            tmp.unlink()
            raise CorruptVersion(f"{key} does not match its sha256 (corrupted)")
        tmp.replace(target)

    def _cached(self, manifest: Manifest) -> Path:
        """Fetch a whole version into the cache, verifying each file, then rename the folder into place."""
        target = self._cache_root() / "versions" / manifest.id
        if target.is_dir():
            return target
        tmp = target.with_name(f".tmp-{manifest.id}-{uuid.uuid4().hex}")
        try:
            for name, expected in manifest.files.items():
                self._fetch_verified(f"versions/{manifest.id}/{name}", expected, tmp / name)
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _overlay(folder: Path, extra: Path, files: dict[str, str]) -> Path:
    """A staging view: the model folder's files plus the manifest, as symlinks in `extra`."""
    for name in files:
        (extra / name).symlink_to((folder / name).resolve())
    return extra
