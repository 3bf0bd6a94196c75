"""Hot swap: check a version's files (in a child process, model_store.checking), build and warm it between two batches
(`ModelHolder.turn`), then flip one reference.

Requests take `holder.current` once; a swap never touches a model that is answering, so
in-flight requests finish on the old version and no request fails.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as WaitedEnough
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .encoded import Encoded


class Servable(Protocol):
    """A loaded version that answers requests (serving.model.LoadedModel; torch lives there)."""

    version: str
    kind: str  # "masked" (fill-mask) or "causal" (generation, serving/generation.py)
    decoder: object | None  # a causal LM's decoding steps (serving.decoding.CausalDecoder); None for a masked LM
    mask_token_id: int | None  # None for a causal LM
    mask_token: str | None  # as the texts hold it: [MASK], <mask>; None for a causal LM
    max_tokens: int  # tokens it reads of one text, special tokens included
    tasks: object  # serving.tasks.TaskSet: the end-task models served with this version
    backend: str  # what runs its encoder now: "torch" or "onnx" (serving.encoders)

    def warm(self) -> None: ...
    def encode(self, texts: list[str]) -> Encoded: ...  # InputError for a text the tokenizer refuses
    def check_fill_mask(self, texts: list[str], encoded: Encoded) -> None: ...
    def fill_mask(self, texts: list[str] | Encoded, top_k: int) -> list[list[list[dict]]]: ...
    def embed(self, texts: list[str] | Encoded, normalize: bool = True) -> list[list[float]]: ...
    def tokenize(self, texts: list[str], special_tokens: bool = True) -> list[list[dict]]: ...  # TEI's tokens
    def check_tasks(self, names: list[str]) -> None: ...  # TaskNotServed unless each task is served
    def predict(self, texts: list[str] | Encoded, tasks: list[str]) -> list[dict[str, dict]]: ...
    def with_tasks(self, tasks: object) -> Servable: ...

log = logging.getLogger(__name__)
LOADING_SWITCH_INTERVAL_S = 0.0005  # Python's default is 5 ms


@contextmanager
def _collector_paused() -> Iterator[None]:
    """While a version loads: no automatic full garbage collection (loading allocates enough to
    trigger one, which holds the GIL for tens of ms), and a shorter GIL switch interval, so the
    event loop (which goes on reading requests while a batch waits for the swap) and the loader's
    Python code (building a model is mostly Python) interleave finely."""
    was_enabled, interval = gc.isenabled(), sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(LOADING_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if was_enabled:
            gc.enable()


CHECK_WAIT_S = 30.0  # how long ensure() waits for a version's check before it returns and lets the caller go on


class ModelHolder:
    def __init__(self, resolve: Callable[[str], Path], load: Callable[[str, Path, Servable | None], Servable],
                 load_tasks: Callable[[str, object | None], object | None] | None = None,
                 check_wait_s: float = CHECK_WAIT_S) -> None:
        # version id -> local model folder, its files checked; the service's runs in a child process at nice 19
        # (model_store.checking), so the serving process spends no GIL on it
        self.resolve = resolve
        # (version id, folder, the version serving now or None) -> a loaded model; injected so that this
        # module needs no torch; the loader may reuse parts of the current version (its tokenizer)
        self.load = load
        # (version, the task set served now or None) -> the task set to serve, or None if unchanged
        self.load_tasks = load_tasks
        self.current: Servable | None = None
        self._lock = threading.Lock()  # one load at a time
        # Inference and building a version take turns (see turn()); the turnstile makes a waiting swap
        # go next instead of racing the batcher for the lock between two batches.
        self._model_lock = threading.Lock()
        self._turnstile = threading.Lock()
        # called after each swap to a new version with (version, seconds to load and warm it): the API's metrics
        self.on_swap: Callable[[str, float], None] | None = None
        # Checks of versions to swap to run on threads of their own, outside every lock: one stuck check (a stalled
        # NFS or S3 read, until its own time limit) holds back no swap to another version, no task-model reload and
        # no pinned load. ensure() waits check_wait_s for one, then returns and takes its result at a later call.
        self.check_wait_s = check_wait_s
        self._checks: dict[str, tuple[Future, float]] = {}  # version -> (its check, when it started)
        self._checks_lock = threading.Lock()
        self.on_checked: Callable[[], None] | None = None  # a check ended: the watcher looks again (poke)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Held by the batcher around each batch. Building a model is Python work: beside a forward
        pass it holds the GIL each time one of the pass's ~100 torch ops wants it back, and the pass
        runs 3-5x slower for as long as the load lasts (bench/swap.py). So a swap waits for the batch
        in progress, builds and warms the new version alone (~15 ms for the embedded model), and the
        next batch runs after it. Checking the files' digests stays concurrent: it releases the GIL."""
        with self._turnstile:
            pass
        with self._model_lock:
            yield

    @contextmanager
    def building(self) -> Iterator[None]:
        """One build at a time, shared with the loads of pinned versions (serving/pinned.py): a swap waits for
        such a load here, before it takes the batcher's turn, so it never holds the turn while a build runs."""
        with self._lock:
            yield

    @contextmanager
    def _alone(self) -> Iterator[None]:
        with self._turnstile, self._model_lock, _collector_paused():
            yield

    def checking(self) -> tuple[str, float] | None:
        """(version, seconds) of the longest-running check still going, if any: what /readyz reports."""
        with self._checks_lock:
            running = [(v, time.monotonic() - started) for v, (f, started) in self._checks.items() if not f.done()]
        return max(running, key=lambda item: item[1]) if running else None

    def _start_check(self, version: str) -> Future:
        """resolve(version) on a daemon thread (a hung check never holds the process's exit either)."""
        future: Future = Future()

        def check() -> None:
            try:
                future.set_result(self.resolve(version))
            except BaseException as err:  # noqa: BLE001 - the caller of ensure() gets it
                future.set_exception(err)
            if self.on_checked is not None:
                self.on_checked()

        threading.Thread(target=check, name=f"das-check-{version}", daemon=True).start()
        return future

    def _checked_folder(self, version: str) -> Path | None:
        """The checked folder of `version`: its check started (or joined), waited for up to check_wait_s; None while
        it still runs; what it raised when it failed (a StoreError naming the version, after its time limit)."""
        with self._checks_lock:
            if version not in self._checks:
                self._checks[version] = (self._start_check(version), time.monotonic())
            future = self._checks[version][0]
        try:
            folder = future.result(timeout=self.check_wait_s)
        except WaitedEnough:
            log.warning("the files of %s are still being checked; serving %s meanwhile", version,
                        self.current.version if self.current is not None else "nothing")
            return None
        finally:
            if future.done():
                with self._checks_lock:
                    if self._checks.get(version, (None,))[0] is future:
                        del self._checks[version]
        return folder

    def ensure(self, version: str) -> bool:
        """Load, warm and swap in `version` (with its task models) unless it is already current; a
        current version whose task models changed gets them, in a new object. True if it swapped; False too while
        the version's files are still being checked (a later call swaps)."""
        current, folder = self.current, None
        if current is None or current.version != version:
            folder = self._checked_folder(version)  # outside every lock
            if folder is None:
                return False
        with self.building():
            current = self.current
            if current is not None and current.version == version:
                tasks = self.load_tasks(version, current.tasks) if self.load_tasks else None
                if tasks is None:
                    return False
                self.current = current.with_tasks(tasks)
                log.info("serving %s with task models %s", version, sorted(tasks.tasks))
                return True
            if folder is None:  # it was current when this call began; another swap replaced it since
                return False  # (the next call checks it)
            with self._alone():
                started = time.perf_counter()
                loaded = self.load(version, folder, current)
                if self.load_tasks is not None:
                    loaded = loaded.with_tasks(self.load_tasks(version, None))
                loaded.warm()
                self.current = loaded  # the flip: one reference assignment
                seconds = time.perf_counter() - started
            previous = current.version if current is not None else None
            log.info("serving %s (was %s): loaded and warmed in %.3f s", version, previous or "nothing", seconds,
                     extra={"event": "swap", "version": version, "previous": previous, "seconds": round(seconds, 4)})
            if self.on_swap is not None:
                try:
                    self.on_swap(version, seconds)
                except Exception:  # noqa: BLE001 - a metric must never undo a swap
                    log.exception("on_swap failed for %s", version)
            return True
