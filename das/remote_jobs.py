"""`das --url URL jobs|cancel`: a server's job list, a page at a time, and cancelling one, through `das_client`.

A job is named by its whole id or any unique prefix of at least 6 characters (the 8 the list prints): the server
resolves it (api/job_ids.py)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from job_records import KINDS, MIN_JOB_PREFIX, STATES

from .console import console
from .remote_connection import connected, print_table

if TYPE_CHECKING:
    from das_client import Job

SHOWN_ID = 8  # the characters of a job id a list shows (any unique prefix of MIN_JOB_PREFIX or more names it)
JobIdArgument = Annotated[str, typer.Argument(
    help=f"the job's id, or a unique prefix of at least {MIN_JOB_PREFIX} characters (as `das jobs` shows it)")]


def jobs(
    ctx: typer.Context,
    state: Annotated[Literal[STATES] | None, typer.Option(help="only jobs in this state")] = None,
    kind: Annotated[Literal[KINDS] | None, typer.Option(help="only jobs of this kind")] = None,
    domain: Annotated[str | None, typer.Option(help="only adapt jobs of this domain")] = None,
    task: Annotated[str | None, typer.Option(help="only fit jobs of this end task")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="jobs per page")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the next page, as the previous page's last line gave it")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's JSON records")] = False,
) -> None:
    """The server's (--url) jobs, newest first, a page at a time: the next page's --cursor is printed last."""
    with connected(ctx) as client:
        page = client.job_page(limit, cursor, state=state, kind=kind, domain=domain, task=task)
    if as_json:
        typer.echo(json.dumps([job.raw for job in page.jobs], indent=2))
    else:
        table = Table("job", "kind", "state", "for", "parent", "version", "created", "progress or outcome")
        for job in page.jobs:
            table.add_row(*_job_row(job))
        print_table(table)
    if page.next_cursor:
        console.print(f"more: add --cursor {page.next_cursor}", soft_wrap=True)


def _job_row(job: Job) -> list[str]:
    subject = {"adapt": job.domain, "fit": job.task}.get(job.kind) or job.raw.get("answer_kind") or "-"
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created)) if isinstance(
        job.created, int | float) else str(job.created or "-")
    progress = job.progress
    if job.done:
        outcome = job.error or job.note or ""
    elif progress.phase:
        outcome = progress.phase + (f" {progress.step}/{progress.total}" if progress.total else "")
    else:
        outcome = ""
    return [job.id[:SHOWN_ID], job.kind, job.state, subject, job.parent or "-", job.version or "-", created,
            outcome or "-"]


def cancel(ctx: typer.Context, job_id: JobIdArgument) -> None:
    """Cancel a job on the server (--url): a queued one at once, a running one at its next step. A batch
    prediction is cancelled with either token, any other job needs the management token."""
    with connected(ctx) as client:
        job = client.job(job_id)
        job = client.cancel_batch_prediction(job.id) if job.kind == "predict" else client.cancel(job.id)
    if job.state == "cancelled":
        console.print(f"job {job.id} cancelled", soft_wrap=True)
    else:
        console.print(f"job {job.id} is {job.state}: it stops at its next step", soft_wrap=True)
