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
