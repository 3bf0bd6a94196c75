"""What a store operation can fail with (the store, its cache, its tasks and aliases raise these)."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message says why."""


class LineageError(StoreError):
    """The parent of a new version is no longer the active version."""


class VersionNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptVersion(StoreError):
    """A version is damaged: its manifest cannot be read, or a file is missing or differs from its digest."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message  # what is wrong, without the advice
