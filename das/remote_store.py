"""`das --url URL show|card|importance|alias ...`: a server's versions, with the command lines of the store's
commands (das/store_cli.py, das/alias_cli.py), through `das_client`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from model_store.aliases import PRODUCTION

from .console import console
from .remote_connection import connected

remote_alias_app = typer.Typer(help="Aliases on the server (--url): names for versions (production is the active "
                                    "version).", no_args_is_help=True)


def show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="version id, e.g. v0002")]) -> None:
    """Print one version's manifest as the server (--url) has it (JSON, with its aliases)."""
    with connected(ctx) as client:
        typer.echo(json.dumps(client.version(version).raw, indent=2, sort_keys=True))


def card(ctx: typer.Context, version: Annotated[str, typer.Argument(help="version id, e.g. v0002")]) -> None:
    """Print one version's model card from the server (--url): the README.md of its folder, Markdown with YAML
    front matter."""
    with connected(ctx) as client:
        typer.echo(client.card(version), nl=False)


def importance(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="version id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    png: Annotated[Path | None, typer.Option(help="write heatmaps (cumulative and added) to this PNG")] = None,
    diff: Annotated[str | None, typer.Option(help="compare with another version's cumulative importance")] = None,
) -> None:
    """Per-layer importance of a version on the server (--url): summary, difference to another version, heatmaps."""
    with connected(ctx) as client:
        report = client.importance(version, diff=diff)
        if png is not None:
            png.write_bytes(client.importance_png(version))
            console.print(f"wrote {png}", soft_wrap=True)
    if as_json or png is None:
        typer.echo(json.dumps(report, indent=2))


@remote_alias_app.command("set")
def set_alias(ctx: typer.Context,
              name: Annotated[str, typer.Argument(help="the alias, e.g. staging (production activates)")],
              version: Annotated[str, typer.Argument(help="the version id it names, e.g. v0003")]) -> None:
    """Point an alias at a version on the server (--url; an alias that exists moves); `production` activates it."""
    with connected(ctx) as client:
        change = client.set_alias(name, version)
    if name == PRODUCTION:
        console.print(f"{change.version} is active")
        for job_id in change.fit_jobs:
            console.print(f"  fit job {job_id} queued")
        return
    moved = change.previous and change.previous != change.version
    console.print(f"{name} -> {change.version}" + (f" (was {change.previous})" if moved else ""))


@remote_alias_app.command("rm")
def remove_alias(ctx: typer.Context,
                 name: Annotated[str, typer.Argument(help="the alias to remove (not production)")]) -> None:
    """Remove an alias on the server (--url); the version stays."""
    with connected(ctx) as client:
        version = client.aliases().get(name)
        client.delete_alias(name)
    console.print(f"removed {name}" + (f" (it named {version})" if version else ""))


@remote_alias_app.command("ls")
def list_aliases(ctx: typer.Context,
                 as_json: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False) -> None:
    """Every alias on the server (--url) with its version (production is the active version)."""
    with connected(ctx) as client:
        aliases = client.aliases()
    if as_json:
        typer.echo(json.dumps(aliases, indent=2))
        return
    for name, version in aliases.items():
        typer.echo(f"{name}\t{version}")
