"""A DAS run's state and work folder: its progress reports, what it has done so far (kept in every checkpoint,
restored on resume, written to train_metrics.json), the refusal of a folder made from other settings or inputs,
and the model folder it writes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from das_formats.config import DASConfig
from das_formats.layout import METRICS

from .checkpoint import latest_checkpoint
from .train_step import get_lr
from .training_data import TrainingData
from .units import ModelUnits, UnitTensors

CHECKPOINTS = "checkpoints"
MADE_FROM = "made_from.json"  # in the checkpoints folder: the fingerprints its run was started with


@dataclass
class Progress:
    """Where a run stands: `step` of `total` units of its phase (training steps; batches of an importance pass;
    0 or 1 of 1 for merge, saving and done, which have no finer grain). The pipeline reports its own phases
    after the trainer's (pipeline.adaptation.PHASES)."""

    phase: str  # the trainer's: general-importance, train, domain-importance, merge, saving, done
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    detail: str = ""  # what the unit is about, where it says more than the count (say, the task a gate scores)


@dataclass
class AdaptResult:
    status: Literal["completed", "cancelled"]
    out_dir: Path
    step: int
    metrics: dict


@dataclass
class RunState:
    """What a run has done so far: kept in every checkpoint, restored on resume, reported in train_metrics.json."""

    timings: dict[str, float]
    start: int = 0
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    train_time: float = 0.0
    merge: dict | None = None  # the merge toward the parent (merge.merge_candidate's record), if any
    ranks: int = 1  # the processes it trained on (torch.distributed)
    # what the general-importance pass's two passes differed by ("model", or "added p=0.1" for a causal LM without
    # dropout: importance.importance_dropout); None when the run computed no I(0)
    importance_dropout: str | None = None

    def resume(self, step: int, state: dict) -> None:
        """Continue from a checkpoint's step and state."""
        self.start, self.history = step, state["history"]
        self.tokens, self.train_time = state["tokens"], state["train_time_s"]
        self.timings.update(state["timings"])

    def checkpoint_state(self, config: DASConfig, made_from: dict[str, str]) -> dict:
        return {"config": config.to_dict(), "made_from": made_from, "history": self.history, "tokens": self.tokens,
                "train_time_s": self.train_time, "timings": self.timings}

    def count(self, step: int, config: DASConfig, parts: dict[str, float], batch_tokens: int, seconds: float,
              report: Callable[[Progress], None]) -> None:
        """Add one step's time and tokens; log it (every log_every steps and the last) and report it."""
        self.train_time += seconds
        self.tokens += batch_tokens
        speed = self.tokens / max(self.train_time, 1e-9)
        eta = (config.steps - step - 1) * self.train_time / (step + 1)  # train_time spans resumed runs too
        if step % config.log_every == 0 or step == config.steps - 1:
            self.history.append({"step": step + 1, "lr": get_lr(config, step), "tokens_per_s": speed, **parts})
        report(Progress("train", step + 1, config.steps, parts, speed, eta))

    def metrics(self, domain: str, base: str | Path, config: DASConfig, data: TrainingData, units: ModelUnits,
                made_from: dict[str, str], device: torch.device, wall_time_s: float) -> dict:
        """train_metrics.json of a completed run."""
        packed = data.packed
        return {
            "domain": domain, "base_model": str(base), "status": "completed",
            "steps": config.steps, "tokens": self.tokens, "tokens_per_s": self.tokens / max(self.train_time, 1e-9),
            "train_time_s": self.train_time, "wall_time_s": wall_time_s,
            "resumed_from_step": self.start or None, "timings": self.timings,
            "corpus": {"documents": packed.num_documents, "blocks": len(packed), "tokens": packed.num_tokens},
            "history": self.history, "settings": config.to_dict(), "family": units.family, "kind": units.kind,
            "importance_dropout": self.importance_dropout,
            "made_from": made_from, "device": str(device), "ranks": self.ranks,
            "replay": {"rows_per_batch": data.replay_rows, "corpora": data.replay_documents},
            "merge": self.merge,
        }


def save_model(out_dir: Path, model: nn.Module, tokenizer, base: str | Path,
                importances: dict[str, UnitTensors | None]) -> None:
    """The Hugging Face folder (the parent's tokenizer files kept) and the importance files that exist."""
    model.save_pretrained(out_dir)
    keep_parent_tokenizer_files(tokenizer.save_pretrained(out_dir), base)
    for name, importance in importances.items():
        if importance is not None:
            importance.save(out_dir / name)


def keep_parent_tokenizer_files(written: tuple[str, ...], base: str | Path) -> None:
    """Training does not change the tokenizer: where the base folder holds a file that
    `save_pretrained` just rewrote (it adds load-time keys to tokenizer_config.json), put the
    base's bytes back. Versions of one lineage then share their tokenizer files byte for byte, and
    a hot swap between them reuses the tokenizer it is serving (serving.model.same_tokenizer_files)."""
    if not Path(base).is_dir():
        return  # a hub id: the files written are the first of the lineage
    for written_path in map(Path, written):
        parent = Path(base) / written_path.name
        if parent.is_file() and written_path.is_file():
            shutil.copyfile(parent, written_path)


def finished_run(out_dir: Path, config: DASConfig, made_from: dict[str, str]) -> AdaptResult | None:
    """The result of a run already completed in `out_dir` with the same settings and inputs, if any."""
    path = out_dir / METRICS
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("settings") != config.to_dict():
        raise ValueError(f"{out_dir} already holds a run made with other settings; choose another --out")
    other = _other_inputs(metrics.get("made_from"), made_from)
    if other:
        raise ValueError(f"{out_dir} already holds a run made from {other}; remove {out_dir} or choose another --out")
    return AdaptResult("completed", out_dir, metrics["steps"], metrics)


def check_checkpoints(ckpt_dir: Path, config: DASConfig, made_from: dict[str, str]) -> None:
    """Refuse a checkpoints folder left by a run with other settings, another corpus or another base.

    The fingerprints are checked in MADE_FROM, written with the importance the run trains against
    (before its first checkpoint: I(0) of the first domain comes from its corpus and base too);
    each checkpoint's state records them as well.
    """
    recorded = ckpt_dir / MADE_FROM
    if recorded.is_file():
        other = _other_inputs(json.loads(recorded.read_text()), made_from)
        if other:
            raise ValueError(f"{ckpt_dir} was started from {other}; remove {ckpt_dir} to start over")
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None and json.loads((latest / "state.json").read_text())["state"]["config"] != config.to_dict():
        raise ValueError(f"{latest} was written with other settings; remove {ckpt_dir} to start over")


def _other_inputs(recorded: dict[str, str] | None, now: dict[str, str]) -> str:
    """'' when the recorded fingerprints are today's; else which input differs (none recorded: both)."""
    recorded = recorded or {}
    names = {"corpus_sha256": "another corpus", "base_sha256": "another base model",
             "replay_sha256": "other replay corpora"}
    return " and ".join(label for key, label in names.items() if recorded.get(key) != now.get(key))
