"""The arguments of `das task add`, shared by the command on a store (das/task_cli.py) and on a server
(das/remote_tasks.py), so that the two take the same command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from das_formats.task_data import TaskSettings

from .config_options import config_options

NameArg = Annotated[str, typer.Argument(help="1-64 lowercase letters, digits, '_' or '-'")]
TrainArg = Annotated[Path, typer.Argument(help='JSONL, one {"text", "label"} per line')]
EvalOption = Annotated[Path | None, typer.Option("--eval", help="JSONL eval set: scored on every version, and the "
                                                                "forgetting gate's evidence")]
KindOption = Annotated[Literal["probe", "finetune"], typer.Option(
    help="probe: a classifier on frozen pooled features; finetune: all parameters tuned")]
ReplaceOption = Annotated[bool, typer.Option("--replace", help="overwrite a task of this name")]


def task_settings_options(command):
    """Every TaskSettings field as an option of `command` (its values arrive as `config_values`)."""
    return config_options(command, TaskSettings)
