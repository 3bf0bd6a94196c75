"""Prometheus metrics: requests, batches, swaps, the served version, jobs, training progress, fits, the gate.

What this process does itself (requests, batches, swaps) is counted as it happens. What the workers do
(jobs, fits, the forgetting gate), possibly in other processes, is read at scrape time from the job
records and the store's manifests, so every API replica shows the same figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Receive, Scope, Send

from job_records import KINDS, STATES, Job
from model_store.store import StoreError, VersionNotFound

log = logging.getLogger(__name__)
SWAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
DECISIONS = ("accepted", "rejected")


class Metrics:
    def __init__(self, service) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("das_request_seconds", "HTTP request latency", ["route", "method", "status"],
                                 registry=self.registry)
        self.batch_size = Histogram("das_batch_size", "texts per inference batch", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.swaps = Counter("das_swaps", "versions this process loaded, warmed and swapped in (the first one too)",
                             registry=self.registry)
        self.swap_seconds = Histogram("das_swap_seconds", "seconds to load and warm a version before the swap",
                                      buckets=SWAP_BUCKETS, registry=self.registry)
        self.generation_batch = Histogram("das_generation_batch_size", "sequences per decode step of generation",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.generation_ended = Counter("das_generation_sequences_ended", "generated sequences that ended, by how: "
                                        "stop, length, timeout (length to the client), cancelled (the client left), "
                                        "failed", ["how"], registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def observe_generation_step(self, rows: int) -> None:
        self.generation_batch.observe(rows)

    def observe_generation_end(self, how: str) -> None:
        self.generation_ended.labels(how).inc()

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    def observe_swap(self, version: str, seconds: float) -> None:
        """ModelHolder.on_swap: one more version swapped in, and how long loading and warming it took."""
        self.swaps.inc()
        self.swap_seconds.observe(seconds)


class _ServiceCollector:
    """Read at scrape time: nothing to keep in sync."""

    def __init__(self, service) -> None:
        self.service = service
        self._gates: dict[str, list[tuple[str, str]]] = {}  # version -> its gate's (task, decision)

    def collect(self):
        queue = GaugeMetricFamily("das_inference_queue_depth", "inference requests waiting for the model")
        queue.add_metric([], self.service.batcher.depth())
        yield queue
        if self.service.generation is not None:
            running = GaugeMetricFamily("das_generation_running", "sequences decoding now")
            running.add_metric([], self.service.generation.running())
            yield running
            waiting = GaugeMetricFamily("das_generation_queue_depth", "generation requests waiting for a sequence")
            waiting.add_metric([], self.service.generation.depth())
            yield waiting
        active = GaugeMetricFamily("das_active_version", "1 for the version this process serves", labels=["version"])
        served = InfoMetricFamily("das_served_version", "the version this process serves")
        if self.service.holder.current is not None:
            active.add_metric([self.service.holder.current.version], 1)
            served.add_metric([], {"version": self.service.holder.current.version})
        yield active
        yield served
        try:
            jobs = self.service.jobs.list(limit=1000)
        except Exception:  # noqa: BLE001 - the job records are away: serve the other metrics
            return
        by_state = GaugeMetricFamily("das_jobs", "adaptation jobs by state (newest 1000)", labels=["state"])
        for state in STATES:
            by_state.add_metric([state], sum(j.state == state for j in jobs))
        yield by_state
        progress = GaugeMetricFamily("das_training_progress", "share of steps done of running jobs", labels=["job"])
        for job in jobs:
            if job.state == "running" and job.progress.get("total"):
                progress.add_metric([job.id], job.progress["step"] / job.progress["total"])
        yield progress
        queued = GaugeMetricFamily("das_jobs_queued", "jobs waiting for a worker, by kind (newest 1000)",
                                   labels=["kind"])
        for kind in KINDS:
            queued.add_metric([kind], sum(j.state == "queued" and j.kind == kind for j in jobs))
        yield queued
        yield fit_seconds(jobs)
        yield self._gate_decisions(jobs)

    def _gate_decisions(self, jobs: list[Job]) -> GaugeMetricFamily:
        """The gate's decisions per task over the versions the listed adaptation jobs published."""
        counts: dict[tuple[str, str], int] = {}
        versions = {j.version for j in jobs if j.kind == "adapt" and j.version and j.state in ("succeeded", "rejected")}
        for version in versions:
            for task, decision in self._decisions_of(version):
                counts[task, decision] = counts.get((task, decision), 0) + 1
        self._gates = {v: found for v, found in self._gates.items() if v in versions}  # only what the jobs list
        family = GaugeMetricFamily("das_gate_decisions", "forgetting-gate decisions per task over the versions "
                                   "that adaptation jobs published (newest 1000 jobs)", labels=["task", "decision"])
        for (task, decision), count in sorted(counts.items()):
            family.add_metric([task, decision], count)
        return family

    def _decisions_of(self, version: str) -> list[tuple[str, str]]:
        """(task, accepted|rejected) of the gate of one version, from its manifest, read once: the gate's record is
        written when the version is published and never changes."""
        if version not in self._gates:
            try:
                manifest = self.service.store.manifest(version)
            except VersionNotFound:  # collected by `das gc`: its decisions are gone with it
                self._gates[version] = []
                return []
            except (StoreError, OSError) as err:  # damaged or unreachable now: try again at the next scrape
                log.debug("metrics: cannot read the gate of %s: %s", version, err)
                return []
            self._gates[version] = list(gate_decisions(manifest.evaluation))
        return self._gates[version]


def gate_decisions(evaluation: dict) -> Iterable[tuple[str, str]]:
    """(task, accepted|rejected) of each decision a manifest's `evaluation.gate` records (docs/tasks.md)."""
    gate = evaluation.get("gate") if isinstance(evaluation, dict) else None
    for record in gate.get("decisions", []) if isinstance(gate, dict) else []:
        if isinstance(record, dict) and isinstance(record.get("task"), str):
            yield record["task"], DECISIONS[bool(record.get("rejected"))]


def fit_seconds(jobs: list[Job]) -> HistogramMetricFamily:
    """Seconds from start to end of the listed fit jobs that succeeded (their records' started..finished), by task."""
    by_task: dict[str, list[float]] = {}
    for job in jobs:
        if job.kind == "fit" and job.state == "succeeded" and job.started and job.finished:
            by_task.setdefault(job.task or "", []).append(job.finished - job.started)
    family = HistogramMetricFamily("das_fit_seconds", "seconds of end-task fit jobs that succeeded, by task "
                                   "(newest 1000 jobs)", labels=["task"])
    for task, seconds in sorted(by_task.items()):
        buckets = [(floatToGoString(bound), sum(s <= bound for s in seconds)) for bound in FIT_BUCKETS]
        family.add_metric([task], buckets + [("+Inf", len(seconds))], sum(seconds))
    return family


class TimingMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), {"code": 500}

        async def record(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(path, scope["method"], str(status["code"])).observe(time.perf_counter() - start)
