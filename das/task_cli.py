"""`das task ...`: end tasks in a store, without a server (the same registration as POST /v1/tasks)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from das_formats.task_data import TaskDataError, TaskSettings
from das_settings import get_settings
from model_store.locks import StoreLocked
from model_store.store import StoreError
from model_store.tasks import TaskExists, TaskNotFound, TaskStore
from pipeline.task_intake import check_task_files, store_task_data
from worker.runtime import open_store

from .console import StoreOption, console, existing_store, fail
from .task_options import EvalOption, KindOption, NameArg, ReplaceOption, TrainArg, task_settings_options

task_app = typer.Typer(help="End tasks: classifiers on the continually adapted backbone (no domain id).",
                       no_args_is_help=True)




@task_app.command("add")
@task_settings_options
def add(
    name: NameArg,
    train: TrainArg,
    eval: EvalOption = None,
    kind: KindOption = "probe",
    replace: ReplaceOption = False,
    store: StoreOption = None,
    *, config_values: dict,
) -> None:
    """Register an end task in the store and fit it on the active version now."""
    from das_data.base_models import ensure_initialised
    from pipeline.endtasks import fit_task_model

    settings = get_settings()
    for path in (train, eval):
        if path is not None and not path.is_file():
            fail(f"{path}: no such file")
    try:
        task_settings = TaskSettings(**config_values)
        train_set, eval_set = check_task_files(kind, task_settings, train, eval, settings,
                                               (train.name, eval.name if eval else "eval"))
        model_store = open_store(location=store)  # a new store gets the base as v0001, as `das adapt` does
        ensure_initialised(model_store, settings)
        tasks = TaskStore(model_store)
        if not replace and tasks.exists(name):
            raise TaskExists(f"a task named {name!r} exists; pass --replace to overwrite it")
        definition = store_task_data(model_store, name, kind, task_settings, (train, train_set, train.name),
                                     (eval, eval_set, eval.name) if eval is not None else None)
        definition = tasks.put_definition(definition, replace=replace)
        active = model_store.active_id()
        if active is None:
            fail(f"registered {name}, but no version is active to fit it on: {model_store.pointer_problem()}")
        console.print(f"fitting {name} ({kind}, {len(train_set)} examples, labels {', '.join(definition.labels)}) "
                      f"on {active} ...")
        model = fit_task_model(model_store, definition, active, device=settings.device)
    except (TaskDataError, StoreError, StoreLocked, ValueError, OSError) as err:
        fail(str(err))
    scores = ", ".join(f"{k} {v}" for k, v in model.scores.items()) or "no eval set"
    console.print(f"{name} on {model.version}: {scores}; fitted in {model.fit_seconds:.1f} s")


@task_app.command("list")
def list_tasks(store: StoreOption = None,
               as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The registered tasks, with their eval macro-F1 on each version they were fitted on."""
    tasks = TaskStore(existing_store(store))
    definitions = tasks.definitions()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(d) | {"history": [dataclasses.asdict(m) for m in tasks.history(d)]}
                               for d in definitions], indent=2))
        return
    table = Table("task", "kind", "labels", "train", "eval", "macro-F1 by version")
    for d in definitions:
        scores = " ".join(f"{m.version}:{m.scores['macro_f1']:.1f}" for m in tasks.history(d) if m.scores)
        table.add_row(d.name, d.kind, str(len(d.labels)), str(d.train.examples),
                      str(d.eval.examples) if d.eval else "-", scores or "-")
    Console(width=max(Console().width, 120)).print(table)


@task_app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="the task")], store: StoreOption = None) -> None:
    """Forget a task and all its models."""
    try:
        TaskStore(existing_store(store)).delete(name)
    except (TaskNotFound, ValueError) as err:
        fail(str(err))
    console.print(f"deleted {name}")
