"""Soft-masking: scale the learning of each unit's parameters by (1 - importance), or (1 - s * importance) at a
strength s below 1 (`DASConfig.softmask_strength`).

Masked parameters per layer l (the entries each unit owns, `units.LayerUnits.owned`):
- head h: rows h*d..(h+1)*d-1 of query, key and value (weights and biases), and the same
  columns of the attention output projection (its bias is shared by all heads: not masked);
  under grouped-query attention a key/value head's rows are shared by a group of query heads and
  learn at 1 - max(I) over the group; GPT-2's fused c_attn holds q, k and v side by side;
- intermediate neuron j: row j (and bias j) of the intermediate dense layer (a gated FFN: of the
  gate and the up projections);
- output neuron k: row k (and bias k) of the FFN output dense layer.
"Row" is the output feature: a column of a GPT-2 Conv1D weight, whose layout is (in, out).
Embeddings, LayerNorms and the LM head (MLM or next-token) are not masked, except with `protect_embeddings`:
- word-embedding row v: scaled by (1 - I_emb[v]). BERT and RoBERTa tie the word embeddings to
  the MLM decoder weight: that is one parameter, and it is masked once (every parameter appears
  in one entry at most). Only the rows with I_emb > 0 are touched (the vocabulary is most of a
  small model's weights), so a free row learns exactly as without the mask. GPT-2 (and Llama-family
  models with tie_word_embeddings) tie the next-token head the same way; an untied head is not masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .units import ModelUnits, UnitTensors


@dataclass
class SoftMask:
    """(parameter, multiplier broadcastable to it) pairs; multiplier = 1 - importance.

    `rows`: (parameter, row indices, multipliers (R, 1)) for masks that touch a few rows of a
    large matrix (the word embeddings).
    """

    entries: list[tuple[nn.Parameter, torch.Tensor]]
    rows: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def build(cls, units: ModelUnits, importance: UnitTensors, embeddings: bool = False,
              strength: float = 1.0) -> SoftMask:
        """Masks for every unit's parameters; `embeddings=True` masks the word-embedding rows too
        (by `importance.embeddings`, which must then be there). `strength` s: each unit learns at 1 - s * I
        (1: the paper's soft-mask; 0: as if unmasked)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"the soft-mask strength must be within 0..1, got {strength}")
        importance.check_shapes(units)
        if strength != 1.0:
            importance = importance.map(lambda t: strength * t)
        entries: list[tuple[nn.Parameter, torch.Tensor]] = []
        for idx, layer in enumerate(units.layers):
            for group, owned in layer.owned.items():  # head, intermediate, output
                unit_importance = getattr(importance, group)[idx]  # (U,)
                entries += [(o.param, o.keep(unit_importance)) for o in owned]
        rows = []
        if embeddings:
            if importance.embeddings is None:
                raise ValueError("protect_embeddings needs an importance with word-embedding rows ('embeddings')")
            weight = units.word_embeddings.weight  # the MLM decoder's weight too, when tied
            row_importance = importance.embeddings[0].to(weight.device)
            index = torch.nonzero(row_importance > 0).flatten()
            rows.append((weight, index, (1.0 - row_importance[index]).to(weight.dtype)[:, None]))
        params = [p for p, _ in entries] + [p for p, _, _ in rows]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter would be soft-masked twice (tied weights?)")
        return cls([(p, m.to(p.device, p.dtype)) for p, m in entries], rows)

    @torch.no_grad()
    def scale_gradients(self) -> None:
        """`grad` mode: multiply gradients by (1 - I), after backward and clipping."""
        for param, keep in self.entries:
            if param.grad is not None:
                param.grad.mul_(keep)
        for param, index, keep in self.rows:
            if param.grad is not None:
                param.grad.index_copy_(0, index, param.grad.index_select(0, index).mul_(keep))

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """`update` mode, before optimizer.step(): copies of the masked parameters (and rows)."""
        return ([param.detach().clone() for param, _ in self.entries]
                + [param.detach().index_select(0, index) for param, index, _ in self.rows])

    @torch.no_grad()
    def scale_updates(self, before: list[torch.Tensor]) -> None:
        """`update` mode, after optimizer.step(): p = p_old + (1 - I) * (p_new - p_old)."""
        whole, rows = before[:len(self.entries)], before[len(self.entries):]
        for (param, keep), old in zip(self.entries, whole, strict=True):
            param.sub_(old).mul_(keep).add_(old)
        for (param, index, keep), old in zip(self.rows, rows, strict=True):
            param.index_copy_(0, index, param.index_select(0, index).sub_(old).mul_(keep).add_(old))

