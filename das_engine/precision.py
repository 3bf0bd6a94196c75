"""Where the engine's tensors live, and in what precision its forward passes run.

Every tensor the engine creates follows the model it serves (`model_device`, or
`ModelUnits.device`): unit scales, masks, soft-mask multipliers, contrastive targets. Random draws
stay on a CPU generator, so a seed gives the same data on every device; their results are moved.

`bf16` runs the forward passes under `torch.autocast` (the matmuls in bf16). Weights, their
gradients, the optimizer state, importance and soft-mask arithmetic stay fp32; so do the
contrastive similarities (see `full_precision`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.amp.autocast_mode import is_autocast_available

from das_formats.config import Precision


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (the engine never splits a model over devices)."""
    return next(model.parameters()).device


def check_precision(precision: Precision, device: torch.device) -> None:
    """Refuse a precision the device cannot run, before any work is done."""
    if precision == "fp32":
        return
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not is_autocast_available(device.type):
        raise ValueError(f"precision='bf16' needs autocast, which device {device} lacks; use precision='fp32'")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' needs a GPU with bf16 support; {device} has none: use precision='fp32'")


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """bf16 autocast on the model's device for a forward pass; nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def full_precision(device: torch.device) -> AbstractContextManager:
    """Turn autocast off inside a forward pass: for sums that bf16's 8 significant bits would spoil."""
    if is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()
