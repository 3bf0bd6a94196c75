"""The plan of an evaluation: domain folders in order, methods, seeds, the base model, the training
settings every method shares, how each stage is scored (`ScoringSettings`), and the stages (`Stage`:
stage T of a method and seed is its model after T domains, stage 0 the base model)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from das_data.domain_folder import MAX_TEST, MAX_TRAIN
from das_formats.config import DASConfig
from das_formats.task_data import TaskSettings

from .methods import EvalError, Method, check_overrides, parse_method, split_methods

KINDS = ("probe", "finetune")  # end-task scoring: frozen features + logistic regression; full fine-tuning


@dataclass(frozen=True)
class ScoringSettings:
    """How every stage is scored: end tasks (probe always, fine-tuning on request) and held-out MLM loss.

    The end-task defaults are a registered task's (das_formats.task_data.TaskSettings), the caps a built
    domain's (das_data.domain_folder)."""

    max_train: int = MAX_TRAIN  # end-task train examples per domain (balanced across labels, seeded)
    max_test: int = MAX_TEST
    max_length: int = TaskSettings.max_length  # tokens per end-task text
    probe_l2: float = TaskSettings.l2
    probe_max_iter: int = TaskSettings.max_iter
    finetune: bool = False  # also fine-tune every parameter on each task (the paper's protocol; slow)
    finetune_epochs: int = TaskSettings.epochs
    finetune_lr: float = TaskSettings.lr
    finetune_batch_size: int = TaskSettings.batch_size
    heldout_fraction: float = 0.05  # share of each corpus kept out of training for the MLM loss ...
    heldout_max_documents: int = 200  # ... at most this many documents
    heldout_batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_train", "max_test", "probe_max_iter", "finetune_epochs", "finetune_batch_size",
                     "heldout_max_documents", "heldout_batch_size"):
            if getattr(self, name) < 1:
                raise EvalError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 4096:
            raise EvalError(f"the end-task max_length must be within 8..4096, got {self.max_length}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise EvalError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise EvalError(f"finetune_lr must be a number > 0, got {self.finetune_lr}")
        if not (math.isfinite(self.probe_l2) and self.probe_l2 >= 0):
            raise EvalError(f"probe_l2 must be a number >= 0, got {self.probe_l2}")

    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.finetune else ("probe",)

    def compared(self) -> dict[str, Any]:
        """What decides the scores (the fine-tuning settings only when fine-tuning is on)."""
        values = dataclasses.asdict(self)
        if not self.finetune:
            values = {k: v for k, v in values.items() if not k.startswith("finetune_")}
        return values


@dataclass
class EvalPlan:
    domains: list[Path]  # domain folders, in the order they are learned
    methods: list[Method]
    seeds: list[int]
    base: str  # a model folder (resolved); `base_spec` is what the user named
    train: dict[str, Any] = field(default_factory=dict)  # DASConfig overrides every method shares (steps, lr, ...)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    base_spec: str = ""
    device: str = "cpu"
    prune_models: bool = False  # delete a stage's weights once the next stage is scored (saves disk)

    def __post_init__(self) -> None:
        if not self.domains:
            raise EvalError("give at least one domain folder")
        if not self.methods:
            raise EvalError("give at least one method")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EvalError(f"seeds must be distinct and at least one, got {self.seeds}")
        folders = [m.folder for m in self.methods]
        clash = sorted({f for f in folders if folders.count(f) > 1})
        if clash:
            raise EvalError(f"methods {[m.spec for m in self.methods if m.folder in clash]} share the folder "
                            f"name(s) {clash}; give each method once")
        if "seed" in self.train:
            raise EvalError("the seed is set by --seeds, not by the shared settings")
        check_overrides(self.train, what="the shared training settings")
        for method in self.methods:
            if method.trains:
                self.config(method, self.seeds[0])

    def config(self, method: Method, seed: int) -> DASConfig:
        """The DASConfig of one method and seed: shared settings, then the method's own, then the seed."""
        return check_overrides({**self.train, **method.overrides, "seed": seed}, what=f"method {method.spec!r}")

    def shared_config(self) -> dict[str, Any]:
        """DASConfig of the shared settings, seed left out: what run.json compares."""
        values = check_overrides(self.train, what="the shared training settings").to_dict()
        values.pop("seed")
        return values


def make_plan(domains: Sequence[str | Path], methods: str | Sequence[str], seeds: int, *, base: str,
              base_spec: str = "", train: dict[str, Any] | None = None, scoring: ScoringSettings | None = None,
              device: str = "cpu", prune_models: bool = False) -> EvalPlan:
    """An EvalPlan from the CLI's values: methods as 'base,ncl,das' (a comma inside a method's settings
    belongs to it: 'das:mask_mode=grad,negative_rule=abs,ncl' is two methods), seeds as a count."""
    if seeds < 1:
        raise EvalError(f"--seeds must be >= 1, got {seeds}")
    specs = split_methods(methods) if isinstance(methods, str) else list(methods)
    return EvalPlan(domains=[Path(d) for d in domains], methods=[parse_method(s) for s in specs],
                    seeds=list(range(seeds)), base=base, base_spec=base_spec or base, train=dict(train or {}),
                    scoring=scoring or ScoringSettings(), device=device, prune_models=prune_models)


@dataclass(frozen=True)
class Stage:
    """One model of the plan: a method and seed after `index` domains, and where its folder is."""

    method: Method
    seed: int
    index: int  # T: domains learned; 0 = the base model
    domain: str  # the domain learned in this stage ("base" for stage 0)

    def folder(self, out: Path) -> Path:
        method = "base" if self.index == 0 else self.method.folder
        return out / "runs" / method / f"seed-{self.seed}" / f"stage-{self.index}-{self.domain}"

    def label(self) -> str:
        if self.index == 0:
            return f"base model, seed {self.seed}"
        return f"{self.method.spec}, seed {self.seed}, stage {self.index} ({self.domain})"
