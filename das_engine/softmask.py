"""Soft-masking: scale the learning of each unit's parameters by (1 - importance).

Masked parameters per layer l:
- head h: rows h*d..(h+1)*d-1 of query, key and value (weights and biases), and the same
  columns of the attention output projection (its bias is shared by all heads: not masked);
- intermediate neuron j: row j (and bias j) of the intermediate dense layer;
- output neuron k: row k (and bias k) of the FFN output dense layer.
Embeddings, LayerNorms and the MLM head are not masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .units import ModelUnits, UnitTensors


@dataclass
class SoftMask:
    """(parameter, multiplier broadcastable to it) pairs; multiplier = 1 - importance."""

    entries: list[tuple[nn.Parameter, torch.Tensor]]

    @classmethod
    def build(cls, units: ModelUnits, importance: UnitTensors) -> SoftMask:
        importance.check_shapes(units)
        entries: list[tuple[nn.Parameter, torch.Tensor]] = []
        for idx, layer in enumerate(units.layers):
            keep_head = (1.0 - importance.head[idx]).repeat_interleave(units.head_size)  # (H*d,)
            keep_inter = 1.0 - importance.intermediate[idx]  # (I,)
            keep_out = 1.0 - importance.output[idx]  # (D,)
            for linear in (layer.query, layer.key, layer.value):
                entries += _rows(linear, keep_head)
            entries.append((layer.attention_output.weight, keep_head[None, :]))  # columns
            entries += _rows(layer.intermediate, keep_inter)
            entries += _rows(layer.output, keep_out)
        return cls([(p, m.to(p.device, p.dtype)) for p, m in entries])

    @torch.no_grad()
    def scale_gradients(self) -> None:
        """`grad` mode: multiply gradients by (1 - I), after backward and clipping."""
        for param, keep in self.entries:
            if param.grad is not None:
                param.grad.mul_(keep)

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """`update` mode, before optimizer.step(): copies of the masked parameters."""
        return [param.detach().clone() for param, _ in self.entries]

    @torch.no_grad()
    def scale_updates(self, before: list[torch.Tensor]) -> None:
        """`update` mode, after optimizer.step(): p = p_old + (1 - I) * (p_new - p_old)."""
        for (param, keep), old in zip(self.entries, before, strict=True):
            param.sub_(old).mul_(keep).add_(old)


def _rows(linear: nn.Linear, keep: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
    pairs = [(linear.weight, keep[:, None])]
    if linear.bias is not None:
        pairs.append((linear.bias, keep))
    return pairs
