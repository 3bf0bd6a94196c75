"""Prometheus metrics: request latency, batch sizes, queue depth, active version, jobs, training progress."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

from job_records import STATES


class Metrics:
    def __init__(self, service) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("das_request_seconds", "HTTP request latency", ["route", "method", "status"],
                                 registry=self.registry)
        self.batch_size = Histogram("das_batch_size", "texts per inference batch", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)


class _ServiceCollector:
    """Read at scrape time: nothing to keep in sync."""

    def __init__(self, service) -> None:
        self.service = service

    def collect(self):
        queue = GaugeMetricFamily("das_inference_queue_depth", "inference requests waiting for the model")
        queue.add_metric([], self.service.batcher.depth())
        yield queue
        active = GaugeMetricFamily("das_active_version", "1 for the version this process serves", labels=["version"])
        if self.service.holder.current is not None:
            active.add_metric([self.service.holder.current.version], 1)
        yield active
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
