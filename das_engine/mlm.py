"""Forward passes shared by training, importance and benchmarks.

The MLM head runs only at masked positions: on a small model the full-vocabulary projection
of every token costs more than the whole encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .units import ModelUnits


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the encoder, (B, T, D)."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def masked_lm_loss(units: ModelUnits, hidden: torch.Tensor, labels: torch.Tensor,
                   total: int | None = None) -> torch.Tensor:
    """Cross-entropy of the MLM head evaluated at the masked positions only: their mean, or with `total` their sum
    divided by it (a rank's share of a global batch's mean: `total` is the global batch's masked tokens)."""
    picked = labels != -100  # (B, T)
    logits = units.mlm_head(hidden[picked])  # (N_masked, V)
    if total is None:
        return F.cross_entropy(logits, labels[picked])
    return F.cross_entropy(logits, labels[picked], reduction="sum") / total


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over non-padding tokens, (B, D)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
