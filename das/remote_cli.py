"""`das --url URL ...`: the CLI against a running server, through `das_client` (no HTTP here).

With --url (or $DAS_URL) the commands in `REMOTE_COMMANDS` ask that server; those that also work on a local store
(`SWITCHED`: versions, show, card, importance, activate, task ..., alias ...) switch to their server form, with the
same command line less --store; every other command works locally as always, and is refused when --url is given on
the command line (it would not do what the URL suggests), saying what to use instead. The server forms live in
remote_tasks.py (task ...), remote_store.py (show, card, importance, alias ...), remote_jobs.py (jobs, cancel) and
remote_generate.py (generate).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from das_settings import SettingsError, get_settings

from . import remote_generate, remote_jobs, remote_store
from .config_options import config_options
from .console import console, fail
from .remote_connection import answers_table, connected, read_texts
from .remote_tasks import FileOption, remote_task_app

if TYPE_CHECKING:  # das_client (httpx) is imported when a command talks to a server, not for every `das` command
    from das_client import Job, Version

REMOTE_COMMANDS = ("submit", "watch", "predict", "generate", "jobs", "cancel", "versions", "show", "card",
                   "importance", "activate", "task", "alias")
SWITCHED = ("versions", "show", "card", "importance", "activate", "task", "alias")  # local too: --url switches them
URL_HELP = (f"talk to the DAS server at URL (e.g. http://127.0.0.1:8000): {', '.join(REMOTE_COMMANDS)} then ask it "
            "instead of a local store")
GROUP_EPILOG = (f"With --url URL (or $DAS_URL), {', '.join(REMOTE_COMMANDS)} talk to that server (token: --token or "
                "$DAS_TOKEN), with the same command line less --store; see `das --url URL COMMAND --help`. Without "
                "it, every command works on a local store.")
INSTEAD = {  # a local command's nearest server form, or where to run it
    "adapt": "`das --url URL submit CORPUS --domain DOMAIN` uploads the corpus and the server adapts it",
    "gc": "the server has no route for it: run `das gc --store STORE` where the server's store is",
    "repair": "the server has no route for it: run `das repair --store STORE` where the server's store is",
    "export": "the server has no route for it: run `das export VERSION --store STORE` where the server's store is",
}

remote_app = typer.Typer(add_completion=False)


def server_options(
    url: Annotated[str | None, typer.Option("--url", envvar="DAS_URL", help=URL_HELP, show_envvar=True)] = None,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="DAS_TOKEN", show_envvar=True, show_default=False,
        help="bearer token for the server (the management token to submit or activate)")] = None,
) -> None:
    """The `das` callback: checks --url; `ServerSwitch` has read it already to pick the commands. A local command
    first checks the DAS_ settings: a bad value is one line naming the variable, not a traceback."""
    if url is not None and not url.startswith(("http://", "https://")):
        fail(f"--url {url!r}: give the server's address with its scheme, e.g. http://127.0.0.1:8000")
    if url is None:
        try:
            get_settings()
        except SettingsError as err:
            fail(f"{err} (fix the variable, or unset it for its default)")


class ServerSwitch(TyperGroup):
    """The `das` group: a command named with --url/$DAS_URL set comes from `remote_app` when it has one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epilog = self.epilog or GROUP_EPILOG
        for name in SWITCHED:
            if name in self.commands:
                self.commands[name].epilog = (f"With `das --url URL {name}` (or $DAS_URL) it asks the server "
                                              f"instead: see `das --url URL {name} --help`.")

    def list_commands(self, ctx: typer.Context) -> list[str]:
        own = super().list_commands(ctx)
        return own + [name for name in REMOTE_COMMANDS if name not in own]

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        """As the group does, but a server's command given --store says why it cannot take it."""
        name, command, rest = super().resolve_command(ctx, args)
        if command is remote_commands().get(name) and any(a == "--store" or a.startswith("--store=") for a in rest):
            shown = f"{name} {rest[0]}" if isinstance(command, TyperGroup) and rest else name  # task add
            fail(f"--store names a local store, but --url (or $DAS_URL) sends `das {shown}` to the server; drop "
                 "--store to ask the server, or drop --url (unset DAS_URL) to use the store")
        return name, command, rest

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        url = ctx.params.get("url")
        remote = remote_commands().get(cmd_name)
        if remote is not None and (url or cmd_name not in self.commands):
            return remote
        local = super().get_command(ctx, cmd_name)
        if local is not None and url and _source(ctx, "url") == "COMMANDLINE":
            return _refused(cmd_name)
        if isinstance(local, TyperGroup) and isinstance(remote, TyperGroup):  # `task show`: a server's only
            for name in set(remote.commands) - set(local.commands):
                local.commands[name] = _needs_url(f"{cmd_name} {name}")
        return local


