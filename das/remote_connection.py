"""What the `das --url URL ...` commands share: the client of the server the root command names (its errors as one
line), the options a user gave, texts from arguments or a file, and the wide tables they print."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from .console import fail, os_problem

if TYPE_CHECKING:  # das_client (httpx) is imported when a command talks to a server, not for every `das` command
    from das_client import Client

STDIN = "-"


@contextmanager
def connected(ctx: typer.Context) -> Iterator[Client]:
    """A client of the server named by `das --url` / $DAS_URL; its errors become one red line and exit code 2."""
    from das_client import Client, DasClientError, Unauthorized

    root = ctx.find_root().params
    name = ctx.command_path.split(" ", 1)[-1]  # `task add`, not just `add`
    if not root.get("url"):
        fail(f"`das {name}` talks to a server: give its address as `das --url URL {name} ...` or set DAS_URL")
    try:
        with Client(root["url"], token=root.get("token")) as client:
            yield client
    except Unauthorized as err:
        fail(f"{err} (pass --token or set DAS_TOKEN)")
    except OSError as err:  # a file the command reads or writes
        fail(os_problem(err, "check the path"))
    except (DasClientError, ValueError) as err:
        fail(str(err))


def parameter_source(ctx: typer.Context, name: str) -> str | None:
    """Where a parameter's value came from: COMMANDLINE, ENVIRONMENT, DEFAULT, ... (None: not parsed yet)."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The settings among `values` that the user gave: only those are sent, the server's defaults apply to the rest."""
    return {name: value for name, value in values.items() if parameter_source(ctx, name) not in (None, "DEFAULT")}


def read_texts(texts: list[str] | None, file: Path | None) -> list[str]:
    """The texts of a command: its arguments, then the lines of `file` (`-`: standard input; blank lines skipped)."""
    found = list(texts or [])
    if file is not None:
        where = "standard input" if str(file) == STDIN else str(file)
        try:
            raw = sys.stdin.read() if str(file) == STDIN else file.read_text(encoding="utf-8")
        except OSError as err:
            fail(os_problem(err, "check --file"))
        except UnicodeDecodeError as err:
            fail(f"{where} is not UTF-8 text (byte {err.start}); give one UTF-8 text per line")
        found += [line for line in raw.splitlines() if line.strip()]
    if not found:
        fail(f"no texts: give them as arguments, or --file FILE with one text per line ({STDIN} reads standard input)")
    return found


def print_table(table: Table) -> None:
    """A table at least 120 columns wide, so that ids and scores are not cut on a narrow terminal or in a pipe."""
    Console(width=max(Console().width, 120)).print(table)


def answers_table(texts: list[str], rows: list[dict[str, Any]], version: str) -> Table:
    """Per text and task: the label and its score (`rows`: per text, the TaskAnswer of each task)."""
    table = Table("text", "task", "label", "score", title=f"answered by {version}")
    for text, answers in zip(texts, rows, strict=True):
        for name, answer in answers.items():
            table.add_row(text if len(text) <= 60 else text[:57] + "...", name, answer.label,
                          f"{answer.scores.get(answer.label, 0.0):.3f}")
    return table
