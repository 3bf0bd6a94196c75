"""A job's progress in its record: the phase it is in, step of total, and the seconds each phase took; and its
cancel flag, read back.

A record is written at every phase change and at a phase's last unit, otherwise at most twice a second. The seconds
of each phase (`Job.phases_s`) add up over attempts (a resumed job goes on counting) and start with `queued`: from
acceptance to the first start.
"""

from __future__ import annotations

import time

from das_engine.run_state import Progress

from .context import WorkerContext

WRITE_EVERY_S = 0.5


class ProgressReporter:
    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.last_write = 0.0
        self.cancelled = False
        job = ctx.jobs.get(job_id)
        self.phases_s: dict[str, float] = dict(job.phases_s) if job is not None else {}
        if job is not None and job.started is not None and "queued" not in self.phases_s:
            self.phases_s["queued"] = round(max(0.0, job.started - job.created), 3)
        self.phase: str | None = None
        self.phase_started = time.monotonic()

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        changed = p.phase != self.phase
        if changed:
            self._close_phase(now)
            self.phase, self.phase_started = p.phase, now
        elif now - self.last_write < WRITE_EVERY_S and p.step < p.total:
            return
        self.last_write = now
        self.ctx.jobs.update(self.job_id, phases_s=dict(self.phases_s), progress={
            "phase": p.phase, "step": p.step, "total": p.total, "losses": p.losses, "detail": p.detail,
            "tokens_per_s": round(p.tokens_per_s, 1), "eta_s": None if p.eta_s is None else round(p.eta_s, 1)})

    def finish(self) -> None:
        """The attempt ended (however): the seconds of the phase it was in go into the record."""
        if self.phase is not None:
            self._close_phase(time.monotonic())
            self.phase = None
            self.ctx.jobs.update(self.job_id, phases_s=dict(self.phases_s))

    def _close_phase(self, now: float) -> None:
        if self.phase is not None:
            self.phases_s[self.phase] = round(self.phases_s.get(self.phase, 0.0) + now - self.phase_started, 3)

    def should_stop(self) -> bool:
        job = self.ctx.jobs.get(self.job_id)
        self.cancelled = bool(job and job.cancel_requested)
        return self.cancelled or self.ctx.stop.is_set()
