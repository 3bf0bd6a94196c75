"""Job registries, SQLite (embedded) and Redis (distributed), against one table of behaviours."""

import time
import uuid

import pytest

from job_records import AdaptRequest, FitRequest, RedisJobs, SqliteJobs
from job_records.job import PredictRequest


@pytest.fixture(params=["sqlite", "redis"])
def jobs(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return SqliteJobs(tmp_path / "jobs.sqlite")
    return RedisJobs(redis_url, prefix=f"dastest-{uuid.uuid4().hex[:8]}:")


def test_jobs_are_numbered_listed_and_updated(jobs):
    a = jobs.create(AdaptRequest("legal", "a" * 64, 10, {"steps": 5}))
    b = jobs.create(AdaptRequest("code", "b" * 64, 20, {"steps": 6}))
    assert (a.seq, b.seq, a.state) == (1, 2, "queued")
    assert [j.id for j in jobs.list()] == [b.id, a.id]  # newest first
    updated = jobs.update(a.id, state="running", progress={"step": 3, "total": 5})
    assert jobs.get(a.id) == updated and updated.progress["step"] == 3
    assert jobs.get("missing") is None
    with pytest.raises(KeyError):
        jobs.update("missing", state="failed")
    with pytest.raises(ValueError, match="unknown job fields"):
        jobs.update(a.id, colour="red")


def test_earliest_pending_follows_acceptance_order(jobs):
    a, b, c = (jobs.create(AdaptRequest("d", "c" * 64, 1, {})) for _ in range(3))
    assert jobs.earliest_pending().id == a.id
    jobs.update(a.id, state="running")
    assert jobs.earliest_pending().id == a.id
    jobs.update(a.id, state="succeeded")
    jobs.update(b.id, state="cancelled")
    assert jobs.earliest_pending().id == c.id
    jobs.update(c.id, state="failed")
    assert jobs.earliest_pending() is None


def test_class5_batch_jobs_cannot_starve_adaptations_the_lane(jobs):
    """A batch prediction waits behind every adaptation and fit, even one accepted after it (running or not)."""
    batch = jobs.create(PredictRequest("e" * 64, 10_000, "embed"))
    assert jobs.earliest_pending().id == batch.id
    jobs.update(batch.id, state="running")
    adapt = jobs.create(AdaptRequest("d", "c" * 64, 1, {}))
    fit = jobs.create(FitRequest("task", "g1", "f" * 64, 10))
    later_batch = jobs.create(PredictRequest("e" * 64, 10, "embed"))
    assert jobs.earliest_pending().id == adapt.id
    jobs.update(adapt.id, state="succeeded")
    assert jobs.earliest_pending().id == fit.id
    jobs.update(fit.id, state="failed")
    assert jobs.earliest_pending().id == batch.id  # then the batches, in acceptance order
    jobs.update(batch.id, state="succeeded")
    assert jobs.earliest_pending().id == later_batch.id


def test_a_lease_has_one_owner_until_it_lapses(jobs):
    job = jobs.create(AdaptRequest("d", "d" * 64, 1, {}))
    assert jobs.claim(job.id, "worker-a", ttl_s=60)  # a lease that cannot lapse during the test
    assert jobs.claim(job.id, "worker-a", ttl_s=60)  # a heartbeat renews it
    assert not jobs.claim(job.id, "worker-b", ttl_s=60)
    assert jobs.claim(job.id, "worker-a", ttl_s=0.2)  # worker-a's last heartbeat, then it dies
    time.sleep(0.5)  # its lease lapses (a sleep is never shorter than asked, however busy the machine)
    assert jobs.claim(job.id, "worker-b", ttl_s=5)
    jobs.release(job.id, "worker-a")  # not the owner: nothing happens
    assert not jobs.claim(job.id, "worker-a", ttl_s=5)
    jobs.release(job.id, "worker-b")
    assert jobs.claim(job.id, "worker-a", ttl_s=5)


def test_a_pending_job_held_by_no_worker_is_queued_again(jobs):
    from worker.redelivery import redeliver_stalled

    sent: list[str] = []
    a, b = jobs.create(AdaptRequest("d", "a" * 64, 1, {})), jobs.create(AdaptRequest("d", "b" * 64, 1, {}))
    jobs.update(a.id, dispatched=100.0)
    assert redeliver_stalled(jobs, sent.append, after_s=30, now=120.0) is None  # queued 20 s ago: give it time
    assert redeliver_stalled(jobs, sent.append, after_s=30, now=140.0) == a.id  # the earliest, not b
    assert jobs.get(a.id).dispatched == 140.0
    assert jobs.claim(a.id, "worker-1", ttl_s=60)
    assert redeliver_stalled(jobs, sent.append, after_s=30, now=time.time() + 1000) is None  # a worker holds it
    assert sent == [a.id] and b.id not in sent


def test_each_store_keeps_its_own_job_records(tmp_path, monkeypatch):
    """Embedded mode: two stores used from one work folder list their own jobs, whatever the path's spelling."""
    from das_settings import Settings
    from worker.runtime import job_registry

    monkeypatch.chdir(tmp_path)
    first = Settings(store="store-a", work_dir=tmp_path / "work")
    second = Settings(store="store-b", work_dir=tmp_path / "work")
    job = job_registry(first).create(AdaptRequest("legal", "a" * 64, 10, {}))
    assert [j.id for j in job_registry(first).list()] == [job.id]
    assert job_registry(second).list() == []
    again = Settings(store=str(tmp_path / "store-a" / ".." / "store-a"), work_dir=tmp_path / "work")
    assert [j.id for j in job_registry(again).list()] == [job.id]
