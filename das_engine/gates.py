"""Gates: multiply every unit's output by a gate value, through hooks on the model's own modules.

transformers 5 has no `head_mask`, so heads are gated by a forward pre-hook on the attention
output projection (its input is the concatenation of the heads' context vectors), and FFN
neurons by forward hooks on the two dense layers. Gates are [L, U] (shared by the batch) or
[B, L, U] (one row per sample, for concatenated passes). Hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .units import ModelUnits, UnitTensors


def _per_sample(gate: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """[U] stays [U]; [B, U] becomes [B, 1, ..., U] to broadcast over the token axes."""
    if gate.dim() == 1:
        return gate
    return gate.reshape(gate.shape[0], *([1] * (batch_dims - 1)), gate.shape[-1])


def _gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x * gate in the gate's fp32, handed on in x's dtype.

    Under bf16 autocast x is bf16: the product keeps that dtype (a gated pass runs like an
    ungated one), while dL/dgate, a sum over every token, is computed in fp32.
    """
    return (x * gate).to(x.dtype)


def _head_hook(gate: torch.Tensor, num_heads: int):
    def hook(module, args):
        (x, *rest) = args  # x: (B, T, H*d)
        heads = x.unflatten(-1, (num_heads, -1))  # (B, T, H, d)
        g = _per_sample(gate, x.dim() - 1).unsqueeze(-1)  # (H, 1) or (B, 1, H, 1)
        return (_gated(heads, g).flatten(-2), *rest)
    return hook


def _neuron_hook(gate: torch.Tensor):
    def hook(module, args, out):
        return _gated(out, _per_sample(gate, out.dim() - 1))  # out: (B, T, U)
    return hook


@contextmanager
def gates_applied(units: ModelUnits, gates: UnitTensors) -> Iterator[None]:
    """Within the block, every forward pass multiplies each unit's output by its gate.

    The gates must be on the model's device (`UnitTensors.full(..., device=units.device)`): a
    hook does not move them, so a gate left on the CPU fails loudly instead of copying each pass.
    """
    handles = []
    batched = gates.head.dim() == 3
    try:
        for idx, layer in enumerate(units.layers):
            head = gates.head[:, idx] if batched else gates.head[idx]
            inter = gates.intermediate[:, idx] if batched else gates.intermediate[idx]
            out = gates.output[:, idx] if batched else gates.output[idx]
            handles.append(layer.attention_output.register_forward_pre_hook(_head_hook(head, units.num_heads)))
            handles.append(layer.intermediate.register_forward_hook(_neuron_hook(inter)))
            handles.append(layer.output.register_forward_hook(_neuron_hook(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
