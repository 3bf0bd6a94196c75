"""Training on 2 ranks (torchrun, gloo on the CPU) is the run of one process: the same weights within float
tolerance, for the plain step and for DAS with a given importance, and a run resumed on 2 ranks from a one-process
checkpoint ends where the uninterrupted run does. Dropout is off: its draws are per rank."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from das_engine.trainer import adapt
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import upload_config

SETTINGS = {"steps": 6, "batch_size": 4, "max_length": 32, "lr": 1e-3, "warmup_ratio": 0.0, "checkpoint_every": 3,
            "importance_samples": 8, "importance_batch_size": 4}


def _flags(values: dict) -> list[str]:
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


@pytest.fixture(scope="module")
def still_roberta(roberta_dir, tmp_path_factory) -> Path:
    """The tiny RoBERTa with every dropout at 0."""
    folder = tmp_path_factory.mktemp("roberta-no-dropout")
    shutil.copytree(roberta_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def given_importance(still_roberta, tmp_path_factory) -> Path:
    """A cumulative importance in [0, 1) with a spread, as a previous version would hand on."""
    units = resolve_units(AutoModelForMaskedLM.from_pretrained(still_roberta))
    generator = torch.Generator().manual_seed(3)
    importance = UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=generator) * 0.99)
    path = tmp_path_factory.mktemp("importance") / "importance.safetensors"
    importance.save(path)
    return path


def _two_ranks(model: Path, corpus: Path, out: Path, importance: Path, values: dict) -> None:
    command = [sys.executable, "-m", "das.cli", "adapt", str(corpus), "--domain", "legal", "--out", str(out),
               "--base", str(model), "--prev-importance", str(importance), "--nproc", "2", *_flags(values)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_same_weights(one: Path, two: Path) -> None:
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"weights differ by up to {worst}"
    moved = max(float((a[k] - c).abs().max()) for k, c in load_file(one.parent / "start.safetensors").items()
                if k in a)
    assert moved > 1e-3, "training moved the weights (else equality would say nothing)"
    for name in ("importance.safetensors", "domain_importance.safetensors"):
        if (one / name).is_file():
            x, y = UnitTensors.load(one / name), UnitTensors.load(two / name)
            assert all(torch.allclose(p, q, atol=1e-4) for (_, p), (_, q) in zip(x.items(), y.items(), strict=True))


@pytest.mark.parametrize("softmask", [False, True], ids=["plain", "das"])
def test_two_ranks_train_the_weights_of_one_process(still_roberta, given_importance, corpus_file, tmp_path, softmask):
    values = {**SETTINGS, "softmask": softmask, "track_importance": not softmask}
    shutil.copyfile(still_roberta / "model.safetensors", tmp_path / "start.safetensors")
    adapt(still_roberta, corpus_file, tmp_path / "one", upload_config(values), prev_importance=given_importance)
    _two_ranks(still_roberta, corpus_file, tmp_path / "two", given_importance, values)
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
    # both compute the importance (plain steps with track_importance): I(t) is sharded over the ranks, rank 0 writes it
    assert (tmp_path / "two" / "domain_importance.safetensors").is_file()
    metrics = json.loads((tmp_path / "two" / "train_metrics.json").read_text())
    single = json.loads((tmp_path / "one" / "train_metrics.json").read_text())
    assert metrics["tokens"] == single["tokens"], "the global batch's tokens are counted, not one rank's"
    assert metrics["history"][-1]["loss"] == pytest.approx(single["history"][-1]["loss"], rel=1e-4)


def test_a_run_resumed_on_two_ranks_ends_with_the_uninterrupted_weights(still_roberta, given_importance,
                                                                        corpus_file, tmp_path):
    values = {**SETTINGS, "softmask": True}
    shutil.copyfile(still_roberta / "model.safetensors", tmp_path / "start.safetensors")
    adapt(still_roberta, corpus_file, tmp_path / "one", upload_config(values), prev_importance=given_importance)
    steps = []
    stopped = adapt(still_roberta, corpus_file, tmp_path / "two", upload_config(values),
                    prev_importance=given_importance, on_progress=lambda p: steps.append(p.step),
                    should_stop=lambda: len(steps) >= 3)
    assert (stopped.status, stopped.step) == ("cancelled", 3)
    assert (tmp_path / "two" / "checkpoints").is_dir()
    _two_ranks(still_roberta, corpus_file, tmp_path / "two", given_importance, values)
    metrics = json.loads((tmp_path / "two" / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3
    _assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_a_service_adaptation_trains_on_two_ranks(service_settings, small_corpus):
    """DAS_TRAIN_PROCS=2: the job's process is rank 0 and starts rank 1; an upload whose batch does not divide over
    the ranks is refused before anything is stored."""
    from fastapi.testclient import TestClient
    from service_helpers import JOB_FORM, upload, wait_for_job

    from das.app import build_app

    with TestClient(build_app(service_settings.model_copy(update={"train_procs": 2}))) as client:
        with small_corpus.open("rb") as f:
            odd = client.post("/v1/corpora", files={"file": ("c.txt", f, "text/plain")},
                              data={**JOB_FORM, "batch_size": "3"})
        assert odd.status_code == 422 and "divide over the 2 training processes" in odd.text
        assert "DAS_TRAIN_PROCS=2" in odd.text and client.get("/v1/jobs").json() == []
        job = wait_for_job(client, upload(client, small_corpus)["job_id"], timeout_s=300)
        assert (job["state"], job["version"]) == ("succeeded", "v0002"), job
        manifest = client.get("/v1/models/v0002").json()
        assert manifest["metrics"]["ranks"] == 2 and manifest["metrics"]["steps"] == 12


def test_a_helper_rank_that_dies_while_starting_fails_the_run_at_once(still_roberta, corpus_file, tmp_path,
                                                                     monkeypatch):
    """Rank 0 lets no rank into the process group before every helper is ready: a helper that exits while starting
    fails the run with its exit code (not after the collectives' 6-hour timeout), and nothing is written."""
    from das_engine import spawn_ranks

    def broken_helper(rank, world, port, spec):  # the real command, with an environment that breaks its start
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "PYTHONPATH": str(tmp_path / "broken")}
        (tmp_path / "broken" / "das_engine").mkdir(parents=True, exist_ok=True)  # shadows the package
        (tmp_path / "broken" / "das_engine" / "__init__.py").write_text("raise SystemExit(3)\n")
        return subprocess.Popen([sys.executable, "-m", "das_engine.spawn_ranks", str(spec)], env=env,
                                cwd=tmp_path / "broken")

    monkeypatch.setattr(spawn_ranks, "_start_helper", broken_helper)
    monkeypatch.setattr(spawn_ranks, "HELPER_START_TIMEOUT_S", 120.0)
    with pytest.raises(RuntimeError, match="rank 1 of 2 exited with code 3 before it joined"):
        spawn_ranks.adapt_on_ranks(2, still_roberta, corpus_file, tmp_path / "out", upload_config(SETTINGS))
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not torch.distributed.is_initialized()


