"""Job records in distributed mode: a JSON record per job in Redis, sorted sets by `seq`, a lease key per job."""

from __future__ import annotations

from typing import Any

from .job import TERMINAL, Job, JobFilter, JobRequest, apply_fields, new_job, pending_rank

_EXTEND_IF_OWNER = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")
_DELETE_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
LIST_BATCH = 500  # records read per round trip while a filtered listing looks for matches
PREFIX_SCAN_BATCH = 1000  # ids a ZSCAN looks at per round trip while it looks for a prefix


class RedisJobs:
    """Distributed mode: a JSON record per job, a sorted set by `seq`, and a lease key per job."""

    def __init__(self, redis_url: str, prefix: str = "das:") -> None:
        import redis

        # fail fast when Redis is away: the API answers 503 rather than hang
        self.r = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
        self.PREFIX = prefix

    def _key(self, job_id: str) -> str:
        return f"{self.PREFIX}job:{job_id}"

    def create(self, request: JobRequest) -> Job:
        job = new_job(int(self.r.incr(f"{self.PREFIX}jobs:seq")), request)
        pipe = self.r.pipeline()
        pipe.set(self._key(job.id), job.to_json())
        pipe.zadd(f"{self.PREFIX}jobs", {job.id: job.seq})
        pipe.zadd(f"{self.PREFIX}jobs:pending", {job.id: pending_rank(job)})
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.r.get(self._key(job_id))
        return Job.from_json(raw) if raw else None

    def find_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids that start with `prefix` (hex: no glob characters), sorted: a ZSCAN of the registry's own index of ids
        (not the keyspace), a batch at a time, that stops once `limit` are found."""
        found: set[str] = set()
        for member, _ in self.r.zscan_iter(f"{self.PREFIX}jobs", match=f"{prefix}*", count=PREFIX_SCAN_BATCH):
            found.add(member.decode())  # ZSCAN may return an element twice
            if len(found) >= limit:
                break
        return sorted(found)[:limit]

    def list(self, limit: int = 100, *, where: JobFilter | None = None, before_seq: int | None = None) -> list[Job]:
        """Walk the sorted set down from `before_seq`, a batch at a time, keeping the records `where` matches; each
        batch starts below the last seq read, so jobs accepted meanwhile neither repeat nor shift the walk."""
        where = where or JobFilter()
        batch = limit if where.empty else max(limit, LIST_BATCH)
        top: str = "+inf" if before_seq is None else f"({before_seq}"
        found: list[Job] = []
        while len(found) < limit:
            entries = self.r.zrevrangebyscore(f"{self.PREFIX}jobs", top, "-inf", start=0, num=batch, withscores=True)
            if not entries:
                break
            raws = self.r.mget([self._key(i.decode()) for i, _ in entries])
            found += [job for job in (Job.from_json(r) for r in raws if r) if where.matches(job)]
            top = f"({int(entries[-1][1])}"
        return found[:limit]

    def update(self, job_id: str, **fields: Any) -> Job:
        key = self._key(job_id)
        result: list[Job] = []

        def change(pipe) -> None:  # optimistic transaction: retried if the record changed meanwhile
            raw = pipe.get(key)
            if raw is None:
                raise KeyError(job_id)
            job = apply_fields(Job.from_json(raw), fields)
            pipe.multi()
            pipe.set(key, job.to_json())
            if job.state in TERMINAL:
                pipe.zrem(f"{self.PREFIX}jobs:pending", job_id)
            result[:] = [job]

        self.r.transaction(change, key)
        return result[0]

    def earliest_pending(self) -> Job | None:
        first = self.r.zrange(f"{self.PREFIX}jobs:pending", 0, 0)
        return self.get(first[0].decode()) if first else None

    def claim(self, job_id: str, owner: str, ttl_s: float) -> bool:
        lease = f"{self.PREFIX}job-lease:{job_id}"
        if self.r.set(lease, owner, nx=True, px=int(ttl_s * 1000)):
            return True
        # our own lease (a heartbeat): extend it only if we still hold it
        return bool(self.r.eval(_EXTEND_IF_OWNER, 1, lease, owner, int(ttl_s * 1000)))

    def lease_alive(self, job_id: str) -> bool:
        return bool(self.r.exists(f"{self.PREFIX}job-lease:{job_id}"))

    def ping(self) -> None:
        self.r.ping()

    def release(self, job_id: str, owner: str) -> None:
        self.r.eval(_DELETE_IF_OWNER, 1, f"{self.PREFIX}job-lease:{job_id}", owner)