def _source(ctx: typer.Context, name: str) -> str | None:
    """Where a parameter's value came from: COMMANDLINE, ENVIRONMENT, DEFAULT, ... (None: not parsed yet)."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


@lru_cache(maxsize=1)
def remote_commands() -> dict[str, TyperCommand]:
    return dict(typer.main.get_command(remote_app).commands)


def _refused(name: str) -> TyperCommand:
    def refuse() -> None:
        instead = INSTEAD.get(name, f"with --url: {', '.join(REMOTE_COMMANDS)}")
        fail(f"`das {name}` works on a local store and has no server form; {instead} (drop --url to run "
             f"`das {name}` here)")

    return TyperCommand(name, callback=refuse, add_help_option=False,
                        context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


def _needs_url(name: str) -> TyperCommand:
    """A server's-only command of a local group (`das task show` without --url): it says how to reach a server."""
    def refuse() -> None:
        fail(f"`das {name}` asks a server: give its address as `das --url URL {name} ...` or set DAS_URL")

    return TyperCommand(name.rsplit(" ", 1)[-1], callback=refuse, add_help_option=False, hidden=True,
                        context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


def _finish(job: Job, as_json: bool) -> None:
    """Say how a job ended; exit code 1 unless it succeeded."""
    if as_json:
        typer.echo(json.dumps(job.raw, indent=2))
    from das_client.progress import phases_line

    if job.phases_s:
        console.print(f"  phases: {phases_line(job)}", soft_wrap=True, highlight=False)
    if job.succeeded:
        made = f": {job.version} (parent {job.parent})" if job.version else ""
        console.print(f"job {job.id} succeeded{made}", soft_wrap=True)
        return
    console.print(f"[bold red]job {job.id} ended {job.state}:[/] {job.error or job.note or 'no reason recorded'}",
                  soft_wrap=True)
    raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ commands
@remote_app.command()
@config_options
def submit(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Argument(help="UTF-8 text (one document per line) or JSONL with 'text'")],
    domain: Annotated[str, typer.Option(help="name of the domain")],
    force: Annotated[bool, typer.Option("--force", help="activate the new version even if the forgetting gate "
                                                        "rejects it (the decision is recorded)")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="follow the job until it ends (as `das watch`)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --watch: print the job's last record as JSON")] = False,
    *, config_values: dict,
) -> None:
    """Upload a corpus to the server (--url) and queue its adaptation; prints the job id.

    Every training setting below is a form field of POST /v1/corpora; only those given are sent, the server's
    upload defaults apply to the rest."""
    given = {name: value for name, value in config_values.items() if _source(ctx, name) not in (None, "DEFAULT")}
    with connected(ctx) as client:
        job = client.upload_corpus(corpus, domain, force=force, **given)
        typer.echo(job.id)
        if watch:
            job = client.wait(job, progress=True, raise_on_failure=False,
                              progress_every_s=get_settings().progress_every_s)
    if watch:
        _finish(job, as_json)


@remote_app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job's id (as `das submit` printed it)")],
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds (the job goes on)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the job's last record as JSON")] = False,
    serving: Annotated[bool, typer.Option("--serving", help="an adaptation: return once the server answers with "
                                                            "its new version (the swap follows the job's end)")
                       ] = False,
) -> None:
    """Follow a job on the server (--url) with a progress bar (phase, step/total, loss, ETA) until it ends.
    Off a terminal, a line at each phase change and every DAS_PROGRESS_EVERY_S seconds (30).

    Exit code 0 if it succeeded, 1 if it failed, was rejected or cancelled, 2 for an error (an unknown job...)."""
    with connected(ctx) as client:
        job = client.wait(job_id, progress=True, timeout=timeout, raise_on_failure=False, serving=serving,
                          progress_every_s=get_settings().progress_every_s)
    _finish(job, as_json)


@remote_app.command()
def predict(
    ctx: typer.Context,
    texts: Annotated[list[str] | None, typer.Argument(help="the texts to answer (any text, no domain id)")] = None,
    file: FileOption = None,
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="an end task to answer (repeat for several; none: every task the server serves)")] = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="the version to answer with: an id (v0003) or an alias (none: the active one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's answer as JSON")] = False,
) -> None:
    """Answer texts with registered end tasks on the server (--url): a label and its score per task and text."""
    texts = read_texts(texts, file)
    with connected(ctx) as client:
        if task and len(task) == 1:
            one = client.predict(task[0], texts, version=version)
            version, rows = one.version, [{task[0]: answer} for answer in one.results]
            raw = one.raw
        else:
            many = client.predict_all(texts, tasks=task or None, version=version)
            version, rows, raw = many.version, many.results, many.raw
    if as_json:
        typer.echo(json.dumps(raw, indent=2))
        return
    Console(width=max(Console().width, 120)).print(answers_table(texts, rows, version))


@remote_app.command()
def activate(ctx: typer.Context,
             version: Annotated[str, typer.Argument(help="version id to make active, e.g. v0001")]) -> None:
    """Make a version active on the server (--url): a rollback for an older one; every API process swaps to it.

    Every end task without a model on it gets a fit job on the server."""
    with connected(ctx) as client:
        activated = client.activate(version)
    console.print(f"{activated.id} is active")
    for job_id in activated.fit_jobs:
        console.print(f"  fit job {job_id} queued")


@remote_app.command()
def versions(ctx: typer.Context,
             as_json: Annotated[bool, typer.Option("--json", help="print JSON manifests")] = False) -> None:
    """List the server's (--url) versions with their lineage and status."""
    with connected(ctx) as client:
        found = client.versions()
    if as_json:
        typer.echo(json.dumps([v.raw for v in found], indent=2))
        return
    table = Table("version", "status", "parent", "domain", "created", "documents", "steps", "final loss")
    for v in found:
        table.add_row(*_version_row(v))
    Console(width=max(Console().width, 120)).print(table)


def _version_row(v: Version) -> list[str]:
    final = v.metrics.get("final", {})
    return [v.id, v.status, v.parent or "-", v.domain or "(base)", v.created,
            str(v.corpus.documents) if v.corpus else "-", str(v.metrics.get("steps", "-")),
            f"{final['loss']:.3f}" if "loss" in final else "-"]


# the server forms of the other commands, named as their local forms (das/cli.py)
for command in (remote_jobs.jobs, remote_jobs.cancel, remote_store.show, remote_store.card, remote_store.importance,
                remote_generate.generate):
    remote_app.command()(command)
remote_app.add_typer(remote_task_app, name="task")
remote_app.add_typer(remote_store.remote_alias_app, name="alias")

__all__ = ["REMOTE_COMMANDS", "ServerSwitch", "remote_app", "server_options"]
