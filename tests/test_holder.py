"""ModelHolder: how a swap loads (no torch here: the loader is injected)."""

from __future__ import annotations

import os
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

    def warm(self) -> None:
        self.warmed.append(threading.get_ident())

    def with_tasks(self, tasks):
        return self


def test_files_are_checked_on_a_low_priority_thread_and_the_loader_gets_the_current_version(tmp_path):
    seen = {}

    def resolve(version: str) -> Path:
        seen[version] = (threading.get_ident(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return tmp_path / version

    holder = ModelHolder(resolve=resolve, load=lambda version, folder, current: Fake(version, current))
    assert holder.ensure("v0001") and holder.current.previous is None
    first = holder.current
    assert holder.ensure("v0002") and holder.current.previous is first
    for thread, nice in seen.values():
        assert thread != threading.get_ident()  # not the caller's thread: its priority is not lowered
        assert nice == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


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
    turns: no load or warm-up overlaps a batch, and a swap that asks for its turn waits for the batch
    in progress (and at most the one the batcher was already starting), not for a run of batches,
    even while the batcher re-enters its turn back to back."""
    in_batch, overlaps, waited, stop = threading.Event(), [], [], threading.Event()
    started = [0]  # batches started so far
    asked = {}  # version -> batches started when its swap asked for a turn (resolve runs just before)

    class Checked(Fake):
        def warm(self) -> None:
            overlaps.append(in_batch.is_set())

    def resolve(version: str) -> Path:
        asked[version] = started[0]
        return tmp_path / version

    def load(version, folder, current):
        overlaps.append(in_batch.is_set())
        waited.append(started[0] - asked[version])
        return Checked(version, current)

    holder = ModelHolder(resolve=resolve, load=load)

    def batches() -> None:
        while not stop.is_set():
            with holder.turn():
                started[0] += 1
                in_batch.set()
                threading.Event().wait(0.002)  # a batch; sleeping releases the GIL as torch does
                in_batch.clear()

    batcher = threading.Thread(target=batches)
    batcher.start()
    try:
        for n in range(1, 101):
            swapped = threading.Thread(target=holder.ensure, args=(f"v{n:04d}",))
            swapped.start()
            swapped.join(timeout=5)
            assert not swapped.is_alive(), "the swap never got its turn"
    finally:
        stop.set()
        batcher.join()
    assert holder.current.version == "v0100"
    assert len(overlaps) == 200 and not any(overlaps)
    assert max(waited) <= 2
