"""The model store on a local folder, with real model folders from the engine."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from das_formats.config import DASConfig
from das_formats.fingerprint import sha256_file
from model_store import maintenance
from model_store.locks import FileLock, RedisLock, StoreLocked
from model_store.names import InvalidName
from model_store.store import CorruptVersion, LineageError, ModelStore, PublishRequest, StoreError, VersionNotFound
from pipeline.adaptation import adapt_active

SMALL = DASConfig(steps=4, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, lr=1e-3)


@pytest.fixture
def store(tmp_path, roberta_dir) -> ModelStore:
    s = ModelStore.open(tmp_path / "store")
    s.init_base(roberta_dir, "tiny-roberta")
    return s


@pytest.fixture
def code_file(tmp_path, code_docs) -> Path:
    path = tmp_path / "code.txt"
    path.write_text("\n".join(code_docs), encoding="utf-8")
    return path


def _adapt(store, corpus, domain, tmp_path, **kw):
    return adapt_active(store, corpus, domain, SMALL, work_dir=tmp_path / "work", **kw)


def test_publish_activate_and_rollback(store, tmp_path, corpus_file, code_file):
    base = store.active()
    assert base.id == "v0001" and base.parent is None and base.status == "active" and base.domain is None
    v2 = _adapt(store, corpus_file, "legal", tmp_path)
    assert (v2.id, v2.parent, v2.status, v2.domain) == ("v0002", "v0001", "active", "legal")
    assert store.manifest("v0001").status == "retired"  # it was active; the pointer moved on
    assert v2.corpus.sha256 and v2.corpus.documents > 0 and v2.corpus.size == corpus_file.stat().st_size
    assert store.blobs.path(v2.corpus.sha256).read_bytes() == corpus_file.read_bytes()
    assert v2.settings["steps"] == 4 and v2.metrics["steps"] == 4 and v2.package_version
    assert v2.base_model == "tiny-roberta"
    folder = store.model_dir("v0002")
    assert all(sha256_file(folder / name) == digest for name, digest in v2.files.items())
    AutoModelForMaskedLM.from_pretrained(folder)
    # rollback: the chain continues from v0001, so v0003 recomputes the general importance
    store.activate("v0001")
    v3 = _adapt(store, code_file, "code", tmp_path)
    assert v3.parent == "v0001"
    # continue from v0002: v0004 trains against exactly what v0002 handed on
    store.activate("v0002")
    v4 = _adapt(store, code_file, "code", tmp_path)
    assert v4.parent == "v0002" and store.active_id() == "v0004"
    handed_on = load_file(str(store.importance_file("v0002")))
    trained_against = load_file(str(store.importance_file("v0004", "importance_in")))
    assert all(torch.equal(handed_on[k], trained_against[k]) for k in handed_on)
    assert [m.id for m in store.versions()] == ["v0001", "v0002", "v0003", "v0004"]
    assert [m.status for m in store.versions()] == ["retired", "retired", "retired", "active"]  # each was active


def test_candidate_publish_keeps_the_active_version(store, tmp_path, corpus_file):
    v2 = _adapt(store, corpus_file, "legal", tmp_path, activate=False)
    assert v2.status == "candidate" and store.active_id() == "v0001"


def test_same_corpus_is_stored_once(store, corpus_file, tmp_path):
    copy = tmp_path / "again.txt"
    copy.write_bytes(corpus_file.read_bytes())
    a, b = store.blobs.put_corpus(corpus_file, 3), store.blobs.put_corpus(copy, 3)
    assert a.sha256 == b.sha256
    assert store.backend.list_dir("corpora") == [a.sha256]


def test_lineage_conflict(store, tmp_path, corpus_file):
    v2 = _adapt(store, corpus_file, "legal", tmp_path)
    folder = store.model_dir(v2.id)
    # a second adaptation that started from v0001 finishes after v0002 was published
    with pytest.raises(LineageError, match="no longer the active version"):
        store.publish(PublishRequest(folder=folder, parent="v0001", domain="late", base_model="tiny-roberta"))
    assert store.ids() == ["v0001", "v0002"] and store.active_id() == "v0002"
    # without activating, a version may branch from its own parent: a candidate, the pointer untouched
    copy = shutil.copytree(folder, tmp_path / "late", ignore=shutil.ignore_patterns("manifest.json"))
    late = store.publish(PublishRequest(folder=copy, parent="v0001", domain="late", base_model="tiny-roberta"),
                         activate=False)
    assert (late.id, late.parent, late.status, store.active_id()) == ("v0003", "v0001", "candidate", "v0002")


def test_gc_removes_weights_but_keeps_history(store, tmp_path, corpus_file):
    for _ in range(3):
        _adapt(store, corpus_file, "legal", tmp_path)
    store.activate("v0002")
    archived = maintenance.gc(store, keep=1)
    assert archived == ["v0001", "v0003"]  # the newest (v0004) and the active (v0002) keep their weights
    for vid in ("v0001", "v0003"):
        manifest = store.manifest(vid)
        assert manifest.status == "archived"
        folder = tmp_path / "store" / "versions" / vid
        assert not (folder / "model.safetensors").exists() and (folder / "manifest.json").exists()
        store.verify(vid)  # what is left still matches its digests
        with pytest.raises(StoreError, match="archived"):
            store.activate(vid)
        with pytest.raises(StoreError, match="archived"):
            store.model_dir(vid)
    assert store.importance_file("v0003") is not None and store.importance_file("v0003").is_file()
    AutoModelForMaskedLM.from_pretrained(store.model_dir("v0002"))
    assert maintenance.gc(store, keep=1) == []
    with pytest.raises(StoreError, match="at least 1"):
        maintenance.gc(store, keep=0)


@pytest.mark.parametrize("bad", ["../v0001", "v0001/../../etc", "/etc/passwd", "v1", "v0001 ", "..", ""])
def test_traversal_and_bad_ids_are_refused(store, bad):
    with pytest.raises(InvalidName):
        store.manifest(bad)
    with pytest.raises(InvalidName):
        store.activate(bad)


def test_bad_names_in_publish_and_corpora_are_refused(store, tmp_path, roberta_dir):
    with pytest.raises(InvalidName):
        store.blobs.path("../../etc/passwd")
    with pytest.raises(InvalidName, match="domain"):
        store.publish(PublishRequest(folder=roberta_dir, parent="v0001", domain="../evil", base_model="x"))
    with pytest.raises(VersionNotFound, match="no version v0042"):
        store.manifest("v0042")
    with pytest.raises(ValueError, match="escapes"):
        store.backend.read_bytes("../outside")


def test_pickles_and_non_models_are_refused(store, tmp_path, roberta_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in roberta_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(StoreError, match="pickle"):
        store.publish(PublishRequest(folder=folder, parent="v0001", domain="x", base_model="x"))
    with pytest.raises(StoreError, match="config.json"):
        store.publish(PublishRequest(folder=tmp_path, parent="v0001", domain="x", base_model="x"))
    assert store.ids() == ["v0001"]


def test_corrupted_weight_file_is_detected(store, tmp_path):
    weights = tmp_path / "store" / "versions" / "v0001" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersion, match="model.safetensors"):
        store.verify("v0001")
    with pytest.raises(CorruptVersion):
        store.model_dir("v0001")


def test_file_lock_keeps_a_second_writer_out(tmp_path, store):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from model_store.locks import FileLock\n"
        f"with FileLock({str(tmp_path / 'store' / '.lock')!r}).hold():\n"
        "    print('held', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store.lock = FileLock(tmp_path / "store" / ".lock", timeout_s=0.3)
        with pytest.raises(StoreLocked):
            store.activate("v0001")
    finally:
        holder.kill()
        holder.wait()
    store.activate("v0001")  # the kernel released the dead holder's lock


def test_redis_lock_has_a_lease(redis_url):
    name = f"das:test-lock:{time.time_ns()}"
    first = RedisLock(redis_url, name, lease_s=60.0, timeout_s=0.2)  # a lease that cannot lapse during the test
    second = RedisLock(redis_url, name, lease_s=60.0, timeout_s=0.2)
    with first.hold():
        with pytest.raises(StoreLocked):
            with second.hold():
                pass
    with second.hold():  # released: free again
        pass
    # a holder that dies without releasing loses the lock when the lease runs out
    assert first.client.lock(name, timeout=0.5).acquire(blocking=False)
    time.sleep(0.7)
    with RedisLock(redis_url, name, lease_s=1.0, timeout_s=0.2).hold():
        pass


def test_pointer_is_json_naming_the_active_version(store, tmp_path):
    pointer = json.loads((tmp_path / "store" / "ACTIVE").read_text())
    assert pointer["version"] == "v0001" and pointer["updated"]


def test_a_request_publishes_at_most_once(store, roberta_dir):
    request = PublishRequest(folder=roberta_dir, parent="v0001", domain="legal", base_model="x", request_id="job-1")
    first = store.publish(request)
    again = store.publish(request)  # a redelivered job: the parent moved on, yet no second version
    assert first.id == again.id == "v0002" and store.ids() == ["v0001", "v0002"]
    assert store.find_by_request("job-1").id == "v0002" and store.find_by_request("job-2") is None
