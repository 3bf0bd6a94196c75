"""Aliases: names for versions, as in a model registry (`staging`, `before-legal`, ...).

    ALIASES    {"aliases": {"staging": "v0003", ...}, "updated": ...}, replaced atomically

`production` is no stored alias: it is the active pointer (ACTIVE). Reading it gives the active
version; setting it activates a version (`ModelStore.activate`; the API and the CLI add what an
activation does besides, e.g. queueing end-task fits). Every other alias names one version that
existed when it was set; setting an alias that exists moves it. Writers hold the store's lock, and
the file is one atomic write (rename locally, one PUT in object storage), so readers see the old
or the new set, never half of one.
"""

from __future__ import annotations

import json
import logging

from . import names
from .manifest import now_iso
from .store import ModelStore, StoreError

log = logging.getLogger(__name__)
ALIASES = "ALIASES"  # the store-root key of the aliases file, beside ACTIVE
PRODUCTION = "production"  # the active pointer
MAX_ALIASES = 100  # stored aliases (production not counted): a listing stays one small file


class AliasNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AliasRefused(StoreError):
    """An alias that cannot be set or removed (too many, `production` removed, an archived version)."""


def alias_name(value: str) -> str:
    """Validate an alias: a domain-like name (names.domain_name) that cannot be mistaken for a version id."""
    try:
        names.domain_name(value)
    except names.InvalidName:
        raise names.InvalidName(f"invalid alias {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
                                "with a letter or digit") from None
    if names.VERSION_RE.fullmatch(value.lower()):
        raise names.InvalidName(f"invalid alias {value!r}: it looks like a version id; choose a name such as "
                                "'staging'")
    if value.lower() == PRODUCTION and value != PRODUCTION:
        raise names.InvalidName(f"invalid alias {value!r}: it differs from {PRODUCTION!r} only by case; use "
                                f"{PRODUCTION!r} (the active version) or another name")
    return value


def is_version_id(value: str) -> bool:
    """Whether a name given for a version is a version id (else it is an alias)."""
    return bool(names.VERSION_RE.fullmatch(value))


class AliasStore:
    """The aliases of one model store."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    # ---------------------------------------------------------------- reading
    def stored(self) -> dict[str, str]:
        """The stored aliases (production not included), by name."""
        try:
            data = json.loads(self.store.backend.read_bytes(ALIASES))
            aliases = data["aliases"]
            if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
                raise TypeError("'aliases' is not an object of names to version ids")
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError) as err:  # not JSON, not an object, no "aliases"
            raise StoreError(f"{ALIASES} cannot be read ({type(err).__name__}: {err}); restore it from a backup "
                             f"or delete it (every alias but production is then forgotten)") from None
        return dict(sorted(aliases.items()))

    def all(self) -> dict[str, str]:
        """Every alias with its version: production (while the pointer names a version) and the stored ones."""
        active = self.store.active_id()
        return {**({PRODUCTION: active} if active else {}), **self.stored()}

    def by_version(self) -> dict[str, list[str]]:
        """Version id -> its aliases (production first), for listings of versions: while the aliases file cannot
        be read, production alone (logged; GET /v1/aliases and `das alias ls` say what is wrong)."""
        active = self.store.active_id()
        try:
            stored = self.stored()
        except StoreError as err:
            log.warning("listing versions without their aliases: %s", err)
            stored = {}
        found: dict[str, list[str]] = {active: [PRODUCTION]} if active else {}
        for name, version in stored.items():
            found.setdefault(version, []).append(name)
        return found

    def resolve(self, name: str) -> str:
        """The version id a name stands for: a version id is itself (not checked here); an alias its version.

        InvalidName for a name that is neither; AliasNotFound for an alias that is not set."""
        if is_version_id(name):
            return name
        alias_name(name)
        version = self.all().get(name)
        if version is None:
            if name == PRODUCTION:
                raise StoreError(self.store.pointer_problem() or "no version is active")
            raise AliasNotFound(f"no alias {name!r} (the aliases: {', '.join(self.all()) or 'none'})")
        return version

    # ---------------------------------------------------------------- writing
    def set(self, name: str, version: str) -> str | None:
        """Point `name` at `version` (an existing, not archived version); the version it named before, or None.

        `production` activates the version (ModelStore.activate)."""
        alias_name(name)
        names.version_id(version)
        if name == PRODUCTION:
            before = self.store.active_id()
            self.store.activate(version)
            return before
        with self.store.lock.hold():
            manifest = self.store.manifest(version)  # VersionNotFound, CorruptVersion
            if manifest.status == "archived":
                raise AliasRefused(f"{version} is archived (gc removed its weights): an alias must name a version "
                                   "that can serve")
            aliases = self.stored()
            if name not in aliases and len(aliases) >= MAX_ALIASES:
                raise AliasRefused(f"the store holds {len(aliases)} aliases, the most it keeps ({MAX_ALIASES}); "
                                   "remove one first")
            before = aliases.get(name)
            self._write({**aliases, name: version})
            return before

    def remove(self, name: str) -> str:
        """Remove an alias; the version it named. `production` cannot be removed (activate another version)."""
        alias_name(name)
        if name == PRODUCTION:
            raise AliasRefused("production is the active version and cannot be removed; set it to another "
                               "version instead")
        with self.store.lock.hold():
            aliases = self.stored()
            if name not in aliases:
                raise AliasNotFound(f"no alias {name!r}")
            version = aliases.pop(name)
            self._write(aliases)
            return version

    def _write(self, aliases: dict[str, str]) -> None:
        body = {"aliases": dict(sorted(aliases.items())), "updated": now_iso()}
        self.store.backend.write_atomic(ALIASES, json.dumps(body, indent=2).encode())
