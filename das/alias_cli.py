"""`das alias ...`: names for versions in a store, without a server (the same aliases as /v1/aliases)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from model_store.aliases import PRODUCTION, AliasStore
from model_store.locks import StoreLocked
from model_store.names import InvalidName
from model_store.store import StoreError

from .console import StoreOption, console, existing_store, fail
from .store_cli import activate  # the activation, with its end-task fits

alias_app = typer.Typer(help="Aliases: names for versions (production is the active version).", no_args_is_help=True)


@alias_app.command("set")
def set_alias(name: Annotated[str, typer.Argument(help="the alias, e.g. staging (production activates)")],
              version: Annotated[str, typer.Argument(help="the version id it names, e.g. v0003")],
              store: StoreOption = None) -> None:
    """Point an alias at a version (an alias that exists moves); `production` is `das activate VERSION`."""
    if name == PRODUCTION:
        activate(version, store)
        return
    try:
        previous = AliasStore(existing_store(store)).set(name, version)
    except (StoreError, StoreLocked, InvalidName) as err:
        fail(str(err))
    console.print(f"{name} -> {version}" + (f" (was {previous})" if previous and previous != version else ""))


@alias_app.command("rm")
def remove_alias(name: Annotated[str, typer.Argument(help="the alias to remove (not production)")],
                 store: StoreOption = None) -> None:
    """Remove an alias; the version stays."""
    try:
        version = AliasStore(existing_store(store)).remove(name)
    except (StoreError, StoreLocked, InvalidName) as err:
        fail(str(err))
    console.print(f"removed {name} (it named {version})")


@alias_app.command("ls")
def list_aliases(store: StoreOption = None,
                 as_json: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False) -> None:
    """Every alias with its version (production is the active version)."""
    try:
        aliases = AliasStore(existing_store(store)).all()
    except StoreError as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(aliases, indent=2))
        return
    for name, version in aliases.items():
        typer.echo(f"{name}\t{version}")
