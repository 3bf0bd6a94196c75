"""End tasks: user classifiers on top of the continually adapted backbone, and the forgetting gate.

Read top to bottom: pooled features, the probe (the default kind: frozen backbone, multinomial
logistic regression on the pooled features), fine-tuning (the paper's protocol: every parameter
trained), scores, and the gate that refuses a candidate version whose score on a task dropped by
more than allowed and by more than sampling noise.

Everything is deterministic given a seed: the probe draws nothing random at all, fine-tuning
seeds its own generators (and leaves the caller's random state as it was), the bootstrap uses a
seeded NumPy generator. Labeled data is read and checked by das_formats.task_data (no torch: the
API checks uploads with it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from das_formats.config import model_max_length
from das_formats.task_data import LabeledSet, TaskSettings, label_ids

from .loading import load_pretrained, load_tokenizer
from .mlm import mean_pool
from .precision import model_device
from .task_scores import TaskScores, score

PROBE_WEIGHTS = "probe.safetensors"
PROBE_META = "probe.json"
PROBE_FORMAT = "das-probe"
PROBE_FORMAT_VERSION = 1
SERVED_MAX_TOKENS = 512  # the most tokens per text the service reads, whatever the model holds


# --- features -------------------------------------------------------------------------------------


def served_max_tokens(config) -> int:
    """Tokens per text (specials in) that the service reads with a model: what its position embeddings
    hold (`das_formats.config.model_max_length`, the bound adaptation jobs are checked against too), at
    most 512. Probes are fitted on features truncated exactly like the served ones."""
    return min(model_max_length(config.to_dict()) or SERVED_MAX_TOKENS, SERVED_MAX_TOKENS)


@torch.inference_mode()
def pooled_features(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int,
                    batch_size: int = 64, on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The embeddings the service serves: mean of the last hidden states over real tokens, L2-normalised.

    `model` is a masked or a causal LM (its encoder or decoder stack, `model.base_model`, runs in eval mode).
    Returns (N, D) float32 on the CPU, row i for texts[i]. `on_batch(texts done, texts)` after each batch.
    """
    out = torch.zeros(len(texts), model.config.hidden_size)
    done = 0
    with _eval_mode(model):
        for rows, input_ids, attention_mask in _length_sorted_batches(tokenizer, texts, max_length, batch_size,
                                                                      model_device(model)):
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)  # hidden (B, T, D) -> (B, D)
            out[rows] = pooled.cpu()
            done += len(rows)
            if on_batch is not None:
                on_batch(done, len(texts))
    return out


def _length_sorted_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int,
                           device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(rows, input_ids, attention_mask) per batch; longest texts first, so each batch pads little
    and the biggest batch comes first (a memory error shows at once). rows: (B,) positions in `texts`."""
    if not texts:
        return
    ids = _encode(tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep their order
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention_mask = _padded([ids[i] for i in rows], _pad_id(tokenizer))
        yield torch.tensor(rows), input_ids.to(device), attention_mask.to(device)


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, specials included, truncated to max_length."""
    _pad_id(tokenizer)
    return tokenizer(list(texts), truncation=True, max_length=max_length, verbose=False)["input_ids"]


def _pad_id(tokenizer) -> int:
    """What batches are padded with (masked out of every pass): the pad token, else, for a causal LM's tokenizer
    without one (GPT-2's), its end-of-text token."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-text token; batching needs one")
    return pad_id


def _padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), (B, T) each, T the longest row."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: the same text gives the same output) for the block, then the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --- probe: frozen backbone, logistic regression on pooled features ------------------------------


@dataclass
class ProbeConfig:
    """Multinomial logistic regression on standardised features, fitted by full-batch L-BFGS.

    The loss is mean cross-entropy + l2 * ||W||^2 (the bias is not penalised). It is convex and
    starts from zero, and L-BFGS on the full batch draws nothing random: the same features give
    the same head. `seed` is recorded with the head for the record; the fit does not need it.
    """

    l2: float = TaskSettings.l2
    max_iter: int = TaskSettings.max_iter
    seed: int = TaskSettings.seed

    @classmethod
    def of(cls, settings: TaskSettings) -> ProbeConfig:
        """The probe fit a registered task's settings ask for."""
        return cls(l2=settings.l2, max_iter=settings.max_iter, seed=settings.seed)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"ProbeConfig.l2 must be a finite number >= 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"ProbeConfig.max_iter must be >= 1, got {self.max_iter}")


