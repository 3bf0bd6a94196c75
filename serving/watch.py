"""Follow the store's active pointer: Redis pub/sub when distributed, polling as the fallback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ActiveVersionWatcher:
    def __init__(self, read_active: Callable[[], str | None], on_change: Callable[[str], object],
                 poll_s: float, redis_url: str | None = None, channel: str = "das:active-version",
                 retry_failed_s: float = 30.0) -> None:
        self.read_active, self.on_change = read_active, on_change
        self.poll_s, self.redis_url, self.channel = poll_s, redis_url, channel
        self.error: str | None = None  # why the active version cannot be served, until it can
        self.retry_failed_s = retry_failed_s  # a version that failed (e.g. damaged) is not re-read at every poll
        self._failed: tuple[str, float] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll_loop, name="das-active-poll", daemon=True)]
        if redis_url:
            self._threads.append(threading.Thread(target=self._listen, name="das-active-pubsub", daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Check the pointer now (the embedded worker and the activate route call this)."""
        self._wake.set()

    def check(self) -> None:
        active = self.read_active()
        if active is None:
            return
        if self._failed and self._failed[0] == active and time.monotonic() - self._failed[1] < self.retry_failed_s:
            return
        try:
            self.on_change(active)
        except Exception as err:
            self.error, self._failed = f"{active} cannot be served: {err}", (active, time.monotonic())
            raise
        self.error = self._failed = None

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep serving the current version; try again next time
                log.exception("could not follow the active version")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _listen(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                pubsub = redis.Redis.from_url(self.redis_url).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self._wake.set()
            except Exception:  # noqa: BLE001 - Redis away: polling still converges
                log.warning("pub/sub unavailable; relying on polling", exc_info=True)
                self._stop.wait(self.poll_s)

