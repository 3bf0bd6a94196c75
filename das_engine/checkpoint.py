"""Checkpoints for resuming a run: weights and optimizer state in safetensors, the rest in JSON.

Nothing is pickled. A checkpoint is written into a temporary folder and renamed into place, so
the latest complete `step-NNNNNN` folder is always valid; older ones are removed afterwards.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .precision import model_device

PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    state: dict[str, Any]  # JSON-able: metrics history, timings, config
    path: Path


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"state.{idx}.{key}": value.detach().contiguous().cpu()
               for idx, entry in opt["state"].items() for key, value in entry.items()
               if isinstance(value, torch.Tensor)}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"step": step, "param_groups": opt["param_groups"], "state": state}
    (tmp / "state.json").write_text(json.dumps(meta))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in folder.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Checkpoint:
    """Restore weights and optimizer state in place, on the model's device; return the step and JSON state."""
    meta = json.loads((path / "state.json").read_text())
    device = model_device(model)
    load_model(model, str(path / "model.safetensors"), device=str(device))
    tensors = load_file(str(path / "optimizer.safetensors"), device=str(device))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        # Adam keeps `step` on the CPU unless capturable/fused
        state.setdefault(int(idx), {})[key] = value.cpu() if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return Checkpoint(step=meta["step"], state=meta["state"], path=path)
