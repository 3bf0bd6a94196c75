"""Keeping a store healthy: gc (the weights of old versions removed, their history kept) and repair (what is damaged
set aside, a broken pointer mended, what dead writers left removed), with no healthy file ever deleted. Part of the
store's package: it uses the store's own internals (manifest writes and the pointer under the writer lock)."""

from __future__ import annotations

import time
from contextlib import nullcontext

from das_formats.layout import MANIFEST, TASK_MODELS, is_weight_file

from . import names
from .aliases import AliasStore
from .manifest import Manifest
from .store import DAMAGED, POINTER, STALE_S, CorruptVersion, DamagedVersion, Finding, ModelStore, StoreError


def gc(store: ModelStore, keep: int) -> list[str]:
    """Remove the weights of all but the newest `keep` versions, the active one and those an alias names.

    Manifests and importance files are kept, so the history and the importance chain survive.
    """
    if keep < 1:
        raise StoreError("gc --keep must be at least 1")
    with store.lock.hold():
        manifests = store.versions()
        protected = ({m.id for m in manifests[-keep:]} | {m.id for m in manifests if m.status == "active"}
                     | set(AliasStore(store).stored().values()))
        archived = []
        for manifest in manifests:
            version_id = manifest.id
            if version_id in protected or manifest.status == "archived":
                continue
            for name in manifest.files:
                if is_weight_file(name):
                    store.backend.delete(f"versions/{version_id}/{name}")
            store.backend.delete_prefix(f"{TASK_MODELS}/{version_id}")  # its end-task models go with it
            store.mark_archived(manifest)
            archived.append(version_id)
        return archived


def repair(store: ModelStore, dry_run: bool = False, verify: bool = True,
           older_than_s: float = STALE_S) -> list[Finding]:
    """Find what is damaged and, unless `dry_run`, mend it without deleting anything healthy.

    A damaged version (its manifest unreadable; with `verify`, a file missing or unlike its
    digest) is moved to damaged/ (object storage: reported for the operator); a missing or broken
    pointer is pointed at the newest healthy version that may be active; temporary files that
    writers which died left, untouched for `older_than_s`, are removed.
    """
    with nullcontext() if dry_run else store.lock.hold():
        healthy, damaged = store.scan()
        if verify:
            damaged += [d for d in (_check_files(store, m) for m in healthy) if d is not None]
        broken = {d.id for d in damaged}
        active = store.active_id()
        pointer = store.pointer_issue() or (f"{POINTER} names {active}, which is damaged" if active in broken
                                            else None)
        found = [_set_aside(store, d, dry_run) for d in sorted(damaged, key=lambda d: names.version_number(d.id))]
        if pointer is not None and (healthy or damaged):  # (an empty store has no pointer yet)
            found.append(_repoint(store, pointer, [m for m in healthy if m.id not in broken], dry_run))
        for key in _leftovers(store, older_than_s):
            if not dry_run:
                _remove(store, key)
            found.append(Finding(key, "temporary files of a writer that died", "remove them", not dry_run))
        return found


def _check_files(store: ModelStore, manifest: Manifest) -> DamagedVersion | None:
    try:
        store.verify(manifest.id)
    except CorruptVersion as err:
        return DamagedVersion(manifest.id, err.reason)
    return None


def _set_aside(store: ModelStore, damaged: DamagedVersion, dry_run: bool) -> Finding:
    folder = store.backend.local_path(f"versions/{damaged.id}")
    if folder is None:  # object storage has no rename
        return Finding(damaged.id, damaged.reason,
                       f"by hand: restore versions/{damaged.id}/ from a backup, or delete it", False)
    target = f"{DAMAGED}/{damaged.id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if not dry_run:
        store.backend.local_path(DAMAGED).mkdir(exist_ok=True)
        folder.rename(store.backend.local_path(target))
    return Finding(damaged.id, damaged.reason, f"move it to {target}", not dry_run)


def _repoint(store: ModelStore, problem: str, healthy: list[Manifest], dry_run: bool) -> Finding:
    usable = [m.id for m in healthy if m.status not in ("archived", "rejected")]
    if not usable:
        return Finding(POINTER, problem, "none: no healthy version may be active; restore one from a backup",
                       False)
    if not dry_run:
        store.move_pointer(usable[-1])
    return Finding(POINTER, problem, f"point it at {usable[-1]}, the newest healthy version", not dry_run)


def _leftovers(store: ModelStore, older_than_s: float) -> list[str]:
    """What writers that died left: object prefixes without a manifest; locally, temporary folders
    (versions/.tmp-*) and files of atomic writes (.NAME.tmp-*) untouched for `older_than_s`."""
    root = store.backend.local_path("")
    if root is None:
        return [f"versions/{n}" for n in store.backend.list_dir("versions")
                if not store.backend.exists(f"versions/{n}/{MANIFEST}")]
    cutoff = time.time() - older_than_s
    found = [path for pattern in ("versions/.tmp-*", ".*.tmp-*", "corpora/.*.tmp-*", "versions/*/.*.tmp-*")
             for path in root.glob(pattern) if path.lstat().st_mtime < cutoff]
    return sorted(str(path.relative_to(root)) for path in found)


def _remove(store: ModelStore, key: str) -> None:
    path = store.backend.local_path(key)
    if path is not None and not path.is_dir():
        store.backend.delete(key)
    else:
        store.backend.delete_prefix(key)
