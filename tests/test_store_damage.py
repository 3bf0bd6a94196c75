"""One damaged file affects only what it describes: listings, jobs and the API go on; `das repair` mends.

A real store on disk, v0001..v0003 (the tiny RoBERTa published as is: no training), damaged by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from das.app import build_app
from das.cli import app as cli
from das_data.base_models import ensure_initialised
from das_formats.config import DASConfig
from das_formats.fingerprint import sha256_file
from job_records import AdaptRequest, SqliteJobs
from model_store import maintenance
from model_store.store import CorruptVersion, ModelStore, PublishRequest, StoreError
from worker import jobs
from worker.context import Outcome, WorkerContext

SMALL = DASConfig(steps=3, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, lr=1e-3)
runner = CliRunner()
HOURS_AGO = time.time() - 2 * 3600


@pytest.fixture
def store(tmp_path, roberta_dir) -> ModelStore:
    """v0001 (base), v0002, v0003 (active), at tmp_path/store (where `service_settings` looks)."""
    s = ModelStore.open(tmp_path / "store")
    s.init_base(roberta_dir, "tiny-roberta")
    for domain in ("legal", "code"):
        s.publish(PublishRequest(folder=roberta_dir, parent=s.active_id(), domain=domain, base_model="tiny-roberta"))
    return s


def _folder(store: ModelStore, version: str) -> Path:
    return store.backend.local_path(f"versions/{version}")


def _damage_manifest(store: ModelStore, version: str, how: str) -> None:
    path = _folder(store, version) / "manifest.json"
    if how == "garbage":
        path.write_bytes(b"\x00\xff\xfe\x89PNG not a manifest")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:150])
    elif how == "missing":
        path.unlink()
    elif how == "another version's":
        path.write_bytes((_folder(store, "v0001") / "manifest.json").read_bytes())


def _snapshot(*roots: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, sha256_file(p) if p.is_file() else None)
            for root in roots for p in sorted(root.rglob("*"))}


def _repair(*args: str) -> tuple[int, dict]:
    """`das repair ARGS --json`: its exit code and its findings by item."""
    result = runner.invoke(cli, ["repair", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, {f["item"]: f for f in json.loads(result.stdout)}


@pytest.mark.parametrize("how", ["garbage", "truncated", "missing", "another version's"])
def test_a_damaged_manifest_affects_only_its_version(store, how):
    _damage_manifest(store, "v0002", how)
    assert [m.id for m in store.versions()] == store.ids() == ["v0001", "v0003"]
    [damaged] = store.damaged()
    assert damaged.id == "v0002" and "manifest.json" in damaged.reason
    with pytest.raises(CorruptVersion, match=r"v0002 is damaged: manifest.json .*das repair"):
        store.manifest("v0002")
    assert store.active().id == "v0003" and store.find_by_request("job-1") is None
    assert maintenance.gc(store, keep=1) == ["v0001"]  # the damaged version is not touched
    assert (_folder(store, "v0002") / "model.safetensors").is_file()
    listed = runner.invoke(cli, ["versions", "--store", str(store.backend.root)])
    assert listed.exit_code == 0 and "damaged: v0002" in listed.output and "v0003" in listed.output


def test_a_job_runs_past_a_damaged_old_version(store, tmp_path, corpus_file):
    _damage_manifest(store, "v0002", "garbage")
    ctx = WorkerContext(store=store, jobs=SqliteJobs(tmp_path / "jobs.sqlite"), work_dir=tmp_path / "work",
                        heartbeat_s=0.5)
    info = store.blobs.put_corpus(corpus_file, 60, filename="legal.txt")
    job = ctx.jobs.create(AdaptRequest("legal", info.sha256, 60, SMALL.to_dict(), info.filename))
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert (done.state, done.parent, done.version) == ("succeeded", "v0003", "v0004"), done.error
    assert store.ids() == ["v0001", "v0003", "v0004"] and [d.id for d in store.damaged()] == ["v0002"]


def test_a_job_waits_for_a_missing_pointer_and_says_why(store, tmp_path, corpus_file):
    (store.backend.root / "ACTIVE").unlink()
    ctx = WorkerContext(store=store, jobs=SqliteJobs(tmp_path / "jobs.sqlite"), work_dir=tmp_path / "work")
    info = store.blobs.put_corpus(corpus_file, 60)
    job = ctx.jobs.create(AdaptRequest("legal", info.sha256, 60, SMALL.to_dict()))
    assert jobs.run_job(job.id, ctx) is Outcome.WAIT
    waiting = ctx.jobs.get(job.id)
    assert waiting.state == "queued" and waiting.attempts == 0
    assert "ACTIVE is missing" in waiting.error and "das repair" in waiting.error


@pytest.mark.parametrize("pointer,message", [
    (None, "ACTIVE is missing"),
    (b"{\"version\": ", "ACTIVE cannot be read"),
    (b"{\"version\": \"../etc\"}", "ACTIVE cannot be read"),
    (b"{\"version\": \"v0009\"}", "ACTIVE names v0009, which is not in the store"),
    (b"{\"version\": \"v0002\"}", "ACTIVE names v0002, which is damaged"),
])
def test_a_broken_pointer_is_named_and_repair_points_at_the_newest_healthy_version(store, pointer, message):
    _damage_manifest(store, "v0002", "truncated")
    active = store.backend.root / "ACTIVE"
    active.unlink() if pointer is None else active.write_bytes(pointer)
    assert store.ids() == ["v0001", "v0003"]  # listing still works
    assert message in store.pointer_problem() and "das repair" in store.pointer_problem()
    fixes = {f.item: f for f in maintenance.repair(store)}
    assert fixes["ACTIVE"].fixed and fixes["ACTIVE"].fix.startswith("point it at v0003") and message in \
        fixes["ACTIVE"].problem
    assert store.active_id() == "v0003" and store.pointer_problem() is None


def test_repair_sets_aside_the_active_version_and_its_number_is_never_reused(store, roberta_dir):
    _damage_manifest(store, "v0003", "garbage")
    found = maintenance.repair(store)
    assert [(f.item, f.fixed) for f in found] == [("v0003", True), ("ACTIVE", True)]
    assert "ACTIVE names v0003, which is damaged" in found[1].problem and store.active_id() == "v0002"
    [aside] = (store.backend.root / "damaged").iterdir()
    assert aside.name.startswith("v0003-") and (aside / "model.safetensors").is_file()  # kept, not deleted
    assert store.ids() == ["v0001", "v0002"] and store.damaged() == []
    v4 = store.publish(PublishRequest(folder=roberta_dir, parent="v0002", domain="again", base_model="x"))
    assert v4.id == "v0004"


def test_ensure_initialised_never_adds_a_second_base(store, service_settings):
    (store.backend.root / "ACTIVE").unlink()
    assert ensure_initialised(store, service_settings).id == "v0001"
    for version in ("v0001", "v0002", "v0003"):
        _damage_manifest(store, version, "garbage")
    assert ensure_initialised(store, service_settings) is None
    with pytest.raises(StoreError, match="every version"):
        store.init_base(_folder(store, "v0001"), "x")
    assert sorted(p.name for p in (store.backend.root / "versions").iterdir()) == ["v0001", "v0002", "v0003"]


def test_api_lists_the_healthy_versions_and_names_the_damaged(store, service_settings):
    _damage_manifest(store, "v0002", "truncated")
    uploads = service_settings.work_dir / "uploads"
    old, fresh = uploads / "tmp-killed", uploads / "tmp-in-progress"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "corpus").write_text("a document\n")
    for path in (old / "corpus", old):
        os.utime(path, (HOURS_AGO, HOURS_AGO))
    with TestClient(build_app(service_settings)) as client:
        assert not old.exists() and (fresh / "corpus").is_file()  # start-up removed only the stale upload
        assert client.get("/readyz").json()["version"] == "v0003"
        listed = client.get("/v1/models")
        assert listed.status_code == 200 and [m["id"] for m in listed.json()] == ["v0001", "v0003"]
        assert listed.headers["x-damaged-versions"] == "v0002"
        [damaged] = client.get("/v1/models/damaged").json()
        assert damaged["id"] == "v0002" and "manifest.json" in damaged["reason"]
        for response in (client.get("/v1/models/v0002"), client.post("/v1/models/v0002/activate"),
                         client.get("/v1/models/v0002/importance")):
            assert response.status_code == 409, response.text
            assert "manifest.json" in response.json()["detail"] and "das repair" in response.json()["detail"]


def test_a_missing_pointer_answers_503_saying_why_until_repair(store, service_settings):
    (store.backend.root / "ACTIVE").unlink()
    with TestClient(build_app(service_settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert "ACTIVE is missing" in ready.json()["problem"] and "das repair" in ready.json()["problem"]
        current = client.get("/v1/models/current")
        assert current.status_code == 503 and "ACTIVE is missing" in current.json()["detail"]
        assert [m["status"] for m in client.get("/v1/models").json()] == ["retired", "retired", "candidate"]
        assert store.ids() == ["v0001", "v0002", "v0003"]  # start-up created no new base
        code, found = _repair("--store", str(store.backend.root), "--work-dir", str(service_settings.work_dir))
        assert code == 0 and found["ACTIVE"]["fix"].startswith("point it at v0003") and found["ACTIVE"]["fixed"]
        deadline = time.time() + 20
        while client.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        ready = client.get("/readyz").json()
        assert (ready["status"], ready["version"], ready["mode"]) == ("ready", "v0003", "embedded")


def test_repair_reports_corrupted_weights_and_a_dry_run_changes_nothing(store, tmp_path):
    weights = _folder(store, "v0002") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    root, work = store.backend.root, tmp_path / "work"
    args = ["--store", str(root), "--work-dir", str(work)]
    assert _repair(*args, "--dry-run", "--no-verify") == (0, {})  # manifests and pointer are fine
    before = _snapshot(root)
    table = runner.invoke(cli, ["repair", *args, "--dry-run"])
    assert table.exit_code == 1 and "v0002" in table.stdout and "model.safetensors" in table.stdout, table.output
    code, found = _repair(*args, "--dry-run")
    assert code == 1 and list(found) == ["v0002"] and not found["v0002"]["fixed"]
    assert found["v0002"]["problem"] == "model.safetensors does not match its sha256 (corrupted)"
    assert _snapshot(root) == before
    code, found = _repair(*args)
    assert code == 0 and found["v0002"]["fix"].startswith("move it to damaged/v0002-") and found["v0002"]["fixed"]
    assert store.ids() == ["v0001", "v0003"] and store.active_id() == "v0003"
    [aside] = (root / "damaged").iterdir()
    assert sha256_file(aside / "model.safetensors") == hashlib.sha256(data).hexdigest()  # set aside as it was
    assert _repair(*args) == (0, {})
    assert "nothing to repair" in runner.invoke(cli, ["repair", *args]).output


def test_repair_removes_stale_temporary_files_only(store, tmp_path):
    root, work = store.backend.root, tmp_path / "work"
    stale = [root / "versions" / ".tmp-v0004-0123", root / f"corpora/.{'a' * 64}.tmp-{'b' * 32}",
             root / f".ACTIVE.tmp-{'c' * 32}", work / "uploads" / "tmpkilled"]
    fresh = [root / f"corpora/.{'d' * 64}.tmp-{'e' * 32}", work / "uploads" / "tmpuploading"]
    for path in stale + fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith(".tmp-") or path.parent.name == "uploads":
            path.mkdir()
            (path / "part").write_bytes(b"half")
            os.utime(path / "part", (HOURS_AGO, HOURS_AGO) if path in stale else None)
        else:
            path.write_bytes(b"half")
        os.utime(path, (HOURS_AGO, HOURS_AGO) if path in stale else None)
    args = ["--store", str(root), "--work-dir", str(work)]
    before = _snapshot(root, work)
    code, found = _repair(*args, "--dry-run")
    named = {str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in stale}
    assert code == 1 and set(found) == named and _snapshot(root, work) == before
    code, found = _repair(*args)
    assert code == 0 and set(found) == named and all(f["fixed"] for f in found.values())
    assert not any(p.exists() for p in stale) and all(p.exists() for p in fresh)
    assert store.ids() == ["v0001", "v0002", "v0003"] and all(store.verify(v) is None for v in store.ids())
    assert json.loads((root / "ACTIVE").read_text())["version"] == "v0003"


def test_a_swap_checks_the_files_in_another_process_and_says_what_it_found(store, monkeypatch):
    """checked_folder (what the service's hot swap runs) hashes the files in a child process: with this process's
    own check broken, it still answers the folder; a corrupted file comes back as CorruptVersion naming the file;
    a child that dies comes back as a StoreError that says so."""
    from model_store.checking import checked_folder

    monkeypatch.setattr(ModelStore, "verify", lambda self, version: pytest.fail("checked in the serving process"))
    assert checked_folder(store, "v0002", 60) == _folder(store, "v0002")
    weights = _folder(store, "v0002") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CorruptVersion, match="model.safetensors does not match its sha256") as caught:
        checked_folder(store, "v0002", 60)
    assert "das repair" in str(caught.value) and "model.safetensors" in caught.value.reason
    assert checked_folder(store, "v0003", 60) == _folder(store, "v0003")  # one damaged file affects only its version
    store.opened_with = {**store.opened_with, "location": "s3://bucket/store"}  # the child cannot open it: no Redis
    with pytest.raises(StoreError, match="its process exited with code 1 .*needs a Redis URL"):
        checked_folder(store, "v0003", 60)


def test_the_service_keeps_serving_when_the_next_version_fails_its_check(store, service_settings):
    weights = _folder(store, "v0002") / "model.safetensors"
    with TestClient(build_app(service_settings)) as client:
        assert client.get("/readyz").json()["version"] == "v0003"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
        store.activate("v0002")
        deadline = time.time() + 30
        while "cannot be served" not in json.dumps(client.get("/readyz").json()) and time.time() < deadline:
            time.sleep(0.2)
        ready = client.get("/readyz").json()
        assert "v0002 cannot be served" in json.dumps(ready) and "model.safetensors" in json.dumps(ready), ready
        answer = client.post("/v1/fill-mask", json={"texts": ["a <mask> clause"]})
        assert answer.status_code == 200 and answer.json()["version"] == "v0003", answer.text
