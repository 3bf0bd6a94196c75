"""What runs a served version's network: torch, or onnxruntime on graphs exported from the same weights.

A version starts on torch. With the ONNX backend (DAS_SERVE_BACKEND=onnx, the CPU's default) it moves to the
graphs once they are ready: at load when the cache holds graphs of its weights whose parity check passed, and
otherwise when the background export (serving.onnx_cache) finishes; a swap never waits for an export. Both give
the same answers within the parity bounds (das_engine.onnx_export), so the move is one reference assignment, and
a batch that read the torch runner finishes on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from das_engine.answers import TopTokens, mlm_top_tokens

log = logging.getLogger(__name__)


class TorchRunner:
    name = "torch"

    def __init__(self, model: torch.nn.Module, mlm_head: torch.nn.Module | None) -> None:
        """`mlm_head`: a masked LM's (fill-mask); None for a causal LM, whose base model's last hidden states serve
        embeddings and end tasks alone."""
        self.encoder = model.base_model
        self.top_tokens: TopTokens = mlm_top_tokens(mlm_head) if mlm_head is not None else _no_mlm_head

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """last_hidden_state, (B, T, D)."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _no_mlm_head(hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    raise ValueError("a causal LM has no MLM head: fill-mask is a masked LM's (LoadedModel.check_fill_mask says so)")


class OnnxRunner:
    name = "onnx"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        from das_engine.onnx_export import GRAPH, HEAD_GRAPH, session, session_top_tokens

        self.folder = folder
        self.encoder = session(folder / GRAPH, threads)
        self.top_tokens: TopTokens = session_top_tokens(session(folder / HEAD_GRAPH, threads))

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from das_engine.onnx_export import run_session

        return run_session(self.encoder, input_ids, attention_mask)


class RunnerSlot:
    """The runner one loaded version answers with, shared by the copies `with_tasks` makes of it."""

    def __init__(self, version: str, runner: TorchRunner | OnnxRunner) -> None:
        self.version, self.runner = version, runner

    @property
    def backend(self) -> str:
        return self.runner.name

    def move_to(self, graphs: Path) -> None:
        """Answer with the exported graphs in `graphs` from the next batch on; graphs that fail to open leave torch
        answering."""
        try:
            runner = OnnxRunner(graphs)
        except Exception:  # noqa: BLE001 - a damaged cached graph must not stop the version answering
            log.exception("%s: the ONNX graphs in %s do not open; torch goes on serving", self.version, graphs)
            return
        self.runner = runner
        log.info("%s: serving on onnxruntime (%s)", self.version, graphs,
                 extra={"event": "backend", "version": self.version, "backend": "onnx"})
