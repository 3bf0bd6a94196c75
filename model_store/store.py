"""The model store: immutable versions, an atomically switched active pointer, lineage, corpora.

Layout (the same keys on a filesystem and in object storage):

    ACTIVE                    {"version": "v0003", "updated": ...}, replaced atomically
    versions/v0001/           a Hugging Face model folder + importance files + manifest.json
    corpora/<sha256>          uploaded corpora and end-task data, content-addressed
    tasks/NAME.json           end-task definitions; task_models/VERSION/... their models (model_store.tasks)
    damaged/v0002-<time>/     versions that `repair` set aside (local stores; never deleted)

A version becomes visible only complete (rename locally; manifest written last in object
storage). Writers hold one lock. Nothing is unpickled: pickle files are refused at publish.
A damaged file affects only what it describes: a version whose manifest cannot be read is listed
apart (`damaged()`) and skipped by everything else; `repair` sets it aside and mends the pointer.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_formats.fingerprint import sha256_file
from das_formats.layout import IMPORTANCE_FILES, MANIFEST, PICKLE_SUFFIXES, is_weight_file

from . import names
from .backends import Backend, FsspecBackend, LocalBackend, open_backend
from .blobs import Blobs
from .card import CARD, base_recipe, folder_importance, folder_kind, render_card
from .errors import CorruptVersion, LineageError, StoreError, VersionNotFound
from .local_cache import LocalCache
from .locks import FileLock, RedisLock, WriterLock
from .manifest import CorpusInfo, Manifest, Status, now_iso

POINTER = "ACTIVE"
DAMAGED = "damaged"  # where `repair` moves damaged versions (local stores)
STALE_S = 600.0  # a temporary file untouched this long was left by a process that died (writes take seconds)
REPAIR = "run `das repair` to set it aside"


@dataclass(frozen=True)
class DamagedVersion:
    id: str
    reason: str  # e.g. "manifest.json is not a valid manifest (Expecting value: line 1 column 1 (char 0))"


@dataclass(frozen=True)
class Finding:
    """One problem `repair` found, and what it does (or, in a dry run or by hand, would do) about it."""

    item: str  # a version id, ACTIVE, or the key of a temporary file
    problem: str
    fix: str
    fixed: bool


@dataclass(frozen=True)
class VersionFolder:
    """A version opened once: its manifest (the files' digests) and the local folder `from_pretrained` loads, already
    checked against them. Whoever receives one loads and fingerprints the folder without checking it again."""

    manifest: Manifest
    folder: Path

    @property
    def id(self) -> str:
        return self.manifest.id


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
    status: Status = "candidate"  # or "rejected" (by the forgetting gate); never stored as "active"
    evaluation: dict[str, Any] | None = None  # end-task scores and the gate's decision


class ModelStore:
    def __init__(self, backend: Backend, lock: WriterLock, cache_dir: Path | None = None) -> None:
        self.backend = backend
        self.lock = lock
        self.cache = LocalCache(backend, Path(cache_dir) if cache_dir else None)
        self.blobs = Blobs(backend, self.cache)  # corpora and end-task data, content-addressed
        self.opened_with: dict | None = None  # ModelStore.open's arguments: another process reopens the same store

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
        store = cls(backend, lock, Path(cache_dir) if cache_dir else None)
        store.opened_with = {"location": str(location), "redis_url": redis_url, "storage_options": storage_options,
                             "cache_dir": str(cache_dir) if cache_dir else None, "lock_timeout_s": lock_timeout_s}
        return store

    # ---------------------------------------------------------------- reading
    def active_id(self) -> str | None:
        """The version the pointer names; None if the pointer is missing or unreadable (see pointer_problem)."""
        return self._read_pointer()[0]

    def pointer_problem(self) -> str | None:
        """Why the pointer names no healthy version, and the fix; None when it does."""
        problem = self.pointer_issue()
        if problem is None:
            return None
        return f"{problem}; run `das repair` to point it at the newest healthy version (or `das activate VERSION`)"

    def ids(self) -> list[str]:
        """Healthy published version ids, oldest first."""
        return [m.id for m in self.versions()]

    def manifest(self, version_id: str) -> Manifest:
        """One version's manifest; VersionNotFound, or CorruptVersion if its manifest cannot be read."""
        return self._manifest(version_id, self.active_id())

    def lineage(self, version_id: str) -> list[Manifest]:
        """`version_id` and its ancestors, newest first, up to the root (the versions a model served from it learned
        from). An ancestor whose manifest cannot be read ends the walk: what came before it is unknown."""
        chain: list[Manifest] = []
        current: str | None = version_id
        while current is not None and len(chain) < 100_000:
            try:
                manifest = self.manifest(current)
            except CorruptVersion:
                if not chain:
                    raise
                break
            chain.append(manifest)
            current = manifest.parent
        return chain

    def versions(self) -> list[Manifest]:
        """The healthy versions, oldest first; a version whose manifest cannot be read is in `damaged()`."""
        return self.scan()[0]

    def damaged(self) -> list[DamagedVersion]:
        """Versions whose manifest is missing, unreadable or invalid (`verify` checks their other files)."""
        return self.scan()[1]

    def scan(self) -> tuple[list[Manifest], list[DamagedVersion]]:
        """`versions()` and `damaged()` in one pass over the manifests."""
        active = self.active_id()  # read the pointer once, not once per version
        healthy, damaged = [], []
        for version_id in self._published():
            try:
                healthy.append(self._manifest(version_id, active))
            except CorruptVersion as err:
                damaged.append(DamagedVersion(version_id, err.reason))
        return healthy, damaged

    def _published(self) -> list[str]:
        """Version folders, oldest first. A local folder appears complete (by rename), so one without a
        manifest is damaged; in object storage a prefix without one is an unfinished upload, not a version."""
        found = [n for n in self.backend.list_dir("versions") if names.VERSION_RE.fullmatch(n)]
        if self.backend.local_path("versions") is None:
            found = [n for n in found if self.backend.exists(f"versions/{n}/{MANIFEST}")]
        return sorted(found, key=names.version_number)

    def _read_pointer(self) -> tuple[str | None, str | None]:
        """(the active id, None), or (None, what is wrong with the pointer)."""
        try:
            return names.version_id(json.loads(self.backend.read_bytes(POINTER))["version"]), None
        except FileNotFoundError:
            return None, f"{POINTER} is missing: no version is active"
        except (ValueError, TypeError, KeyError) as err:  # not JSON, not an object, no or a bad "version"
            return None, f"{POINTER} cannot be read ({type(err).__name__}: {err})"

    def pointer_issue(self) -> str | None:
        """What is wrong with the pointer (missing, unreadable, naming a missing or damaged version), or None."""
        active, problem = self._read_pointer()
        if active is not None:
            try:
                self.manifest(active)
            except CorruptVersion as err:
                return f"{POINTER} names {active}, which is damaged ({err.reason})"
            except VersionNotFound:
                return f"{POINTER} names {active}, which is not in the store"
        return problem

    def _manifest(self, version_id: str, active: str | None) -> Manifest:
        names.version_id(version_id)
        folder = f"versions/{version_id}"
        try:
            data = self.backend.read_bytes(f"{folder}/{MANIFEST}")
        except FileNotFoundError:
            if self.backend.local_path(folder) is None or not self.backend.exists(folder):
                raise VersionNotFound(f"no version {version_id} in the store") from None
            raise self._corrupt(version_id, f"{MANIFEST} is missing") from None
        try:
            manifest = Manifest.from_json(data)
            if manifest.id != version_id:
                raise ValueError(f"it describes {manifest.id!r}")
            if not isinstance(manifest.files, dict):
                raise TypeError("'files' is not an object")
            for name in manifest.files:
                names.file_name(name)
        except (ValueError, TypeError, AttributeError) as err:  # not JSON, not a manifest, a bad file name
            raise self._corrupt(version_id, f"{MANIFEST} is not a valid manifest ({err})") from None
        return manifest.with_status("active") if manifest.id == active else manifest

    def _corrupt(self, version_id: str, reason: str) -> CorruptVersion:
        return CorruptVersion(f"{version_id} is damaged: {reason}; {REPAIR}", reason)

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
                raise self._corrupt(version_id, f"{name} is missing") from None
            if actual != expected:
                raise self._corrupt(version_id, f"{name} does not match its sha256 (corrupted)")

    def model_dir(self, version_id: str, verify: bool = True) -> Path:
        """A local folder that `from_pretrained` loads; object-store versions are fetched into the cache."""
        return self.open_version(version_id, verify).folder

    def open_version(self, version_id: str, verify: bool = True) -> VersionFolder:
        """A version's manifest and a local folder holding its files, checked against the manifest's digests (an
        object-store version is fetched into the cache, each file checked as it arrives)."""
        manifest = self.manifest(version_id)
        if manifest.status == "archived":
            raise StoreError(f"{version_id} is archived: gc removed its weights")
        local = self.backend.local_path(f"versions/{version_id}")
        if local is None:
            return VersionFolder(manifest, self.cache.version(manifest))
        if verify:
            self.verify(version_id)
        return VersionFolder(manifest, local)

    def importance_file(self, version_id: str, kind: str = "importance") -> Path | None:
        """Local path of one importance file of a version, or None if the version has none (v0001)."""
        manifest = self.manifest(version_id)
        name = IMPORTANCE_FILES[kind]
        if name not in manifest.files:
            return None
        local = self.backend.local_path(f"versions/{version_id}/{name}")
        if local is not None:
            return local
        target = self.cache.root() / "importance" / version_id / name
        if not target.is_file():
            self.cache.fetch_verified(f"versions/{version_id}/{name}", manifest.files[name], target)
        return target

    # ---------------------------------------------------------------- writing
    def init_base(self, folder: Path, base_model: str) -> Manifest:
        """Create v0001 from the base model as given, and activate it, if the store is empty.

        A store that holds versions, even only damaged ones, never gets a second base.
        """
        with self.lock.hold():
            healthy, damaged = self.scan()
            if healthy:
                return healthy[0]
            if damaged:
                raise StoreError(f"every version of {self.backend.location} is damaged; see `das repair --dry-run`")
            return self._publish_locked(PublishRequest(Path(folder), None, None, base_model), activate=True)

    def publish(self, request: PublishRequest, activate: bool = True) -> Manifest:
        """Add a version; with `activate` (the default) its parent must still be the active version.

        A version published without activating may branch from any version (a candidate that an
        operator can inspect and activate). Idempotent per `request_id`: a request that already
        published gets that version back.
        """
        with self.lock.hold():
            if request.request_id is not None:
                done = self.find_by_request(request.request_id)
                if done is not None:
                    return done
            active = self.active_id()
            if request.parent is not None and not activate:
                self.manifest(request.parent)  # the parent must exist
            elif request.parent != active:
                raise LineageError(
                    f"the new version's parent {request.parent} is no longer the active version ({active}); "
                    f"adapt the active version instead, or activate {request.parent} first to branch from it")
            return self._publish_locked(request, activate)

    def activate(self, version_id: str, expected_active: str | None = None) -> Manifest:
        """Make a version active (a rollback when it is an older one): one atomic pointer write.

        With `expected_active`, only if that version is still the active one (else LineageError).
        A version the forgetting gate rejected can be activated by hand: that is the operator's call.
        """
        with self.lock.hold():
            if expected_active is not None and self.active_id() != expected_active:
                raise LineageError(f"{expected_active} is no longer the active version ({self.active_id()})")
            manifest = self.manifest(version_id)
            if manifest.status == "archived":
                raise StoreError(f"{version_id} is archived (gc removed its weights) and cannot be activated")
            self.move_pointer(version_id)
            return manifest.with_status("active")

    def set_status(self, version_id: str, status: str) -> Manifest:
        """Mark a non-active version 'rejected' or 'candidate' by hand (moving the pointer sets 'retired', gc
        'archived')."""
        if status not in ("candidate", "rejected"):
            raise StoreError(f"status {status!r} cannot be set directly")
        with self.lock.hold():
            manifest = self.manifest(version_id)
            if manifest.status == "active":
                raise StoreError(f"{version_id} is active; activate another version first")
            if manifest.status == "archived":
                raise StoreError(f"{version_id} is archived")
            return self._write_manifest(manifest.with_status(status))

    def record_task_score(self, version_id: str, task: str, entry: dict[str, Any]) -> Manifest:
        """Add or replace an end task's score in a version's `evaluation["tasks"]`."""
        with self.lock.hold():
            manifest = self.manifest(version_id)
            evaluation = {**manifest.evaluation, "tasks": {**manifest.evaluation.get("tasks", {}), task: entry}}
            return self._write_manifest(dataclasses.replace(manifest, evaluation=evaluation))








    def _publish_locked(self, request: PublishRequest, activate: bool) -> Manifest:
        # imported here: the settings' import (pydantic-settings, 0.2 s) is not paid by processes that only read,
        # such as the check of a hot swap (model_store.checking)
        from das_settings import package_version

        self._remove_partials()
        files = self._files_of(Path(request.folder))
        taken = self.backend.list_dir("versions") + [n.split("-")[0] for n in self.backend.list_dir(DAMAGED)]
        number = max((names.version_number(n) for n in taken if names.VERSION_RE.fullmatch(n)), default=0) + 1
        version_id = names.format_version(number)
        manifest = Manifest(
            id=version_id, parent=request.parent, created=now_iso(), status=request.status,
            domain=names.domain_name(request.domain) if request.domain else None, corpus=request.corpus,
            base_model=request.base_model, files=files, settings=request.settings or {},
            metrics=request.metrics or {}, evaluation=request.evaluation or {}, package_version=package_version(),
            request_id=request.request_id)
        with tempfile.TemporaryDirectory() as tmp:
            # manifest.files is `files`: the card's digest is written with the manifest
            files[CARD] = self._write_card(manifest, activate, Path(request.folder), Path(tmp) / CARD)
            (Path(tmp) / MANIFEST).write_text(manifest.to_json())
            staging = _overlay(Path(request.folder), Path(tmp), files)
            self.backend.publish_dir(staging, f"versions/{version_id}", {**files, MANIFEST: ""}, last=MANIFEST)
        if activate and request.status != "rejected":
            self.move_pointer(version_id)
        return self.manifest(version_id)

    def _write_card(self, manifest: Manifest, activate: bool, folder: Path, path: Path) -> str:
        """Render the new version's model card (README.md, replacing one the folder holds) into `path`; its sha256.
        It says what is known now: the status it is published with (active when it is activated at once)."""
        shown = manifest.with_status("active") if activate and manifest.status != "rejected" else manifest
        lineage = self.lineage(manifest.parent) if manifest.parent else []
        path.write_text(render_card(shown, lineage, folder_importance(folder), base_recipe(self, lineage, folder),
                                    kind=folder_kind(folder)), encoding="utf-8")
        return sha256_file(path)

    def mark_archived(self, manifest: Manifest) -> Manifest:
        """Record that gc removed a version's weights (the lock held; model_store.maintenance)."""
        return self._write_manifest(manifest.with_status("archived"))

    def move_pointer(self, version_id: str) -> None:
        """Point ACTIVE at `version_id` (the lock held; activate, and repair's re-pointing). The version it named
        before is marked `retired` first, so a crash between the two writes leaves that one still active (the pointer
        decides) rather than unmarked."""
        previous = self.active_id()
        if previous is not None and previous != version_id:
            try:
                self._write_manifest(self.manifest(previous).with_status("retired"))
            except StoreError:  # missing or damaged (what repair repoints away from): nothing to mark
                pass
        self.backend.write_atomic(POINTER, json.dumps({"version": version_id, "updated": now_iso()}).encode())

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
        if not any(is_weight_file(n) for n in files):
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


def _overlay(folder: Path, extra: Path, files: dict[str, str]) -> Path:
    """A staging view: the model folder's files, as symlinks in `extra`, beside what `extra` holds (the manifest,
    the card: those replace the folder's own)."""
    for name in files:
        if not (extra / name).exists():
            (extra / name).symlink_to((folder / name).resolve())
    return extra
