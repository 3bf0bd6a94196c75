"""The store's commands without a server: `das versions`, `show`, `card`, `activate`, `importance`, `gc`, `repair`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from das_settings import get_settings
from model_store import maintenance
from model_store.store import Finding

from .console import StoreOption, clear_errors, console, existing_store, fail


def versions(store: StoreOption = None,
             as_json: Annotated[bool, typer.Option("--json", help="print JSON manifests")] = False) -> None:
    """List the store's versions with their lineage and status."""
    with clear_errors():
        manifests, damaged = existing_store(store).scan()
    for d in damaged:
        console.print(f"[yellow]damaged:[/] {d.id}: {d.reason} (`das repair` sets it aside)", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(m) for m in manifests], indent=2))
        return
    table = Table("version", "status", "parent", "domain", "created", "documents", "steps", "final loss")
    for m in manifests:
        final = m.metrics.get("final", {})
        table.add_row(m.id, m.status, m.parent or "-", m.domain or "(base)", m.created,
                      str(m.corpus.documents) if m.corpus else "-", str(m.metrics.get("steps", "-")),
                      f"{final['loss']:.3f}" if "loss" in final else "-")
    Console(width=max(Console().width, 120)).print(table)


def show(version: Annotated[str, typer.Argument(help="version id, e.g. v0002")], store: StoreOption = None) -> None:
    """Print one version's manifest (JSON)."""
    with clear_errors():
        typer.echo(existing_store(store).manifest(version).to_json())


def card(version: Annotated[str, typer.Argument(help="version id, e.g. v0002")], store: StoreOption = None) -> None:
    """Print one version's model card (the README.md of its folder, Markdown with YAML front matter)."""
    from model_store.card import version_card

    with clear_errors():
        typer.echo(version_card(existing_store(store), version), nl=False)


def activate(version: Annotated[str, typer.Argument(help="version id to make active")],
             store: StoreOption = None) -> None:
    """Make a version active; an older one is a rollback, and the importance chain continues from it.

    Every end task without a model on it gets a fit job in the store's job records: a running `das serve` or
    `das worker` of this store runs it (an embedded server picks it up at its next start)."""
    from worker.runtime import job_registry, submit_job
    from worker.task_registry import queue_missing_fits

    with clear_errors():
        model_store = existing_store(store)
        manifest = model_store.activate(version)
        settings = get_settings().model_copy(update={"store": store} if store else {})
        jobs = job_registry(settings)
        queued = queue_missing_fits(model_store, jobs, manifest.id, lambda job_id: submit_job(settings, jobs, job_id))
    console.print(f"{manifest.id} is active")
    for job in queued:
        console.print(f"  fit job {job.id} queued for task {job.task}")


def importance(
    version: Annotated[str, typer.Argument(help="version id")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    png: Annotated[Path | None, typer.Option(help="write heatmaps (cumulative and added) to this PNG")] = None,
    diff: Annotated[str | None, typer.Option(help="compare with another version's cumulative importance")] = None,
) -> None:
    """Per-layer importance of a version: summary, difference to another version, heatmaps."""
    from model_store import importance_history as history

    with clear_errors():
        model_store = existing_store(store)
        found = history.version_importance(model_store, version)
        if found is None:
            fail(f"{version} has no importance: it is the base model (its first adaptation computes it)")
        report = found.report()
        if diff is not None:
            other = history.version_importance(model_store, diff)
            if other is None:
                fail(f"{diff} has no importance to compare with")
            report["diff"] = {"from": diff, "to": version, "groups": history.diff(other.cumulative, found.cumulative)}
        if png is not None:
            found.heatmap(png)
            console.print(f"wrote {png}")
    if as_json or png is None:
        typer.echo(json.dumps(report, indent=2))


def gc(keep: Annotated[int, typer.Option(help="keep the weights of the newest N versions (and the active one)")],
       store: StoreOption = None) -> None:
    """Remove old versions' weights; manifests and importance stay, so the history survives."""
    with clear_errors():
        archived = maintenance.gc(existing_store(store), keep)
    console.print(f"archived {', '.join(archived) if archived else 'nothing'}")


def repair(
    store: StoreOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list the problems; change nothing")] = False,
    verify: Annotated[bool, typer.Option(help="check every file's sha256 (--no-verify: manifests and pointer)")] = True,
    work_dir: Annotated[Path | None, typer.Option(help="whose uploads/ to clean (default: $DAS_WORK_DIR)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
) -> None:
    """Find damaged versions, task definitions and task models, a missing or broken active pointer and temporary
    files of dead processes; mend them.

    A damaged version, task definition or task model is moved to STORE/damaged/ (nothing is deleted but temporary
    files untouched for 10 minutes); ACTIVE is pointed at the newest healthy version. Exit code 0: nothing left to do;
    1: problems remain (with --dry-run: any problem found).
    """
    from api.service import clean_uploads
    from model_store.tasks import TaskStore

    with clear_errors():
        model_store = existing_store(store)
        found = (maintenance.repair(model_store, dry_run=dry_run, verify=verify)
                 + TaskStore(model_store).repair(dry_run=dry_run))
    found += [Finding(str(path), "a temporary upload of a process that died", "remove it", not dry_run)
              for path in clean_uploads(work_dir or get_settings().work_dir, dry_run=dry_run)]
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(f) for f in found], indent=2))
    elif not found:
        console.print("nothing to repair")
    else:
        table = Table("item", "problem", "fix", "done")
        for f in found:
            table.add_row(f.item, f.problem, f.fix, "yes" if f.fixed else "no")
        Console(width=max(Console().width, 120)).print(table)
    raise typer.Exit(0 if all(f.fixed for f in found) else 1)
