"""A job's progress as one line of text: state, phase, a bar, step/total, loss, ETA (what `Client.wait` shows)."""

from __future__ import annotations

import sys
from typing import TextIO

from .models import Job

BAR_WIDTH = 24


def progress_line(job: Job) -> str:
    """E.g. 'job 3f2a9c1e running train [#########...............] 12/30 loss 2.314 ETA 0:41'."""
    parts = [f"job {job.id[:8]}", job.state]
    p = job.progress
    if p.phase and not job.done:
        parts.append(p.phase)
    if p.total and p.step is not None:
        filled = min(BAR_WIDTH, round(BAR_WIDTH * p.step / p.total))
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {p.step}/{p.total}")
    if "loss" in p.losses:
        parts.append(f"loss {p.losses['loss']:.3f}")
    if p.eta_s is not None and not job.done:
        minutes, seconds = divmod(int(round(p.eta_s)), 60)
        parts.append(f"ETA {minutes}:{seconds:02d}")
    if job.done:
        parts.append(_outcome(job))
    return " ".join(parts)


def _outcome(job: Job) -> str:
    if job.version:
        return f"-> {job.version}" + (f" ({job.error or job.note})" if not job.succeeded else "")
    return f"({job.error or job.note})" if (job.error or job.note) else ""


class ProgressBar:
    """Redraws its line in place on a terminal; elsewhere (a log, a pipe) writes a line when the state or the
    phase changes, and the last one."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty()
        self._shown = ""
        self._stage: tuple[str, str | None] | None = None

    def update(self, job: Job) -> None:
        line = progress_line(job)
        if self.in_place:
            self.stream.write("\r" + line.ljust(len(self._shown)))
        elif (job.state, job.progress.phase) != self._stage or job.done:
            self.stream.write(line + "\n")
        self._shown, self._stage = line, (job.state, job.progress.phase)
        self.stream.flush()

    def close(self) -> None:
        if self.in_place and self._shown:
            self.stream.write("\n")
            self.stream.flush()
