"""A job's progress as one line of text: state, phase, a bar, step/total, what it works on, loss, ETA (what
`Client.wait` shows), and where it goes: redrawn in place on a terminal, a line at a time elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .models import Job

BAR_WIDTH = 24
PROGRESS_EVERY_S = 30.0  # off a terminal (a log, a pipe, CI): a line at least this often while a job runs


def progress_line(job: Job) -> str:
    """E.g. 'job 3f2a9c1e running train [#########...............] 12/30 loss 2.314 ETA 0:41'."""
    parts = [f"job {job.id[:8]}", job.state]
    p = job.progress
    if p.phase and not job.done:
        parts.append(p.phase)
    if p.total and p.step is not None and not job.done:
        filled = min(BAR_WIDTH, round(BAR_WIDTH * p.step / p.total))
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {p.step}/{p.total}")
    if p.detail and not job.done:
        parts.append(p.detail)
    if "loss" in p.losses:
        parts.append(f"loss {p.losses['loss']:.3f}")
    if p.eta_s is not None and not job.done:
        minutes, seconds = divmod(int(round(p.eta_s)), 60)
        parts.append(f"ETA {minutes}:{seconds:02d}")
    if job.state == "queued" and job.waiting_for:
        parts.append(f"waiting for {job.waiting_for}")
    if job.done:
        parts.append(_outcome(job))
    return " ".join(parts)


def phases_line(job: Job) -> str:
    """The seconds of each phase, e.g. 'queued 0.4 s, prepare 1.2 s, train 40.1 s, gate 12.0 s' ('' if none)."""
    return ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in job.phases_s.items())


def _outcome(job: Job) -> str:
    if job.version:
        return f"-> {job.version}" + (f" ({job.error or job.note})" if not job.succeeded else "")
    return f"({job.error or job.note})" if (job.error or job.note) else ""


class ProgressBar:
    """Redraws its line in place on a terminal; elsewhere (a log, a pipe) writes a line when the state or the
    phase changes, at least every `every_s` seconds while nothing changes, and the last one."""

    def __init__(self, stream: TextIO | None = None, every_s: float = PROGRESS_EVERY_S) -> None:
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty()
        self.every_s = every_s
        self._shown = ""
        self._stage: tuple[str, str | None] | None = None
        self._written = 0.0  # time.monotonic() of the last line written off a terminal

    def update(self, job: Job) -> None:
        self._show(progress_line(job), (job.state, job.progress.phase), job.done)

    def serving(self, job: Job, served: str | None) -> None:
        """The job ended; the server is swapping its version in (served: what it answers with now)."""
        if served == job.version:
            self._show(f"job {job.id[:8]} serving {job.version}", ("serving", job.version), True)
        else:
            self._show(f"job {job.id[:8]} {job.state} -> {job.version}, swap: the server answers with {served} yet",
                       ("swap", served), False)

    def _show(self, line: str, stage: tuple[str, str | None], last: bool) -> None:
        now = time.monotonic()
        if self.in_place:
            self.stream.write("\r" + line.ljust(len(self._shown)))
        elif stage != self._stage or last or now - self._written >= self.every_s:
            self.stream.write(line + "\n")
            self._written = now
        self._shown, self._stage = line, stage
        self.stream.flush()

    def close(self) -> None:
        if self.in_place and self._shown:
            self.stream.write("\n")
            self.stream.flush()