def _children_running(module: str) -> list[int]:
    """Pids of this process's children whose command line runs `module`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and module in command:
            found.append(int(stat.parent.name))
    return found


def test_class7_nothing_is_left_behind_a_dead_rank_is_named(still_roberta, given_importance, corpus_file, tmp_path):
    """A helper rank killed mid-training (SIGKILL) fails the run with which rank died and how, not gloo's message;
    rank 0 leaves the process group."""
    import signal

    from das_engine import spawn_ranks

    def kill_rank_one(progress) -> None:
        if progress.phase == "train" and progress.step >= 2:
            for pid in _children_running("das_engine.spawn_ranks"):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"training rank 1 of 2 exited \(killed by SIGKILL\)"):
        spawn_ranks.adapt_on_ranks(2, still_roberta, corpus_file, tmp_path / "out",
                                   upload_config({**SETTINGS, "steps": 2000, "checkpoint_every": 0}),
                                   prev_importance=given_importance, on_progress=kill_rank_one)
    assert not torch.distributed.is_initialized() and not _children_running("das_engine.spawn_ranks")


def test_class7_nothing_is_left_behind_a_killed_runs_folder_is_removed(tmp_path):
    import tempfile
    import time

    from das_engine import spawn_ranks

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid names no process now
    root = Path(tempfile.gettempdir())
    dead = root / f"{spawn_ranks.FOLDER_PREFIX}{ended.pid}-abc"
    fresh_dead = root / f"{spawn_ranks.FOLDER_PREFIX}{ended.pid}-new"
    mine = root / f"{spawn_ranks.FOLDER_PREFIX}{os.getpid()}-abc"
    for folder in (dead, fresh_dead, mine):
        folder.mkdir(exist_ok=True)
        (folder / "spec.pickle").write_bytes(b"x")
    old = time.time() - 3600
    for folder in (dead, mine):
        os.utime(folder, (old, old))
    try:
        assert dead in spawn_ranks.remove_dead_runs_folders()
        assert not dead.exists() and mine.exists() and fresh_dead.exists()  # alive, or too young to judge
    finally:
        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(fresh_dead, ignore_errors=True)
