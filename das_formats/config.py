"""DASConfig: every setting of one continual DAS step, saved beside the weights it produced."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MaskMode = Literal["grad", "update"]
NegativeRule = Literal["clamp", "abs"]
MergeWeighting = Literal["uniform", "importance"]
Precision = Literal["fp32", "bf16"]
MAX_SEED = 2**32 - 1


@dataclass
class DASConfig:
    """Every setting of one step. Two switch DAS's parts:

    - `softmask=False` is the NCL baseline (plain continual MLM): no general or domain importance
      pass, no soft-mask, no contrastive term (`contrastive_weight` is ignored, whatever its value),
      with the same data, optimizer, schedule and checkpoints. An incoming importance
      (`prev_importance`) is handed on unchanged as importance_in and importance (so the next DAS
      step trains against what the chain had); no domain_importance is written, and without an
      incoming importance no importance file is written at all (the next DAS step then computes
      I(0) of its base, as for a first domain).
    - `protect_embeddings=True` (the default, beyond the paper) soft-masks the word-embedding rows too,
      by a per-row importance (the key "embeddings" in the importance files). With `softmask=False` it is
      ignored, like `contrastive_weight`. docs/results.md has the evidence for the default.

    A causal base (Llama, Qwen2, Gemma, GPT-2) takes the same settings and needs none of its own: "MLM" in a name
    or a help text then means its next-token loss (`mlm_pass_as_anchor`: the LM pass doubles as o_full;
    `merge_max_rise`: the held-out next-token loss), and `mlm_probability` is ignored (nothing is masked).
    """

    # --- training ---
    steps: int = field(default=300, metadata={"help": "optimizer steps for this domain"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    max_length: int = field(default=128, metadata={"help": "tokens per packed block, specials included"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps for linear warm-up"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip gradients (None: no clipping)"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of tokens masked for MLM (masked LMs; a "
                                   "causal LM masks nothing and ignores it)"})
    seed: int = field(default=0, metadata={"help": "seed for data order, masking, dropout and samples"})
    precision: Precision = field(default="fp32", metadata={"help": "'bf16' runs the forward passes (training "
                                 "and importance) under bf16 autocast; weights, optimizer state, importance "
                                 "and soft-mask arithmetic stay fp32"})
    # --- soft-masking ---
    softmask: bool = field(default=True, metadata={"help": "False: plain continual MLM (NCL): no importance, "
                           "no masks, no contrastive term (contrastive_weight and protect_embeddings are then "
                           "ignored); an incoming "
                           "importance is handed on unchanged"})
    mask_mode: MaskMode = field(default="update", metadata={"help": "'update' scales the optimizer "
                                "update by (1-I); 'grad' scales gradients (the paper)"})
    softmask_strength: float = field(default=1.0, metadata={"help": "s: each unit learns at 1 - s * I(<=t-1) "
                                     "(1: the paper's soft-mask; lower lets important units learn more; beyond "
                                     "the paper)"})
    protect_embeddings: bool = field(default=True, metadata={"help": "also soft-mask the word-embedding rows "
                                     "(tied to the MLM decoder) by a per-row importance (beyond the paper; "
                                     "ignored with softmask=False)"})
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
    contrastive_samples: int = field(default=0, metadata={"help": "the first k samples of each batch get the "
                                     "contrastive passes (a cheaper term, beyond the paper); 0: every sample"})
    # --- what a version keeps: replay and merge (beyond the paper; docs/results.md has the evidence) ---
    replay_fraction: float = field(default=0.0, metadata={"help": "share of each batch drawn from the corpora the "
                                   "lineage learned before (0..0.9; nothing to draw from: 0); same steps, same "
                                   "batch size"})
    merge_alpha: float = field(default=1.0, metadata={"help": "the candidate keeps this share of what training "
                               "changed: parent + a * (trained - parent); 1: the trained model, 0: the parent"})
    merge_weighting: MergeWeighting = field(default="uniform", metadata={"help": "'importance' gives each unit the "
                                            "share a * (1 - I(<=t-1)), so units the earlier domains need stay "
                                            "nearer the parent (needs softmask or track_importance)"})
    merge_auto: bool = field(default=False, metadata={"help": "choose a on the grid 0.25..1: the largest that drops "
                             "no registered task and keeps the earlier domains' held-out loss within "
                             "merge_max_rise (merge_alpha is then ignored)"})
    merge_max_rise: float = field(default=0.05, metadata={"help": "merge_auto's bound on the earlier domains' mean "
                                  "held-out MLM loss rise over the parent (nats)"})
    track_importance: bool = field(default=False, metadata={"help": "with softmask=False, still compute and "
                                   "accumulate the importance (the history a version serves), without using it "
                                   "to mask"})
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
        # bounds written as "within", so that NaN (every comparison False) is refused too
        if not 0.0 < self.lr <= 1.0:
            raise ValueError(f"DASConfig.lr must be in (0, 1], got {self.lr}")
        if not 1e-3 <= self.temperature <= 10.0:
            raise ValueError(f"DASConfig.temperature must be within 0.001..10, got {self.temperature}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"DASConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ValueError(f"DASConfig.weight_decay must be within 0..1, got {self.weight_decay}")
        if not 0.0 <= self.contrastive_weight <= 100.0:
            raise ValueError(f"DASConfig.contrastive_weight must be within 0..100, got {self.contrastive_weight}")
        if self.contrastive_samples != 0 and not 2 <= self.contrastive_samples <= self.batch_size:
            raise ValueError(f"DASConfig.contrastive_samples must be 0 (every sample) or within 2..batch_size "
                             f"({self.batch_size}), got {self.contrastive_samples}")
        if not 0.0 <= self.softmask_strength <= 1.0:
            raise ValueError(f"DASConfig.softmask_strength must be within 0..1, got {self.softmask_strength}")
        if not 0.0 <= self.replay_fraction <= 0.9:
            raise ValueError(f"DASConfig.replay_fraction must be within 0..0.9, got {self.replay_fraction}")
        if not 0.0 <= self.merge_alpha <= 1.0:
            raise ValueError(f"DASConfig.merge_alpha must be within 0..1, got {self.merge_alpha}")
        if self.merge_weighting not in ("uniform", "importance"):
            raise ValueError(f"DASConfig.merge_weighting must be 'uniform' or 'importance', "
                             f"got {self.merge_weighting!r}")
        if self.merge_weighting == "importance" and not self.uses_importance:
            raise ValueError("DASConfig.merge_weighting='importance' needs an importance: set softmask=True or "
                             "track_importance=True")
        if not 0.0 <= self.merge_max_rise <= 10.0:
            raise ValueError(f"DASConfig.merge_max_rise must be within 0..10 nats, got {self.merge_max_rise}")
        if self.max_grad_norm is not None and not 0.0 < self.max_grad_norm < math.inf:
            raise ValueError(f"DASConfig.max_grad_norm must be a finite number > 0 or None, got {self.max_grad_norm}")
        if self.checkpoint_every < 0:
            raise ValueError(f"DASConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"DASConfig.seed must be within 0..{MAX_SEED}, got {self.seed}")

    @property
    def uses_importance(self) -> bool:
        """The run computes importance: to soft-mask with it, or only to keep the history (track_importance)."""
        return self.softmask or self.track_importance

    @property
    def merges(self) -> bool:
        """The candidate is not simply the trained model: a fixed share below 1, a weighted or a chosen one."""
        return self.merge_auto or self.merge_alpha < 1.0 or self.merge_weighting == "importance"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DASConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DASConfig fields: {sorted(unknown)}")
        return cls(**values)


# What an upload, `das adapt` and `das demo` get for each setting they do not give: DASConfig's defaults, changed where
# the evidence says so (docs/results.md, "Adaptation that pays"). DASConfig() itself stays the reference point that
# every evaluation method is defined from (DAS as the spec has it, the options beyond it at their neutral values), so
# runs and evaluations made before stay comparable.
UPLOAD_DEFAULTS: dict[str, Any] = {
    "softmask": True,  # DAS's soft-mask against the cumulative importance: each unit learns at 1 - s * I(<=t-1)
    "softmask_strength": 0.5,  # s: at 1 the soft-mask kept at most 89% of ncl's gain at any merge share (seed 0)
    "contrastive_weight": 0.0,  # the contrastive term doubles a step's cost and has shown nothing measurable
    "replay_fraction": 0.25,
    "merge_alpha": 0.85,  # with s = 0.5: 89% of ncl's gain, 6% of its held-out MLM forgetting (seed 0)
}


def upload_config(values: dict[str, Any]) -> DASConfig:
    """The settings of an upload or a CLI run: UPLOAD_DEFAULTS under the values given."""
    return DASConfig.from_dict({**UPLOAD_DEFAULTS, **values})


def ranks_problem(config: DASConfig, ranks: int) -> str | None:
    """Why these settings cannot train on `ranks` processes (each takes the same number of rows of the global batch,
    and of its contrastive anchors); None when they can."""
    if ranks <= 1:
        return None
    if config.batch_size % ranks:
        return (f"batch_size {config.batch_size} does not divide over the {ranks} training processes: give a "
                f"multiple of {ranks} (it is the global batch)")
    if config.contrastive_samples % ranks:
        return (f"contrastive_samples {config.contrastive_samples} does not divide over the {ranks} training "
                f"processes: give 0 or a multiple of {ranks}")
    return None


def corpus_problem(config: DASConfig, documents: list[str]) -> str | None:
    """Why these settings cannot train on this corpus (checked by the trainer and by an upload before it is queued);
    None when they can."""
    if config.merge_auto and len(set(documents)) < 2:
        return (f"merge_auto keeps a validation slice of the corpus out of training, and the corpus has "
                f"{len(set(documents))} distinct document(s): give at least 2, or set merge_alpha instead")
    return None


@dataclass(frozen=True)
class SettingField:
    """One DASConfig field as an interface shows it: the CLI's options and the upload's form fields."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None  # a Literal field's values
    optional: bool = False  # None is a value (say, max_grad_norm: no clipping)


