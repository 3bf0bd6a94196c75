"""`das export VERSION --format onnx`: a version's encoder as the ONNX graph the service runs, with its parity check."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .console import StoreOption, clear_errors, console, existing_store, fail

LOAD_EXAMPLE = """import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{version_folder}")
session = ort.InferenceSession("{graph}")
batch = tokenizer(["a text"], return_tensors="np")
hidden = session.run(["last_hidden_state"], {{"input_ids": batch["input_ids"].astype(np.int64),
                     "attention_mask": batch["attention_mask"].astype(np.int64)}})[0]  # (batch, tokens, hidden)"""


class ExportFormat(StrEnum):
    onnx = "onnx"


def export(version: Annotated[str, typer.Argument(help="version id, e.g. v0002")],
           export_format: Annotated[ExportFormat, typer.Option("--format",
                                                               help="the graph's format")] = ExportFormat.onnx,
           out: Annotated[Path | None, typer.Option(help="folder to write model.onnx and parity.json into "
                                                    "(default: exports/VERSION-FORMAT)")] = None,
           store: StoreOption = None) -> None:
    """Write a version's encoder (input_ids, attention_mask -> last_hidden_state) as the ONNX graph the service's ONNX
    backend runs, and check it against torch: fill-mask logits within 1e-3, the same top-5 tokens, embeddings at
    cosine >= 0.9999 (parity.json). Exit code 1 when the check fails (the files stay, for a look)."""
    from das_engine.onnx_export import GRAPH, HEAD_GRAPH, export_folder

    out = out or Path("exports") / f"{version}-{export_format.value}"
    if out.exists():
        fail(f"{out} exists; remove it or name another folder with --out")
    with clear_errors():
        folder = existing_store(store).model_dir(version)
    parity = export_folder(folder, out)
    typer.echo(json.dumps(parity.to_json(), indent=1))
    if not parity.ok:
        console.print(f"[bold red]parity check failed:[/] {out / GRAPH} does not answer as torch does", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"wrote {out / GRAPH} (the encoder) and {out / HEAD_GRAPH} (the MLM head's top 50 tokens at masked "
                  "positions); load the encoder with onnxruntime (the tokenizer is the version's):", soft_wrap=True)
    typer.echo(LOAD_EXAMPLE.format(version_folder=folder, graph=out / GRAPH))
