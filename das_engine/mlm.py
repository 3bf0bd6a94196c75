"""Forward passes and LM losses shared by training, importance and benchmarks.

A masked LM's loss is the MLM loss at masked positions; a causal LM's is the next-token loss (position t
predicts token t+1). Either way the LM head runs only at the positions that are scored: on a small
masked model the full-vocabulary projection of every token costs more than the whole encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .units import LMKind, ModelUnits

# the name of the LM loss in a step's loss parts and train_metrics.json's history, by kind
LOSS_PART: dict[LMKind, str] = {"masked": "mlm", "causal": "next_token"}


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the encoder (masked LM) or the decoder (causal LM), (B, T, D)."""
    # no KV cache: a training or scoring pass never reuses one (a causal LM's config asks for one by default)
    no_cache = {"use_cache": False} if getattr(model.config, "use_cache", False) else {}
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, **no_cache).last_hidden_state


def masked_lm_loss(units: ModelUnits, hidden: torch.Tensor, labels: torch.Tensor,
                   total: int | None = None) -> torch.Tensor:
    """Cross-entropy of the LM head evaluated at the labelled (masked) positions only: their mean, or with `total`
    their sum divided by it (a rank's share of a global batch's mean: `total` is the global batch's scored tokens)."""
    picked = labels != -100  # (B, T)
    logits = units.lm_logits(hidden[picked])  # (N_scored, V)
    if total is None:
        return F.cross_entropy(logits, labels[picked])
    return F.cross_entropy(logits, labels[picked], reduction="sum") / total


def next_token_loss(units: ModelUnits, hidden: torch.Tensor, labels: torch.Tensor,
                    total: int | None = None) -> torch.Tensor:
    """A causal LM's loss: the hidden state at t scored against label t+1 (labels are the inputs, -100 at padding);
    the mean over scored tokens, or with `total` their sum divided by it, as `masked_lm_loss`."""
    return masked_lm_loss(units, hidden[:, :-1], labels[:, 1:], total)


def lm_loss(units: ModelUnits, hidden: torch.Tensor, labels: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """The model's own LM loss: `masked_lm_loss` for a masked LM, `next_token_loss` for a causal one."""
    if units.kind == "causal":
        return next_token_loss(units, hidden, labels, total)
    return masked_lm_loss(units, hidden, labels, total)


def scored_tokens(kind: LMKind, labels: torch.Tensor) -> int:
    """How many tokens `lm_loss` scores in a batch with these labels (a causal LM's first label predicts nothing)."""
    return int(((labels[:, 1:] if kind == "causal" else labels) != -100).sum())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over non-padding tokens, (B, D)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
