"""`das --url URL task ...`: end tasks on a server, with the command lines of `das task ...` on a store
(das/task_cli.py), through `das_client`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .console import console
from .remote_connection import answers_table, connected, given, print_table, read_texts
from .task_options import EvalOption, KindOption, NameArg, ReplaceOption, TrainArg, task_settings_options

if TYPE_CHECKING:
    from das_client import Client, Job

remote_task_app = typer.Typer(help="End tasks on the server (--url): classifiers on the continually adapted backbone.",
                              no_args_is_help=True)
FileOption = Annotated[Path | None, typer.Option(
    "--file", help="also answer each line of this UTF-8 file (- reads standard input)")]




@remote_task_app.command("add")
@task_settings_options
def add(
    ctx: typer.Context,
    name: NameArg,
    train: TrainArg,
    eval: EvalOption = None,
    kind: KindOption = "probe",
    replace: ReplaceOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="follow the fit job until it ends, then print the task's "
                                                        "scores (as `das task add` on a store)")] = False,
    *, config_values: dict,
) -> None:
    """Register an end task on the server (--url) and queue the job that fits it on the active version; prints the
    job id. Only the settings given are sent: the server's defaults apply to the rest."""
    with connected(ctx) as client:
        job = client.register_task(name, train, eval, kind=kind, replace=replace, **given(ctx, config_values))
        typer.echo(job.id)
        console.print(f"registered {name} ({kind}, {job.examples} examples): fit job {job.id[:8]} queued",
                      soft_wrap=True)
        if watch:
            _fitted(client, name, client.wait(job, progress=True, raise_on_failure=False))


def _fitted(client: Client, name: str, job: Job) -> None:
    """Say what the fit made, as `das task add` does on a store; exit code 1 unless it succeeded."""
    if not job.succeeded:
        console.print(f"[bold red]job {job.id} ended {job.state}:[/] {job.error or job.note or 'no reason recorded'}",
                      soft_wrap=True)
        raise typer.Exit(1)
    models = [m for m in client.task(name).history if m.version == job.parent and m.generation == job.generation]
    if not models:
        console.print(f"{name} fitted on {job.parent} (job {job.id})", soft_wrap=True)
        return
    scores = ", ".join(f"{k} {v}" for k, v in models[0].scores.items()) or "no eval set"
    console.print(f"{name} on {models[0].version}: {scores}; fitted in {models[0].fit_seconds:.1f} s", soft_wrap=True)


@remote_task_app.command("list")
def list_tasks(ctx: typer.Context,
               as_json: Annotated[bool, typer.Option("--json", help="print the server's JSON")] = False) -> None:
    """The server's (--url) registered tasks, with their eval macro-F1 on each version they were fitted on."""
    with connected(ctx) as client:
        tasks = client.tasks()
    if as_json:
        typer.echo(json.dumps([t.raw for t in tasks], indent=2))
        return
    table = Table("task", "kind", "labels", "train", "eval", "macro-F1 by version")
    for t in tasks:
        scores = " ".join(f"{m.version}:{m.scores['macro_f1']:.1f}" for m in t.history if "macro_f1" in m.scores)
        table.add_row(t.name, t.kind, str(len(t.labels)), str(t.train.examples) if t.train else "-",
                      str(t.eval.examples) if t.eval else "-", scores or "-")
    print_table(table)


@remote_task_app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="the task")]) -> None:
    """Print one task as the server (--url) has it (JSON): labels, settings, scores per version, what serves it,
    its last fit."""
    with connected(ctx) as client:
        typer.echo(json.dumps(client.task(name).raw, indent=2))


@remote_task_app.command("predict")
def predict(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the task")],
    texts: Annotated[list[str] | None, typer.Argument(help="the texts to answer (any text, no domain id)")] = None,
    file: FileOption = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="the version to answer with: an id (v0003) or an alias (none: the active one)")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="score only the best K labels")] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="cut a text longer than the model's maximum "
                                                              "sequence (else the server refuses it)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's answer as JSON")] = False,
) -> None:
    """Answer texts with one end task on the server (--url): its label and score per text."""
    texts = read_texts(texts, file)
    with connected(ctx) as client:
        answer = client.predict(name, texts, version=version, truncate=truncate, top_k=top_k)
    if as_json:
        typer.echo(json.dumps(answer.raw, indent=2))
        return
    print_table(answers_table(texts, [{name: one} for one in answer.results], answer.version))


@remote_task_app.command("delete")
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="the task")]) -> None:
    """Forget a task and all its models on the server (--url); its pending fits end cancelled."""
    with connected(ctx) as client:
        client.delete_task(name)
    console.print(f"deleted {name}")
