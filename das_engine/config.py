"""DASConfig: every setting of one continual DAS step, saved beside the weights it produced."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MaskMode = Literal["grad", "update"]
NegativeRule = Literal["clamp", "abs"]
Precision = Literal["fp32", "bf16"]


@dataclass
class DASConfig:
    # --- training ---
    steps: int = field(default=300, metadata={"help": "optimizer steps for this domain"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    max_length: int = field(default=128, metadata={"help": "tokens per packed block, specials included"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps for linear warm-up"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip gradients (None: no clipping)"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of tokens masked for MLM"})
    seed: int = field(default=0, metadata={"help": "seed for data order, masking, dropout and samples"})
    precision: Precision = field(default="fp32", metadata={"help": "'bf16' runs the forward passes (training "
                                 "and importance) under bf16 autocast; weights, optimizer state, importance "
                                 "and soft-mask arithmetic stay fp32"})
    # --- soft-masking ---
    mask_mode: MaskMode = field(default="update", metadata={"help": "'update' scales the optimizer "
                                "update by (1-I); 'grad' scales gradients (the paper)"})
    # --- importance ---
    negative_rule: NegativeRule = field(default="clamp", metadata={"help": "after tanh: 'clamp' = max(0,.),"
                                        " 'abs' = |.| (the authors' code)"})
    importance_samples: int = field(default=256, metadata={"help": "sequences sampled for each importance pass"})
    importance_batch_size: int = field(default=16, metadata={"help": "batch size of importance passes"})
    # --- contrastive knowledge integration ---
    contrastive_weight: float = field(default=1.0, metadata={"help": "lambda; 0 turns the term off"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature tau"})
    mlm_pass_as_anchor: bool = field(default=True, metadata={"help": "the MLM pass doubles as o_full"})
    prev_pass_no_grad: bool = field(default=True, metadata={"help": "o_prev is a fixed negative"})
    # --- run control ---
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints (0: none)"})
    log_every: int = field(default=10, metadata={"help": "steps between loss records in train_metrics"})

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "importance_samples", "importance_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DASConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 4096:
            raise ValueError(f"DASConfig.max_length must be within 8..4096, got {self.max_length}")
        if self.mask_mode not in ("grad", "update"):
            raise ValueError(f"DASConfig.mask_mode must be 'grad' or 'update', got {self.mask_mode!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"DASConfig.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.negative_rule not in ("clamp", "abs"):
            raise ValueError(f"DASConfig.negative_rule must be 'clamp' or 'abs', got {self.negative_rule!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"DASConfig.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("DASConfig.lr and DASConfig.temperature must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"DASConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.contrastive_weight < 0 or self.weight_decay < 0 or self.checkpoint_every < 0:
            raise ValueError("contrastive_weight, weight_decay and checkpoint_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DASConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DASConfig fields: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class SettingField:
    """One DASConfig field as an interface shows it: the CLI's options and the upload's form fields."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None  # a Literal field's values
    optional: bool = False  # None is a value (say, max_grad_norm: no clipping)


def setting_fields() -> list[SettingField]:
    """Every DASConfig field, in order: one source for the engine, the CLI and the API."""
    hints = typing.get_type_hints(DASConfig)
    found = []
    for f in dataclasses.fields(DASConfig):
        kind, choices, optional = hints[f.name], None, False
        if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
            kind, optional = next(a for a in typing.get_args(kind) if a is not type(None)), True
        if typing.get_origin(kind) is Literal:
            choices, kind = tuple(typing.get_args(kind)), str
        found.append(SettingField(f.name, kind, f.default, f.metadata["help"], choices, optional))
    return found
