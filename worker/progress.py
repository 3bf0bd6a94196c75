"""A job's progress in its record, written at most twice a second; and its cancel flag, read back."""

from __future__ import annotations

import time

from das_engine.run_state import Progress

from .context import WorkerContext


class ProgressReporter:
    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.last_write = 0.0
        self.cancelled = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last_write < 0.5 and p.phase == "train" and p.step < p.total:
            return
        self.last_write = now
        self.ctx.jobs.update(self.job_id, progress={
            "phase": p.phase, "step": p.step, "total": p.total, "losses": p.losses,
            "tokens_per_s": round(p.tokens_per_s, 1), "eta_s": None if p.eta_s is None else round(p.eta_s, 1)})

    def should_stop(self) -> bool:
        job = self.ctx.jobs.get(self.job_id)
        self.cancelled = bool(job and job.cancel_requested)
        return self.cancelled or self.ctx.stop.is_set()
