"""How a process's end is written for people: "exit status 1", "killed by SIGKILL". Job processes (worker) and
training ranks (das_engine.spawn_ranks) report their children's ends this way."""

from __future__ import annotations

import signal


def describe_exit(exitcode: int | None) -> str:
    """A child's exit code as Popen and multiprocessing give it (negative: the signal that killed it)."""
    if exitcode is None:
        return "it did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit status {exitcode}"
