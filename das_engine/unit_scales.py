"""Unit scales: multiply every unit's output by a scale value, through hooks on the model's own modules.

transformers 5 has no `head_mask`, so heads are scaled by a forward pre-hook on the attention
output projection (its input is the concatenation of the (query) heads' context vectors), and FFN
neurons by forward hooks on the two dense layers; in a gated FFN (Llama-style) the intermediate
neurons by a forward pre-hook on the down projection (its input is act(gate) * up). The hooks read
activations, not weights, so Linear and Conv1D layers are alike. Scales are [L, U] (shared by the
batch) or [B, L, U] (one row per sample, for concatenated passes). Hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .units import ModelUnits, UnitTensors


def _per_sample(scale: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """[U] stays [U]; [B, U] becomes [B, 1, ..., U] to broadcast over the token axes."""
    if scale.dim() == 1:
        return scale
    return scale.reshape(scale.shape[0], *([1] * (batch_dims - 1)), scale.shape[-1])


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * scale in the scale's fp32, handed on in x's dtype.

    Under bf16 autocast x is bf16: the product keeps that dtype (a scaled pass runs like an
    unscaled one), while dL/dscale, a sum over every token, is computed in fp32.
    """
    return (x * scale).to(x.dtype)


def _head_hook(scale: torch.Tensor, num_heads: int):
    def hook(module, args):
        (x, *rest) = args  # x: (B, T, H*d)
        heads = x.unflatten(-1, (num_heads, -1))  # (B, T, H, d)
        g = _per_sample(scale, x.dim() - 1).unsqueeze(-1)  # (H, 1) or (B, 1, H, 1)
        return (_scaled(heads, g).flatten(-2), *rest)
    return hook


def _neuron_hook(scale: torch.Tensor):
    def hook(module, args, out):
        return _scaled(out, _per_sample(scale, out.dim() - 1))  # out: (B, T, U)
    return hook


def _neuron_input_hook(scale: torch.Tensor):
    def hook(module, args):
        (x, *rest) = args  # x: (B, T, U)
        return (_scaled(x, _per_sample(scale, x.dim() - 1)), *rest)
    return hook


@contextmanager
def scales_applied(units: ModelUnits, scales: UnitTensors) -> Iterator[None]:
    """Within the block, every forward pass multiplies each unit's output by its scale.

    The scales must be on the model's device (`UnitTensors.full(..., device=units.device)`): a
    hook does not move them, so a scale left on the CPU fails loudly instead of copying each pass.
    """
    handles = []
    batched = scales.head.dim() == 3
    try:
        for idx, layer in enumerate(units.layers):
            head = scales.head[:, idx] if batched else scales.head[idx]
            inter = scales.intermediate[:, idx] if batched else scales.intermediate[idx]
            out = scales.output[:, idx] if batched else scales.output[idx]
            handles.append(layer.attention_output.register_forward_pre_hook(_head_hook(head, units.num_heads)))
            if units.intermediate_at_output_input:  # a gated FFN: its neurons are the down projection's input
                handles.append(layer.output.register_forward_pre_hook(_neuron_input_hook(inter)))
            else:
                handles.append(layer.intermediate.register_forward_hook(_neuron_hook(inter)))
            handles.append(layer.output.register_forward_hook(_neuron_hook(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
