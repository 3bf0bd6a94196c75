"""A job named by a prefix of its id: both registries (SQLite and a real Redis) find the ids that start with it, and
`resolve_job` turns a whole id or a unique prefix of 6+ hex characters into the job, refusing the rest.

Ids are uuid4 hex; to make two share a prefix, the ids of the records are crafted (uuid4 is made to give them)."""

from __future__ import annotations

import uuid

import pytest

import job_records.job
from job_records import AdaptRequest, AmbiguousJobId, JobIdError, RedisJobs, SqliteJobs, resolve_job

CRAFTED = ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "abcdee" + "f" * 26, "abcdf0" + "0" * 26,
           "0123456789" + "a" * 22]


@pytest.fixture(params=["sqlite", "redis"])
def jobs(request, tmp_path, redis_url, monkeypatch):
    """A registry of one job per CRAFTED id, in that order."""
    registry = (SqliteJobs(tmp_path / "jobs.sqlite") if request.param == "sqlite"
                else RedisJobs(redis_url, prefix=f"dastest-{uuid.uuid4().hex[:8]}:"))
    ids = iter(CRAFTED)
    monkeypatch.setattr(job_records.job.uuid, "uuid4", lambda: uuid.UUID(hex=next(ids)))
    for _ in CRAFTED:
        registry.create(AdaptRequest("legal", "a" * 64, 10, {}))
    return registry


def test_find_prefix_lists_exactly_the_ids_that_start_with_it(jobs):
    assert jobs.find_prefix("abcdef") == sorted(CRAFTED[:2])  # not abcdee... below, nor abcdf0... above
    assert jobs.find_prefix("abcde") == sorted(CRAFTED[:3])
    assert jobs.find_prefix("abcdef02") == [CRAFTED[1]]
    assert jobs.find_prefix("fedcba") == []
    assert len(jobs.find_prefix("abcd", limit=2)) == 2  # bounded


@pytest.mark.parametrize("given, expected", [
    ("abcdef01", CRAFTED[0]),  # the 8 characters a list prints
    ("abcdef02", CRAFTED[1]),
    ("ABCDEF01", CRAFTED[0]),  # any case
    ("abcdee", CRAFTED[2]),  # 6 characters are enough when they are unique
    ("012345", CRAFTED[4]),
    (CRAFTED[3], CRAFTED[3]),  # the whole id
    ("fedcba98", None),  # no such job
    ("abcdef03", None),
])
def test_a_whole_id_or_a_unique_prefix_names_the_job(jobs, given, expected):
    found = resolve_job(jobs, given)
    assert (found.id if found else None) == expected


def test_a_shared_prefix_names_its_candidates(jobs):
    with pytest.raises(AmbiguousJobId) as shared:
        resolve_job(jobs, "abcdef")
    assert shared.value.candidates == sorted(CRAFTED[:2])
    assert CRAFTED[0] in str(shared.value) and CRAFTED[1] in str(shared.value)
    assert "more characters" in str(shared.value)


@pytest.mark.parametrize("given", ["abcde", "a", "", "abcdeg12", "zzzzzzzz", "abc-def0", "%abcdef*"])
def test_too_short_or_not_hex_is_refused_with_the_rule(jobs, given):
    with pytest.raises(JobIdError, match="at least its first 6 characters"):
        resolve_job(jobs, given)
