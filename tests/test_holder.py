"""ModelHolder: how a swap loads (no torch here: the loader is injected)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serving.holder import ModelHolder


@dataclass
class Fake:
    version: str
    previous: object
    tasks: object = None
    warmed: list = field(default_factory=list)
    folder: object = None

    def warm(self) -> None:
        self.warmed.append(threading.get_ident())

    def with_tasks(self, tasks):
        return self


def test_the_loader_gets_the_checked_folder_and_the_current_version(tmp_path):
    """(The service's resolve checks the files in a child process: tests/test_store_damage.py.)"""
    holder = ModelHolder(resolve=lambda version: tmp_path / version,
                         load=lambda version, folder, current: Fake(version, current, folder=folder))
    assert holder.ensure("v0001") and holder.current.previous is None and holder.current.folder == tmp_path / "v0001"
    first = holder.current
    assert holder.ensure("v0002") and holder.current.previous is first and holder.current.folder == tmp_path / "v0002"


def test_a_version_whose_check_fails_is_not_swapped_in(tmp_path):
    class Corrupt(Exception):
        pass

    def resolve(version: str) -> Path:
        if version == "v0002":
            raise Corrupt("model.safetensors does not match its sha256")
        return tmp_path / version

    holder = ModelHolder(resolve=resolve, load=lambda version, folder, current: Fake(version, current))
    holder.ensure("v0001")
    with pytest.raises(Corrupt, match="sha256"):
        holder.ensure("v0002")
    assert holder.current.version == "v0001"


def test_a_swap_builds_its_version_between_batches_and_goes_next(tmp_path):
    """Building a model beside a forward pass slows the pass 3-5x through the GIL, so the two take
    turns: no load or warm-up overlaps a batch, and once a swap holds the turnstile (it has asked for
    its turn) at most one more batch starts before its load, the one the batcher had already let
    through, even while the batcher re-enters its turn back to back. Order, not timing: batches are
    counted from the moment the swap holds the turnstile (or asks for the model lock) to its load,
    not from before the files' check, whose length is up to the scheduler."""
    in_batch, batch_ran, stop = threading.Event(), threading.Event(), threading.Event()
    overlaps, after_turnstile, after_asking = [], [], []
    started = [0]  # batches started so far

    class Noting:
        """One of holder's locks; for a swap (any thread but the batcher) it notes how many batches had
        started when the swap asked for it and when the swap held it."""

        def __init__(self, lock) -> None:
            self.lock, self.asked, self.held = lock, {}, {}

        def __enter__(self):
            swap = threading.current_thread() is not batcher
            if swap:
                self.asked[threading.get_ident()] = started[0]
            self.lock.acquire()
            if swap:
                self.held[threading.get_ident()] = started[0]
            return self

        def __exit__(self, *exc) -> None:
            self.lock.release()

    class Checked(Fake):
        def warm(self) -> None:
            overlaps.append(in_batch.is_set())

    def load(version, folder, current):
        overlaps.append(in_batch.is_set())
        me = threading.get_ident()
        for since, noted in ((after_turnstile, turnstile.held), (after_asking, model_lock.asked)):
            at = noted.pop(me, None)
            since.append(None if at is None else started[0] - at)
        return Checked(version, current)

    holder = ModelHolder(resolve=lambda version: tmp_path / version, load=load)
    holder._turnstile = turnstile = Noting(holder._turnstile)
    holder._model_lock = model_lock = Noting(holder._model_lock)

    def batches() -> None:
        while not stop.is_set():
            with holder.turn():
                started[0] += 1
                in_batch.set()
                batch_ran.set()
                threading.Event().wait(0.002)  # a batch; sleeping releases the GIL as torch does
                in_batch.clear()

    batcher = threading.Thread(target=batches)
    batcher.start()
    try:
        for n in range(1, 101):
            batch_ran.clear()  # each swap comes while the batcher is running batches back to back
            assert batch_ran.wait(timeout=60), "the batcher stopped"  # a liveness guard only
            swapped = threading.Thread(target=holder.ensure, args=(f"v{n:04d}",))
            swapped.start()
            swapped.join(timeout=60)  # a liveness guard only
            assert not swapped.is_alive(), "the swap never got its turn"
    finally:
        stop.set()
        batcher.join(timeout=60)
    assert not batcher.is_alive()
    assert holder.current.version == "v0100"
    assert len(overlaps) == 200 and not any(overlaps), "a load or warm-up ran during a batch"
    assert len(after_asking) == 100 and None not in after_asking, "a swap loaded without the model lock"
    assert max(after_asking) <= 1, "batches went ahead of a swap that asked for the model lock"
    assert None not in after_turnstile, "a swap loaded without holding the turnstile"
    assert max(after_turnstile) <= 1, "batches went ahead of a swap that held the turnstile"
