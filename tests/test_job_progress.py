"""A job shows what it is doing (issue #33): every phase reports progress in the job's record, from the importance
passes through the gate to the activation; fit jobs report their steps; the record keeps the seconds of each phase;
and off a terminal the client and the CLI write a line at every phase change and at least every N seconds."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from das_client import Job as ClientJob
from das_client.models import from_json
from das_client.progress import ProgressBar
from task_sets import source_task, write_jsonl

from das_formats.config import DASConfig
from das_formats.task_data import TaskSettings
from das_settings import Settings
from job_records import AdaptRequest, FitRequest, JobFilter, SqliteJobs
from model_store.store import ModelStore
from model_store.tasks import TaskStore
from pipeline.adaptation import PHASES
from pipeline.endtasks import FIT_PHASES
from pipeline.task_intake import check_task_files, store_task_data
from worker import jobs
from worker.context import Outcome, WorkerContext

SMALL = DASConfig(steps=3, batch_size=4, max_length=32, importance_samples=8, importance_batch_size=2,
                  checkpoint_every=0, lr=1e-3)


class RecordedJobs(SqliteJobs):
    """The real registry, keeping every progress it is given (what a client polling the record could see)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: list[dict] = []

    def update(self, job_id: str, **fields):
        if "progress" in fields:
            self.seen.append(dict(fields["progress"]))
        return super().update(job_id, **fields)


@pytest.fixture
def ctx(tmp_path, bert_dir) -> WorkerContext:
    store = ModelStore.open(tmp_path / "store")
    store.init_base(bert_dir, "embedded")
    return WorkerContext(store=store, jobs=RecordedJobs(tmp_path / "jobs.sqlite"), work_dir=tmp_path / "work",
                         heartbeat_s=0.5, max_attempts=3)


def _register_task(ctx: WorkerContext, tmp_path: Path, kind: str = "probe"):
    sets = source_task(n_train=20, n_eval=10)
    train, evals = write_jsonl(tmp_path / "train.jsonl", sets["train"]), write_jsonl(tmp_path / "eval.jsonl",
                                                                                     sets["eval"])
    settings = TaskSettings(epochs=1, batch_size=8) if kind == "finetune" else TaskSettings()
    train_set, eval_set = check_task_files(kind, settings, train, evals, Settings())
    ctx.texts = (len(sets["train"]), len(sets["eval"]))
    return TaskStore(ctx.store).put_definition(store_task_data(ctx.store, f"source-{kind}", kind, settings,
                                                               (train, train_set, "train.jsonl"),
                                                               (evals, eval_set, "eval.jsonl")), replace=True)


def _phases_in_order(seen: list[dict]) -> list[str]:
    order: list[str] = []
    for progress in seen:
        if not order or order[-1] != progress["phase"]:
            order.append(progress["phase"])
    return order


def test_an_adaptation_reports_every_phase_in_order_with_its_own_counts(ctx, tmp_path, corpus_file):
    _register_task(ctx, tmp_path)
    info = ctx.store.blobs.put_corpus(corpus_file, 60, filename="notes.txt")
    job = ctx.jobs.create(AdaptRequest("legal", info.sha256, 60, SMALL.to_dict(), info.filename))
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert done.state == "succeeded", done.error
    seen = ctx.jobs.seen
    order = _phases_in_order(seen)
    assert order == [p for p in PHASES if p != "merge"] or order == list(PHASES)  # merge with a merging setting
    assert "done" not in order  # the trainer's end is not the job's: the gate and the store follow
    by_phase = {phase: [p for p in seen if p["phase"] == phase] for phase in order}
    # the importance passes count their batches (8 samples in batches of 2), not the training steps
    for phase in ("general-importance", "domain-importance"):
        counts = [(p["step"], p["total"]) for p in by_phase[phase]]
        assert counts[0] == (0, 4) and counts[-1] == (4, 4), (phase, counts)
    assert [p["step"] for p in by_phase["train"]][-1] == 3 and by_phase["train"][-1]["total"] == 3
    gate = by_phase["gate"]
    assert gate[0]["detail"] == "task source-probe" and (gate[-1]["step"], gate[-1]["total"]) == (1, 1)
    # the record keeps the seconds of each phase, from the wait in the queue to the activation
    assert list(done.phases_s) == ["queued", *order]
    assert all(seconds >= 0 for seconds in done.phases_s.values()) and done.phases_s["train"] > 0


