"""Interpolation toward the parent (merge): the candidate keeps a share `a` of what training changed.

    candidate = parent + a * (trained - parent)

`a = 1` is the trained model and `a = 0` the parent, both exactly (no arithmetic is done at either end).
The importance-weighted variant (beyond the paper) gives each unit its own share, `a * (1 - I)`, with
I the cumulative importance the step trained against, I(<=t-1): a unit the earlier domains need keeps
more of its parent. The units and the parameters each one owns are the soft-mask's (softmask.SoftMask);
every other parameter takes `a`.

Choosing `a` costs scoring, not training: `choose_alpha` walks a grid of candidates, each scored by
the caller (the service scores its registered tasks and the lineage's held-out losses; `das eval` the
held-out losses), and takes the largest `a` whose scores stay within the bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from das_formats.config import DASConfig

from .mlm_head import heldout_loss
from .softmask import SoftMask
from .units import ModelUnits, UnitTensors

# the service's judge of a candidate held in memory: (model, tokenizer) -> (task -> it dropped, details to record)
TaskJudge = Callable[[nn.Module, Any], tuple[dict[str, bool], dict[str, Any]]]

MERGE_GRID = (0.25, 0.5, 0.75, 1.0)  # the shares `choose_alpha` tries, from the parent toward the trained model


def parent_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter of `model` (by name, tied ones once): the parent a merge goes back toward."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def interpolate(model: nn.Module, parent: dict[str, torch.Tensor], alpha: float, *,
                units: ModelUnits | None = None, importance: UnitTensors | None = None) -> None:
    """Move `model` (the trained weights) in place to parent + alpha * (trained - parent).

    With `units` and `importance`, each unit's parameters take alpha * (1 - I) instead (the word-embedding
    rows too when the importance has them). Buffers are not touched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the merge share must be within 0..1, got {alpha}")
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(parent))
    if missing:
        raise ValueError(f"the parent has no weights for {missing[:3]}: not the same architecture")
    weighted = units is not None and importance is not None
    if alpha == 1.0 and not weighted:
        return  # the trained weights, bit for bit
    if alpha == 0.0:
        for name, p in params.items():
            p.copy_(parent[name])  # the parent's weights, bit for bit
        return
    for name, p in params.items():  # p becomes alpha * (trained - parent): the share of the change kept
        p.sub_(parent[name].to(p.device, p.dtype)).mul_(alpha)
    if weighted:
        keep = SoftMask.build(units, importance.to(units.device), embeddings=importance.embeddings is not None)
        for p, multiplier in keep.entries:
            p.mul_(multiplier)
        for p, index, multiplier in keep.rows:
            p.index_copy_(0, index, p.index_select(0, index).mul_(multiplier))
    for name, p in params.items():
        p.add_(parent[name].to(p.device, p.dtype))


@dataclass
class MergeScores:
    """What the caller measured on one candidate share: every number the choice reads."""

    new_gain: float  # the new domain's held-out LM loss drop from the parent (nats; MLM or next-token; higher: better)
    old_rise: float | None  # the earlier domains' mean held-out loss rise from the parent (nats); None: none
    task_drops: dict[str, bool] = field(default_factory=dict)  # registered task -> it fell beyond its noise
    details: dict[str, Any] = field(default_factory=dict)  # anything else to record (per task and domain)


@dataclass
class MergeChoice:
    alpha: float
    reason: str
    grid: list[dict[str, Any]]  # per share tried: alpha, accepted, and its MergeScores

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "reason": self.reason, "grid": self.grid}


