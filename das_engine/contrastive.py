"""Contrastive knowledge integration: InfoNCE with the sample's own second pass as positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import full_precision


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, previous: torch.Tensor,
                     temperature: float, first_target: int = 0, reduction: str = "mean") -> torch.Tensor:
    """anchor: (B, D), positive and previous: (B', D) pooled representations (B' = B on one process).

    For sample i: -log( e^{s(a_i, p_i)/tau} / sum_j [ e^{s(a_i, p_j)/tau} + e^{s(a_i, prev_j)/tau} ] ),
    s = cosine similarity. Row i's positive is column first_target + i (its own second pass; on a rank, the
    columns are every rank's samples, and its own start at first_target). Computed in fp32
    even under bf16 autocast: dividing by tau = 0.05 would magnify bf16's rounding of s twentyfold.
    """
    with full_precision(anchor.device):
        a = _unit_rows(anchor)
        to_positives = a @ _unit_rows(positive).T  # (B, B')
        to_previous = a @ _unit_rows(previous).T  # (B, B')
        logits = torch.cat([to_positives, to_previous], dim=1) / temperature  # (B, 2B')
        targets = first_target + torch.arange(anchor.shape[0], device=anchor.device)  # sample i's own column
        return F.cross_entropy(logits, targets, reduction=reduction)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1, in fp32 at least (fp64 stays fp64)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)
