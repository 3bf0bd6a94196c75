"""What every `das` command prints to stderr, and how a command fails: one red line, exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from das_data.base_models import BaseModelError
from das_formats.corpus import CorpusError
from model_store.locks import StoreLocked
from model_store.names import InvalidName
from model_store.store import StoreError

console = Console(stderr=True)
StoreOption = Annotated[str | None, typer.Option("--store", help="store folder or s3:// URL (default: $DAS_STORE)")]


def fail(message: str) -> NoReturn:
    """An error the user can fix: one line, no traceback, exit code 2."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def os_problem(err: OSError, fix: str) -> str:
    """An OSError as one line that names the file and says what to do: 'PATH: Permission denied; FIX'."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or str(err)
    return f"{where}: {reason}; {fix}" if where else f"{reason}; {fix}"


@contextmanager
def clear_errors() -> Iterator[None]:
    """Errors a user can fix become one line and exit code 2, not a traceback."""
    try:
        yield
    except (CorpusError, BaseModelError, StoreError, StoreLocked, InvalidName, ValueError) as err:
        fail(str(err))


def existing_store(location: str | None = None):
    """The store a command works on (--store, else $DAS_STORE): opening a local folder creates it, so one that does
    not exist is an error here, not an empty store made by a typo. (An s3:// store is opened as it is.)"""
    from das_settings import get_settings
    from worker.runtime import open_store

    where = location or get_settings().store
    if "://" not in where and not Path(where).is_dir():
        fail(f"no store at {where}: check --store or $DAS_STORE (`das serve` and `das adapt --store` create one)")
    return open_store(location=where)