def choose_alpha(score: Callable[[float], MergeScores], *, max_rise: float,
                 grid: Sequence[float] = MERGE_GRID) -> MergeChoice:
    """The largest share on `grid` whose candidate drops no registered task (beyond its noise) and keeps the
    earlier domains' held-out loss within `max_rise` nats of the parent's; the new domain's gain is then the
    most the grid allows. When no share qualifies, the smallest is taken (the least change) and says so:
    the forgetting gate decides on it as on any candidate.

    `score(alpha)` builds and scores one candidate. Shares are tried from the largest down and the walk stops
    at the first that qualifies, so a candidate that forgets nothing costs one scoring.
    """
    shares = sorted({float(a) for a in grid}, reverse=True)
    if not shares or any(not 0.0 < a <= 1.0 for a in shares):
        raise ValueError(f"a merge grid holds shares within (0, 1], got {list(grid)}")
    tried: list[dict[str, Any]] = []
    for alpha in shares:
        scores = score(alpha)
        dropped = sorted(task for task, fell in scores.task_drops.items() if fell)
        over = scores.old_rise is not None and scores.old_rise > max_rise
        accepted = not dropped and not over
        tried.append({"alpha": alpha, "accepted": accepted, **asdict(scores)})
        if accepted:
            return MergeChoice(alpha, f"the largest share on the grid within the bounds (rise <= {max_rise} nats, "
                                      "no task dropped)", tried)
    why = "; ".join(_why(entry, max_rise) for entry in tried)
    return MergeChoice(shares[-1], f"no share kept within the bounds ({why}); took the smallest", tried)


def _why(entry: dict[str, Any], max_rise: float) -> str:
    parts = []
    if entry["old_rise"] is not None and entry["old_rise"] > max_rise:
        parts.append(f"rise {entry['old_rise']:.3f} > {max_rise}")
    dropped = sorted(t for t, fell in entry["task_drops"].items() if fell)
    if dropped:
        parts.append(f"{', '.join(dropped)} dropped")
    return f"a={entry['alpha']}: {' and '.join(parts)}"


@torch.no_grad()
def load_parameters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        p.copy_(state[name])


def merge_candidate(model: nn.Module, tokenizer: Any, parent: dict[str, torch.Tensor], units: ModelUnits,
                    importance: UnitTensors | None, config: DASConfig, data: Any, judge_tasks: TaskJudge | None,
                    run: Any) -> dict[str, Any]:
    """Turn the trained `model` into the candidate in place: the fixed share `merge_alpha`, or (merge_auto) the share
    `choose_alpha` takes on the grid, scored on `data`'s validation documents (training_data.TrainingData) and by
    `judge_tasks`. Returns what the run records (the share, the weighting, and the whole grid when chosen)."""
    weighted = {"units": units, "importance": importance} if config.merge_weighting == "importance" else {}
    record: dict[str, Any] = {"alpha": config.merge_alpha, "weighting": config.merge_weighting, "auto": None}
    if not config.merge_auto:
        interpolate(model, parent, config.merge_alpha, **weighted)
        return record
    started = time.perf_counter()
    trained = parent_state(model)

    def losses() -> dict[str, Any]:
        def loss(docs: list[str]) -> float:
            return heldout_loss(model, tokenizer, docs, max_length=config.max_length,
                                batch_size=config.importance_batch_size, seed=0)
        return {"new": loss(data.validation_new), "old": {name: loss(d) for name, d in data.validation_old.items()}}

    load_parameters(model, parent)
    before = losses()

    def score(alpha: float) -> MergeScores:
        load_parameters(model, trained)
        interpolate(model, parent, alpha, **weighted)
        after = losses()
        rises = [after["old"][name] - before["old"][name] for name in after["old"]]
        drops, details = judge_tasks(model, tokenizer) if judge_tasks is not None else ({}, {})
        return MergeScores(new_gain=before["new"] - after["new"], old_rise=(sum(rises) / len(rises)) if rises else None,
                           task_drops=drops, details={"losses": after, **details})

    choice = choose_alpha(score, max_rise=config.merge_max_rise)
    load_parameters(model, trained)
    interpolate(model, parent, choice.alpha, **weighted)
    run.timings["merge_choice_s"] = time.perf_counter() - started
    return record | {"alpha": choice.alpha, "auto": choice.to_dict() | {"parent_losses": before,
                                                                         "max_rise": config.merge_max_rise}}