def test_a_fit_job_reports_its_phases_and_a_finetune_its_steps(ctx, tmp_path):
    for kind in ("probe", "finetune"):
        definition = _register_task(ctx, tmp_path, kind)
        ctx.jobs.seen.clear()
        job = ctx.jobs.create(FitRequest(definition.name, definition.generation, definition.train, 20, "train.jsonl"))
        assert jobs.run_job(job.id, ctx) is Outcome.DONE
        done = ctx.jobs.get(job.id)
        assert done.state == "succeeded", done.error
        order = _phases_in_order(ctx.jobs.seen)
        expected = [p for p in FIT_PHASES if kind == "probe" or p != "features"]
        assert order == expected, kind
        fits = [p for p in ctx.jobs.seen if p["phase"] == "fit"]
        n_train, n_eval = ctx.texts
        if kind == "finetune":  # batches of 8, one epoch: a step per batch, each with its loss
            assert [p["step"] for p in fits][-1] == fits[-1]["total"] == -(-n_train // 8)
            assert "loss" in fits[-1]["losses"]
        else:  # the features of the train and eval texts, counted together, then the probe's fit
            features = [p for p in ctx.jobs.seen if p["phase"] == "features"]
            assert features[0]["step"] == 0 and features[-1]["step"] == features[-1]["total"] == n_train + n_eval
        assert list(done.phases_s) == ["queued", *expected]


def _job(phase: str, step: int, total: int, state: str = "running", **more) -> ClientJob:
    return from_json(ClientJob, {"id": "3f2a9c1e" + "0" * 24, "state": state, "kind": "adapt",
                                 "progress": {"phase": phase, "step": step, "total": total, "losses": {}, **more},
                                 **({"version": "v0002"} if state == "succeeded" else {})})


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_off_a_terminal_the_client_writes_a_line_per_phase_and_every_n_seconds():
    updates = [_job("general-importance", i, 4) for i in range(5)] + [_job("train", i, 3) for i in range(4)]
    quiet = NotATerminal()
    bar = ProgressBar(quiet, every_s=3600)  # nothing is due by time: a line per phase change, and the last
    for job in updates + [_job("train", 3, 3, state="succeeded")]:
        bar.update(job)
    lines = quiet.getvalue().splitlines()
    assert [line.split()[3] for line in lines[:2]] == ["general-importance", "train"] and len(lines) == 3
    assert lines[-1].endswith("-> v0002")
    chatty = NotATerminal()
    bar = ProgressBar(chatty, every_s=0)  # every line is due by time
    for job in updates:
        bar.update(job)
    assert len(chatty.getvalue().splitlines()) == len(updates)


def test_a_gate_line_says_which_task_it_scores():
    from das_client.progress import progress_line

    line = progress_line(_job("gate", 1, 3, detail="task topic"))
    assert "gate [" in line and "1/3 task topic" in line


def test_das_adapt_redirected_writes_progress_lines_before_its_last(tmp_path, bert_dir, corpus_file):
    out = tmp_path / "model"
    env = {"DAS_PROGRESS_EVERY_S": "1", "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, "-m", "das.cli", "adapt", str(corpus_file), "--domain", "legal",
                           "--out", str(out), "--base", str(bert_dir), "--steps", "3", "--batch-size", "4",
                           "--max-length", "32", "--importance-samples", "8", "--importance-batch-size", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    phases = [line.split()[1] for line in lines if line.startswith("legal ")]
    assert phases[0] == "general-importance"
    assert {"general-importance", "train", "domain-importance", "saving"} <= set(phases)
    assert any(line.startswith("legal train 3/3") for line in lines)


def test_a_queued_job_says_what_it_waits_for(tmp_path):
    from job_records import waiting_for
    from job_records.job import PredictRequest

    records = SqliteJobs(tmp_path / "jobs.sqlite")
    first = records.create(AdaptRequest("legal", "a" * 64, 10, {}))
    batch = records.create(PredictRequest("b" * 64, 100))
    fit = records.create(FitRequest("topic", "g1", "c" * 64, 20))

    def pending():
        return [j for state in ("queued", "running") for j in records.list(where=JobFilter(state=state))]

    assert waiting_for(records.get(first.id), pending()).startswith("a worker to take it")
    records.update(first.id, state="running", progress={"phase": "train", "step": 3, "total": 10})
    # the fit was accepted after the batch prediction but runs before it (batch predictions wait behind every
    # adaptation and fit)
    assert waiting_for(records.get(fit.id), pending()) == f"running adapt job {first.id[:8]} (legal, train 3/10)"
    assert waiting_for(records.get(batch.id), pending()) == (f"running adapt job {first.id[:8]} (legal, train 3/10) "
                                                             "and 1 more ahead of it")
    assert waiting_for(records.get(first.id), pending()) is None  # running: it waits for nothing
    records.update(first.id, state="succeeded")
    records.update(fit.id, error="waiting: the store's ACTIVE pointer is damaged")
    assert waiting_for(records.get(fit.id), pending()) == "the store's ACTIVE pointer is damaged"