def setting_fields(settings_class: type | None = None) -> list[SettingField]:
    """Every field of a settings dataclass (DASConfig unless told), in order: one source for the
    engine, the CLI and the API. Each field has metadata["help"]. DASConfig's defaults are an upload's
    (UPLOAD_DEFAULTS over the dataclass's)."""
    settings_class = settings_class or DASConfig
    defaults = UPLOAD_DEFAULTS if settings_class is DASConfig else {}
    hints = typing.get_type_hints(settings_class)
    found = []
    for f in dataclasses.fields(settings_class):
        kind, choices, optional = hints[f.name], None, False
        if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
            kind, optional = next(a for a in typing.get_args(kind) if a is not type(None)), True
        if typing.get_origin(kind) is Literal:
            choices, kind = tuple(typing.get_args(kind)), str
        found.append(SettingField(f.name, kind, defaults.get(f.name, f.default), f.metadata["help"], choices, optional))
    return found


# ------------------------------------------------------------------ cost limits, checked before any work
# model families whose position ids start after the padding index (`padding_idx + 1`), so that
# `max_position_embeddings - (pad_token_id + 1)` positions are left for tokens
POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm",
                                     "xlm-roberta-xl", "data2vec-text", "longformer", "mpnet"})


def model_max_length(model_config: dict[str, Any]) -> int | None:
    """Tokens one sequence may hold in a model, from its config.json (a dict; torch-free); None if unknown.

    BERT uses every position embedding; the RoBERTa family reserves `padding_idx + 1` of them.
    """
    positions = model_config.get("max_position_embeddings", model_config.get("n_positions"))  # n_positions: GPT-2
    if not isinstance(positions, int) or positions < 1:
        return None
    if model_config.get("model_type") in POSITIONS_AFTER_PADDING:
        pad = model_config.get("pad_token_id")
        positions -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return positions


