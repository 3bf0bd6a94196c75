"""Contrastive knowledge integration: InfoNCE with the sample's own second pass as positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, previous: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """anchor, positive, previous: (B, D) pooled representations.

    For sample i: -log( e^{s(a_i, p_i)/tau} / sum_j [ e^{s(a_i, p_j)/tau} + e^{s(a_i, prev_j)/tau} ] ),
    s = cosine similarity. Row i's positive is column i (its own second pass).
    """
    a = F.normalize(anchor, dim=-1)
    to_positives = a @ F.normalize(positive, dim=-1).T  # (B, B)
    to_previous = a @ F.normalize(previous, dim=-1).T  # (B, B)
    logits = torch.cat([to_positives, to_previous], dim=1) / temperature  # (B, 2B)
    targets = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, targets)
