"""run_job: a job runs on the corpus and parent its record holds; only transient failures retry."""

from __future__ import annotations

import pytest

from das_formats.config import DASConfig
from job_records import AdaptRequest, SqliteJobs
from model_store.locks import StoreLocked
from model_store.store import ModelStore
from pipeline.adaptation import adapt_active
from worker import jobs
from worker.context import Outcome, WorkerContext

SMALL = DASConfig(steps=3, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, lr=1e-3)


@pytest.fixture
def ctx(tmp_path, roberta_dir) -> WorkerContext:
    store = ModelStore.open(tmp_path / "store")
    store.init_base(roberta_dir, "tiny-roberta")
    return WorkerContext(store=store, jobs=SqliteJobs(tmp_path / "jobs.sqlite"), work_dir=tmp_path / "work",
                         heartbeat_s=0.5, max_attempts=3)


def _job(ctx: WorkerContext, corpus_file, **fields):
    info = ctx.store.blobs.put_corpus(corpus_file, 60, filename="notes.txt")
    job = ctx.jobs.create(AdaptRequest("legal", info.sha256, 60, SMALL.to_dict(), info.filename))
    return ctx.jobs.update(job.id, **fields) if fields else job


def test_a_job_publishes_from_the_corpus_and_parent_in_its_record(ctx, corpus_file):
    job = _job(ctx, corpus_file)
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert (done.state, done.parent, done.version, done.attempts) == ("succeeded", "v0001", "v0002", 1)
    manifest = ctx.store.manifest("v0002")
    assert manifest.parent == "v0001" and manifest.request_id == job.id
    assert manifest.corpus.sha256 == job.corpus_id and manifest.corpus.filename == "notes.txt"


def test_a_job_keeps_the_parent_it_started_from(ctx, corpus_file, tmp_path):
    """The active version moved after the job started: it builds on its own parent and leaves the
    operator's choice active, publishing a candidate (and says so), without burning attempts."""
    job = _job(ctx, corpus_file, parent="v0001")
    adapt_active(ctx.store, corpus_file, "other", SMALL, work_dir=tmp_path / "other-work")  # v0002 becomes active
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert (done.state, done.attempts, done.parent, done.version) == ("succeeded", 1, "v0001", "v0003")
    assert "candidate" in done.note and "v0002" in done.note
    manifest = ctx.store.manifest("v0003")
    assert manifest.parent == "v0001" and manifest.status == "candidate" and ctx.store.active_id() == "v0002"


def test_only_transient_failures_are_retried(ctx, corpus_file, monkeypatch):
    job = _job(ctx, corpus_file)

    def busy(job, ctx, reporter):
        raise StoreLocked("another writer holds the lock")

    monkeypatch.setitem(jobs.JOB_KINDS, "adapt", busy)
    assert jobs.run_job(job.id, ctx) is Outcome.RETRY
    again = ctx.jobs.get(job.id)
    assert again.state == "queued" and again.attempts == 1 and "StoreLocked" in again.error

    def broken(job, ctx, reporter):
        raise RuntimeError("weights are NaN")

    monkeypatch.setitem(jobs.JOB_KINDS, "adapt", broken)
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert done.state == "failed" and done.attempts == 2 and done.error == "RuntimeError: weights are NaN"


def test_a_bad_setting_is_rejected_at_once(ctx, corpus_file):
    job = _job(ctx, corpus_file, settings={**SMALL.to_dict(), "steps": 0})
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert done.state == "rejected" and done.attempts == 1 and "DASConfig.steps" in done.error


def test_an_unknown_kind_of_job_fails_with_its_name(ctx, corpus_file):
    job = _job(ctx, corpus_file, kind="fit-task")
    assert jobs.run_job(job.id, ctx) is Outcome.DONE
    done = ctx.jobs.get(job.id)
    assert done.state == "failed" and "'fit-task'" in done.error
