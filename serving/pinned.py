"""Versions other than the active one, kept loaded for requests that name a version (an LRU).

A request that names a version gets the active version as served now when it names that one, and
otherwise a model from this set: at most `capacity` versions (DAS_MAX_LOADED_VERSIONS), the least
recently used evicted first; the active version is the holder's and does not count. A version is
loaded once, on a thread of its own: requests for it meanwhile wait for that one load, and requests
for the active version go on (the batcher never waits for it; the build takes the holder's
one-build-at-a-time lock, never the batcher's turn). An evicted version is dropped here; requests
that hold it finish on it, and its memory is freed once the last is answered.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future

from .holder import ModelHolder, Servable

log = logging.getLogger(__name__)


class PinningOff(RuntimeError):
    """No version but the active one may be loaded (capacity 0)."""


class PinnedVersions:
    def __init__(self, holder: ModelHolder, capacity: int) -> None:
        self.holder, self.capacity = holder, capacity
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Servable] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future] = {}

    def loaded(self) -> list[str]:
        """The versions held here, least recently used first (the active one is the holder's)."""
        with self._lock:
            return list(self._loaded)

    def model(self, version: str) -> Future:
        """A future of the model that answers for `version`: the active version as served now, or one held
        here (now the most recently used), or the one load of it that this call starts or joins.

        The future raises PinningOff when capacity is 0, or what loading the version raised (a StoreError
        for a damaged or archived version)."""
        future: Future = Future()
        current = self.holder.current
        if current is not None and current.version == version:
            future.set_result(current)
            return future
        if self.capacity == 0:
            future.set_exception(PinningOff(
                f"this server keeps no version but the active one loaded (DAS_MAX_LOADED_VERSIONS=0); "
                f"{version} cannot answer here: activate it, or ask without a version"))
            return future
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                future.set_result(self._loaded[version])
                return future
            if version in self._loading:
                return self._loading[version]
            self._loading[version] = future
        threading.Thread(target=self._load, args=(version, future), name=f"das-pin-{version}", daemon=True).start()
        return future

    def discard(self, version: str) -> None:
        """Drop a version (it became the active one: the holder serves it)."""
        with self._lock:
            self._loaded.pop(version, None)

    def refresh_tasks(self) -> None:
        """Re-read the task models of every version held here (a task registered, fitted or deleted since);
        a version whose task models changed is replaced by a new object, as the holder does."""
        if self.holder.load_tasks is None:
            return
        for version in self.loaded():
            with self._lock:
                model = self._loaded.get(version)
            if model is None:
                continue
            try:
                tasks = self.holder.load_tasks(version, model.tasks)
            except Exception:  # noqa: BLE001 - keep serving the task models it has
                log.exception("could not re-read the task models of pinned version %s", version)
                continue
            if tasks is not None:
                with self._lock:
                    if self._loaded.get(version) is model:
                        self._loaded[version] = model.with_tasks(tasks)

    def _load(self, version: str, future: Future) -> None:
        """Check the files (holder.resolve), build and warm the version, hold it, evict the least recently used."""
        try:
            folder = self.holder.resolve(version)
            with self.holder.building():
                model = self.holder.load(version, folder, self.holder.current)
                if self.holder.load_tasks is not None:
                    model = model.with_tasks(self.holder.load_tasks(version, None))
                model.warm()
        except BaseException as err:  # noqa: BLE001 - every waiting request gets it
            with self._lock:
                del self._loading[version]
            log.warning("could not load pinned version %s: %s", version, err)
            future.set_exception(err)
            return
        with self._lock:
            del self._loading[version]
            self._loaded[version] = model
            evicted = []
            while len(self._loaded) > self.capacity:
                evicted.append(self._loaded.popitem(last=False)[0])
        log.info("loaded pinned version %s (evicted %s)", version, ", ".join(evicted) or "none",
                 extra={"event": "pinned_load", "version": version, "evicted": evicted})
        future.set_result(model)
