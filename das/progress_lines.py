"""Progress of a long local command (`das adapt`, `das base build`, `das eval`): a rich bar on a terminal, and off
one (a log file, a pipe, CI) a plain line at each phase change and at least every DAS_PROGRESS_EVERY_S seconds, so
a redirected run is never silent until its last line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


class PlainLines:
    """One line per phase change, per `every_s` seconds while a phase runs, and the phase's last unit."""

    def __init__(self, console: Console, label: str, every_s: float) -> None:
        self.console, self.label, self.every_s = console, label, every_s
        self._phase: str | None = None
        self._written = 0.0

    def update(self, phase: str, step: int, total: int, *, loss: float | None = None, eta_s: float | None = None,
               detail: str = "") -> None:
        now = time.monotonic()
        last = total > 0 and step >= total
        if phase == self._phase and not last and now - self._written < self.every_s:
            return
        self._phase, self._written = phase, now
        parts = [self.label, phase] if self.label else [phase]
        if total:
            parts.append(f"{step}/{total}")
        if detail:
            parts.append(detail)
        if loss is not None:
            parts.append(f"loss {loss:.3f}")
        if eta_s is not None and not last:
            minutes, seconds = divmod(int(round(eta_s)), 60)
            parts.append(f"ETA {minutes}:{seconds:02d}")
        self.console.print(" ".join(parts), soft_wrap=True, highlight=False, markup=False)


Update = Callable[..., None]  # update(phase, step, total, loss=..., eta_s=..., detail=...)


@contextmanager
def progress_lines(console: Console, label: str, every_s: float, columns: tuple[Any, ...] = ()) -> Iterator[Update]:
    """`update(phase, step, total, loss=, eta_s=, detail=)` for the caller's progress: a rich bar (with `columns`
    besides phase, bar, percent and time left) where `console` is a terminal, plain lines elsewhere."""
    if not console.is_terminal:
        yield PlainLines(console, label, every_s).update
        return
    bar = Progress(TextColumn(f"[bold]{label}[/] {{task.description}}" if label else "{task.description}"),
                   BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[tail]}"), *columns,
                   TimeRemainingColumn(), console=console)
    task = bar.add_task("starting", total=None, tail="")

    def update(phase: str, step: int, total: int, *, loss: float | None = None, eta_s: float | None = None,
               detail: str = "") -> None:
        tail = " ".join(part for part in (detail, f"loss {loss:.3f}" if loss is not None else "") if part)
        bar.update(task, description=phase, completed=step, total=total or None, tail=tail)

    with bar:
        yield update


def engine_reporter(update: Update) -> Callable[[Any], None]:
    """An engine or pipeline `Progress` report (das_engine.run_state.Progress) as an update."""
    def report(p: Any) -> None:
        detail = p.detail or (f"{p.tokens_per_s:,.0f} tok/s" if p.tokens_per_s else "")
        update(p.phase, p.step, p.total, loss=p.losses.get("loss"), eta_s=p.eta_s, detail=detail)
    return report
