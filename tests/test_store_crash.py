"""SIGKILL a publishing writer at many points: the store stays valid and the active version untouched."""

import signal
import subprocess
import sys
import time

from model_store.store import ModelStore

WRITER = """
import sys
from pathlib import Path
from model_store.store import ModelStore, PublishRequest
import das_settings  # what publish imports on first use; a worker has it long before it publishes
store = ModelStore.open(sys.argv[1])
parent = store.active_id()
print("ready", flush=True)
store.publish(PublishRequest(folder=Path(sys.argv[2]), parent=parent, domain="crash", base_model="embedded"))
print("done", flush=True)
"""

DELAYS = [0.0, 0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06,
          0.08, 0.1, 0.13, 0.16, 0.2, 0.3, 0.5]


def _check_valid(store: ModelStore, allowed_active: set[str]) -> None:
    active = store.active_id()
    assert active in allowed_active, f"active {active} is neither the old nor a newly completed version"
    for vid in store.ids():  # every visible version is complete and matches its digests
        store.verify(vid)


def test_sigkill_at_many_points_leaves_the_store_valid(tmp_path, bert_dir):
    root = tmp_path / "store"
    store = ModelStore.open(root)
    store.init_base(bert_dir, "embedded")
    outcomes = []
    for delay in DELAYS:
        before_ids, before_active = store.ids(), store.active_id()
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(bert_dir)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        new_ids = [v for v in store.ids() if v not in before_ids]
        partial = list((root / "versions").glob(".tmp-*"))
        assert len(new_ids) <= 1
        _check_valid(store, {before_active, *new_ids})
        if new_ids and store.active_id() == new_ids[0]:
            outcomes.append("published")
        elif new_ids:
            outcomes.append("published, pointer not yet moved")
        elif partial:
            outcomes.append("killed mid-copy")
        else:
            outcomes.append("killed before writing")
    # the kills landed at different points of the publish, including in the middle of it
    assert "killed mid-copy" in outcomes and "published" in outcomes, outcomes
    # the next writer cleans up what the dead ones left, and publishing still works
    done = subprocess.run([sys.executable, "-c", WRITER, str(root), str(bert_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list((root / "versions").glob(".tmp-*"))
    _check_valid(store, {store.ids()[-1]})
    ids = store.ids()
    assert [int(v[1:]) for v in ids] == list(range(1, len(ids) + 1))  # no gaps, no duplicates
