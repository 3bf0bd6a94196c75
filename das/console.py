"""What every `das` command prints to stderr, and how a command fails: one red line, exit code 2."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """An error the user can fix: one line, no traceback, exit code 2."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def os_problem(err: OSError, fix: str) -> str:
    """An OSError as one line that names the file and says what to do: 'PATH: Permission denied; FIX'."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or str(err)
    return f"{where}: {reason}; {fix}" if where else f"{reason}; {fix}"
