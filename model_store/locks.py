"""One writer at a time: a file lock for a local store, a Redis lock with a lease when distributed."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol


class StoreLocked(RuntimeError):
    """Another writer holds the store's lock and did not release it in time."""


class WriterLock(Protocol):
    def hold(self) -> Iterator[None]: ...


class FileLock:
    """An exclusive flock on `path`; released by the kernel if the holder dies."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        self.path, self.timeout_s = Path(path), timeout_s

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLocked(f"another writer holds {self.path}; try again later") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class RedisLock:
    """A Redis lock with a lease: a writer that dies loses the lock when the lease runs out."""

    def __init__(self, redis_url: str, name: str, lease_s: float = 600.0, timeout_s: float = 60.0) -> None:
        import redis

        self._errors = redis.exceptions
        self.client = redis.Redis.from_url(redis_url)
        self.name, self.lease_s, self.timeout_s = name, lease_s, timeout_s

    @contextmanager
    def hold(self) -> Iterator[None]:
        lock = self.client.lock(self.name, timeout=self.lease_s, blocking_timeout=self.timeout_s)
        if not lock.acquire():
            raise StoreLocked(f"another writer holds the Redis lock {self.name!r}; try again later")
        try:
            yield
        finally:
            try:
                lock.release()
            except self._errors.LockError:  # the lease ran out; another writer may own it: nothing to release
                pass
