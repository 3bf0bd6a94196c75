"""The training history of a version: the per-step log its training run wrote (train_metrics.json's `history`).

The manifest keeps only the run's summary (pipeline.adaptation.training_summary); the steps stay in the version's
file, read here and checked against the manifest's digest. Knows nothing of HTTP: the models route serves it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from das_formats.layout import METRICS

from .errors import CorruptVersion
from .store import REPAIR, ModelStore

# what every logged step holds besides its loss parts (das_engine.run_state.RunState.count)
STEP_FIELDS = ("step", "lr", "tokens_per_s")


@dataclass(frozen=True)
class TrainingHistory:
    version: str
    steps: int | None  # the run's steps (train_metrics.json's `steps`); the log holds every `log_every`-th and the last
    losses: list[str]  # the loss parts logged (loss, mlm, contrastive, ...), in the order of the first step
    history: list[dict[str, float]]  # per logged step: step, lr, tokens_per_s and each loss part


def training_history(store: ModelStore, version: str) -> TrainingHistory | None:
    """A version's per-step training log; None for a version no run trained (the base model). Raises the store's
    VersionNotFound for none such and CorruptVersion for a file that is missing, unlike its digest or unreadable."""
    manifest = store.manifest(version)
    if METRICS not in manifest.files:
        return None
    try:
        data = store.backend.read_bytes(f"versions/{version}/{METRICS}")
    except FileNotFoundError:
        raise CorruptVersion(f"{version} is damaged: {METRICS} is missing; {REPAIR}") from None
    if hashlib.sha256(data).hexdigest() != manifest.files[METRICS]:
        raise CorruptVersion(f"{version} is damaged: {METRICS} does not match its sha256 (corrupted); {REPAIR}")
    try:
        metrics: Any = json.loads(data)
        history = metrics["history"]
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise TypeError("'history' is not a list of objects")
    except (ValueError, TypeError, KeyError) as err:
        raise CorruptVersion(f"{version} is damaged: {METRICS} holds no readable history ({err!r}); "
                             f"{REPAIR}") from None
    first = history[0] if history else {}
    losses = [k for k in first if k not in STEP_FIELDS]
    steps = metrics.get("steps")
    return TrainingHistory(version, steps if isinstance(steps, int) else None, losses, history)