@dataclass(frozen=True)
class ConfigLimits:
    """The most a job may ask for: from the service's settings and from the model it adapts."""

    max_steps: int
    max_batch_size: int  # batch_size and importance_batch_size
    max_length: int  # the service's ceiling on max_length
    max_tokens_per_batch: int  # batch_size * max_length and importance_batch_size * max_length
    max_importance_samples: int
    model_max_length: int | None = None  # what the model's position embeddings hold (model_max_length())


class LimitError(ValueError):
    """A setting is over its limit; names the field, the value and the limit."""

    def __init__(self, field: str, value: Any, limit: int, limit_name: str, why: str = "") -> None:
        self.field, self.value, self.limit, self.limit_name = field, value, limit, limit_name
        super().__init__(f"{field}={value} exceeds the limit of {limit}{why}")


def check_limits(config: DASConfig, limits: ConfigLimits) -> None:
    """Raise LimitError for the first setting of `config` over `limits` (the one place uploads and the CLI check)."""
    bounds = [("steps", config.steps, limits.max_steps, "max_steps", ""),
              ("batch_size", config.batch_size, limits.max_batch_size, "max_batch_size", ""),
              ("importance_batch_size", config.importance_batch_size, limits.max_batch_size, "max_batch_size", ""),
              ("importance_samples", config.importance_samples, limits.max_importance_samples,
               "max_importance_samples", ""),
              ("max_length", config.max_length, limits.max_length, "max_length", "")]
    if limits.model_max_length is not None:
        bounds.append(("max_length", config.max_length, limits.model_max_length, "model_max_length",
                       " (the tokens the model's position embeddings hold)"))
    for name in ("batch_size", "importance_batch_size"):
        tokens = getattr(config, name) * config.max_length
        bounds.append((f"{name} * max_length", tokens, limits.max_tokens_per_batch, "max_tokens_per_batch",
                       " tokens per forward pass"))
    # run control: a period longer than the longest run means the same as the longest run
    bounds += [("checkpoint_every", config.checkpoint_every, limits.max_steps, "max_steps", ""),
               ("log_every", config.log_every, limits.max_steps, "max_steps", "")]
    for field_name, value, limit, limit_name, why in bounds:
        if value > limit:
            raise LimitError(field_name, value, limit, limit_name, why)