class ProbeHead(nn.Module):
    """Standardise the features with the train mean/std, then a linear layer: (N, D) -> logits (N, L)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 label_names: Sequence[str], config: ProbeConfig) -> None:
        super().__init__()
        n_labels, dim = weight.shape
        if mean.shape != (dim,) or std.shape != (dim,) or bias.shape != (n_labels,) or len(label_names) != n_labels:
            raise ValueError(f"probe shapes disagree: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                             f"mean {tuple(mean.shape)}, std {tuple(std.shape)}, {len(label_names)} label names")
        self.register_buffer("mean", mean.float().clone())  # (D,)
        self.register_buffer("std", std.float().clone())  # (D,), > 0
        self.linear = nn.Linear(dim, n_labels)
        with torch.no_grad():
            self.linear.weight.copy_(weight)  # (L, D)
            self.linear.bias.copy_(bias)  # (L,)
        self.label_names = tuple(label_names)
        self.config = config

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, D) -> logits (N, L); column i is label_names[i]."""
        return self.linear((features.float() - self.mean) / self.std)

    def save(self, folder: Path) -> None:
        """probe.safetensors (mean, std, weight, bias) and probe.json (labels, config, dims); nothing pickled."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous(),
                   "weight": self.linear.weight.detach().contiguous(), "bias": self.linear.bias.detach().contiguous()},
                  str(folder / PROBE_WEIGHTS))
        meta = {"format": PROBE_FORMAT, "format_version": PROBE_FORMAT_VERSION, "label_names": list(self.label_names),
                "feature_dim": self.linear.in_features, "n_labels": self.linear.out_features,
                "config": asdict(self.config)}
        (folder / PROBE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> ProbeHead:
        """The head `save` wrote into `folder` (in eval mode)."""
        folder = Path(folder)
        meta = json.loads((folder / PROBE_META).read_text(encoding="utf-8"))
        if meta.get("format") != PROBE_FORMAT or meta.get("format_version") != PROBE_FORMAT_VERSION:
            raise ValueError(f"{folder / PROBE_META}: not a probe of format {PROBE_FORMAT} "
                             f"version {PROBE_FORMAT_VERSION}")
        tensors = load_file(str(folder / PROBE_WEIGHTS))
        head = cls(tensors["mean"], tensors["std"], tensors["weight"], tensors["bias"], meta["label_names"],
                   ProbeConfig(**meta["config"]))
        if (head.linear.in_features, head.linear.out_features) != (meta["feature_dim"], meta["n_labels"]):
            raise ValueError(f"{folder}: the weights' shape disagrees with {PROBE_META}")
        return head.eval()


def fit_probe(features: torch.Tensor, labels: Sequence[str], label_names: Sequence[str],
              config: ProbeConfig) -> ProbeHead:
    """A ProbeHead fitted on features (N, D) with labels[i] the label of row i (one of label_names)."""
    if features.ndim != 2 or features.shape[0] != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_probe needs features (N, D) with N = len(labels) > 0; got {tuple(features.shape)} "
                         f"and {len(labels)} labels")
    ids = label_ids(labels, label_names)
    # a caller under inference_mode or no_grad must not switch the fit's gradients off
    with torch.inference_mode(False), torch.enable_grad():
        y = torch.tensor(ids)  # (N,)
        x = features.detach().to("cpu", torch.float64)  # (N, D); float64 lets L-BFGS converge tightly
        mean = x.mean(0)  # (D,)
        std = x.std(0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature stays as it is
        z = (x - mean) / std  # (N, D)
        weight = torch.zeros(len(label_names), x.shape[1], dtype=torch.float64, requires_grad=True)  # (L, D)
        bias = torch.zeros(len(label_names), dtype=torch.float64, requires_grad=True)  # (L,)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=config.max_iter, history_size=20,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, y) + config.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return ProbeHead(mean, std, weight.detach(), bias.detach(), label_names, config).eval()


# --- fine-tuning: every parameter, the paper's protocol -----------------------------------------


@dataclass
class FinetuneConfig:
    """End-task fine-tuning (SPEC-DAS: AdamW lr 3e-5, batch 16, weight decay 0.01, all parameters)."""

    lr: float = TaskSettings.lr
    epochs: int = TaskSettings.epochs
    batch_size: int = TaskSettings.batch_size
    max_length: int = TaskSettings.max_length  # tokens per text, specials included
    seed: int = TaskSettings.seed  # classifier initialisation, batch order, dropout
    warmup_ratio: float = 0.1  # share of the steps with a linear warm-up; then linear decay to 0
    weight_decay: float = 0.01  # on matrices only (not biases or LayerNorm gains)
    max_grad_norm: float | None = 1.0  # clip gradients (None: no clipping)

    @classmethod
    def of(cls, settings: TaskSettings) -> FinetuneConfig:
        """The fine-tuning a registered task's settings ask for."""
        return cls(lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size,
                   max_length=settings.max_length, seed=settings.seed)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 4096:
            raise ValueError(f"FinetuneConfig.max_length must be within 8..4096, got {self.max_length}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"FinetuneConfig.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"FinetuneConfig.warmup_ratio must be within [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"FinetuneConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"FinetuneConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def finetune(backbone_folder: Path, train: LabeledSet, config: FinetuneConfig, *, device: str | torch.device = "cpu",
             on_step: Callable[[int, int, float], None] | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Fine-tune a sequence classifier on `train`, starting from the masked LM in `backbone_folder`.

    Class i is train.label_names[i] (the model's id2label). `on_step(step, total, loss)` is called
    after each optimizer step (step counts from 1); raising from it stops the run. Returns
    (model in eval mode on `device`, tokenizer); the caller saves them with `save_pretrained`.
    """
    device = torch.device(device)
    label_names = train.label_names
    y = torch.tensor(train.label_ids(label_names))  # (N,)
    with _seeded(config.seed, device):
        model = load_pretrained(
            AutoModelForSequenceClassification, backbone_folder, num_labels=len(label_names), use_safetensors=True,
            id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)})
        tokenizer = load_tokenizer(backbone_folder)
        model.to(device).train()
        ids = _encode(tokenizer, train.texts, config.max_length)
        total = config.epochs * math.ceil(len(ids) / config.batch_size)
        optimizer = _adamw(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, config.warmup_ratio))
        step = 0
        for epoch in range(config.epochs):
            order = _epoch_order(len(ids), config.seed, epoch)
            for start in range(0, len(order), config.batch_size):
                rows = order[start:start + config.batch_size]
                input_ids, attention_mask = _padded([ids[i] for i in rows], tokenizer.pad_token_id)  # (B, T)
                loss = _train_step(model, optimizer, input_ids.to(device), attention_mask.to(device),
                                   y[rows].to(device), config.max_grad_norm)
                scheduler.step()
                step += 1
                if on_step is not None:
                    on_step(step, total, loss)
    return model.eval(), tokenizer


@torch.inference_mode()
def classify_logits(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int,
                    batch_size: int = 32) -> torch.Tensor:
    """Logits of a sequence classifier (eval mode), (N, L) float32 on the CPU, row i for texts[i]."""
    out = torch.zeros(len(texts), model.config.num_labels)
    with _eval_mode(model):
        for rows, input_ids, attention_mask in _length_sorted_batches(tokenizer, texts, max_length, batch_size,
                                                                      model_device(model)):
            out[rows] = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().cpu()
    return out


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators (classifier init, dropout) for the block; the caller's state comes back after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, y: torch.Tensor, max_grad_norm: float | None) -> float:
    """One optimizer step on one batch (B, T) with labels y (B,); returns the batch's loss."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def _adamw(model: nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and LayerNorm gains are 1-d)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warm-up over the first warmup_ratio of the steps, then linear decay to 0 at the last."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation of the n examples for one epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


# --- one path from labeled data to a scored task model: the gate, the service's fits and `das eval` ---


@dataclass
class ProbeFit:
    head: ProbeHead
    scores: TaskScores | None  # on the eval set, with the predictions; None without one
    fit_seconds: float  # the fit alone (not the features, not the scoring)


def probe_task(train_x: torch.Tensor, train: LabeledSet, label_names: Sequence[str], config: ProbeConfig,
               eval_x: torch.Tensor | None = None, evals: LabeledSet | None = None) -> ProbeFit:
    """Fit a probe on the train features (N, D) and score it on the eval features (M, D), if given.

    Class i is label_names[i]; the features are the caller's (pooled_features, truncated as it serves)."""
    started = time.perf_counter()
    head = fit_probe(train_x, train.labels, label_names, config)
    seconds = time.perf_counter() - started
    if eval_x is None or evals is None:
        return ProbeFit(head, None, seconds)
    predictions = head(eval_x).argmax(-1).tolist()
    return ProbeFit(head, score(label_ids(evals.labels, label_names), predictions, len(label_names)), seconds)


@dataclass
class FinetuneFit:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    scores: TaskScores | None  # on the eval set, with the predictions; None without one
    fit_seconds: float  # the fine-tuning alone (not the scoring)


def finetune_task(backbone_folder: Path, train: LabeledSet, config: FinetuneConfig, evals: LabeledSet | None = None,
                  *, device: str | torch.device = "cpu",
                  on_step: Callable[[int, int, float], None] | None = None) -> FinetuneFit:
    """Fine-tune every parameter on `train` (see `finetune`), and score the result on `evals`, if given.
    Class i is train.label_names[i]."""
    started = time.perf_counter()
    model, tokenizer = finetune(backbone_folder, train, config, device=device, on_step=on_step)
    seconds = time.perf_counter() - started
    if evals is None:
        return FinetuneFit(model, tokenizer, None, seconds)
    predictions = classify_logits(model, tokenizer, evals.texts, max_length=config.max_length).argmax(-1).tolist()
    names = train.label_names
    return FinetuneFit(model, tokenizer, score(label_ids(evals.labels, names), predictions, len(names)), seconds)
