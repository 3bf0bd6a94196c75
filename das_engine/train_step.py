"""One training step of a DAS run: the learning rate, the DAS loss (LM loss + lambda * InfoNCE against the
soft-masked previous model; the LM loss is the MLM loss of a masked LM, the next-token loss of a causal one),
backward and the soft-masked optimizer step; on a rank of a distributed run, the same step under
DistributedDataParallel. das_engine.trainer runs these in its loop."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from das_formats.config import DASConfig

from .contrastive import contrastive_loss
from .data import get_batch, lm_inputs, step_seed
from .distributed import LossShares, Ranks, gather_rows
from .mlm import LOSS_PART, hidden_states, lm_loss, mean_pool, scored_tokens
from .precision import autocast
from .softmask import SoftMask
from .training_data import TrainingData
from .unit_scales import scales_applied
from .units import ModelUnits, UnitTensors


def get_lr(config: DASConfig, step: int) -> float:
    """Linear warm-up, then linear decay to 0 at the last step."""
    warmup = int(config.warmup_ratio * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * max(0.0, (config.steps - step) / max(1, config.steps - warmup))


def _contrastive_views(config: DASConfig, input_ids: torch.Tensor, masked: torch.Tensor, k: int
                       ) -> tuple[list[torch.Tensor], torch.Tensor, bool]:
    """The passes of one contrastive step, in order: the LM pass, the positive(s), and o_prev when it takes
    gradients; the anchors' ids; whether o_prev is among the passes."""
    anchor_ids = masked[:k] if config.mlm_pass_as_anchor else input_ids[:k]
    views = [masked, masked[:k]] if config.mlm_pass_as_anchor else [masked, input_ids[:k], input_ids[:k]]
    with_prev = not config.prev_pass_no_grad
    if with_prev:
        views.append(anchor_ids)
    return views, anchor_ids, with_prev


def das_loss(model: nn.Module, units: ModelUnits, input_ids: torch.Tensor, masked: torch.Tensor,
             attention_mask: torch.Tensor, labels: torch.Tensor, previous: UnitTensors | None,
             config: DASConfig, shares: LossShares | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LM loss + lambda * InfoNCE(o_full, o_full+, negatives o_prev), passes concatenated on the batch axis.

    The LM loss is the model's own (`mlm.lm_loss`): MLM at the masked positions of `masked` (a masked LM), or the
    next-token loss, where `masked` is the unmasked input and `labels` the inputs (a causal LM). Its part is named
    "mlm" or "next_token" (`mlm.LOSS_PART`). For a causal LM without dropout (Llama-style) o_full+ is o_full itself:
    the term then only pushes each sample away from o_prev and the other samples.

    With `contrastive_samples=k` only the batch's first k samples get the positive and o_prev passes
    (and are the InfoNCE's anchors); the MLM loss still covers the whole batch.

    The forward passes run in `config.precision`; the loss is fp32. The parts ("loss", "mlm",
    "contrastive") are detached 0-dim tensors: reading them costs a device sync, so the caller
    reads them once per step (see `as_floats`). With `contrastive_weight=0` or `softmask=False`
    it is the LM loss alone (one pass; `previous` is not read and may be None).

    On a rank of a distributed run (`shares`), the inputs are the rank's rows of the global batch and the loss is
    its share of the global batch's loss (the shares sum to it): the LM loss sum over its scored tokens divided by
    the global count, and the InfoNCE over its anchors against every rank's positives and o_prev passes.
    """
    device = units.device
    ranks = shares.ranks if shares is not None else Ranks()
    mlm_total = shares.masked_tokens if shares is not None else None
    part = LOSS_PART[units.kind]
    if config.contrastive_weight == 0 or not config.softmask:
        with autocast(device, config.precision):
            mlm = lm_loss(units, hidden_states(model, masked, attention_mask), labels, mlm_total)
        return mlm, {"loss": mlm.detach(), part: mlm.detach()}
    # the o_prev scales (units only) must sit beside the activations they scale
    previous = previous.units_only().to(device)
    with autocast(device, config.precision):
        batch = input_ids.shape[0]
        # the samples that get the contrastive passes (this rank's share of them)
        k = min(config.contrastive_samples // ranks.world or batch, batch)
        views, anchor_ids, with_prev = _contrastive_views(config, input_ids, masked, k)
        sizes = [len(v) for v in views]
        mask = torch.cat([attention_mask[:n] for n in sizes])  # (sum(sizes), T)
        scale_ctx = nullcontext()
        if with_prev:  # per-sample scales: ones for the free passes, I(<=t-1) for the o_prev rows
            free = sum(sizes[:-1])
            scales = previous.map(lambda t: torch.cat([torch.ones(free, *t.shape, device=t.device, dtype=t.dtype),
                                                      t.expand(k, *t.shape)]))  # (rows, L, U)
            scale_ctx = scales_applied(units, scales)
        with scale_ctx:
            hidden = hidden_states(model, torch.cat(views), mask)  # (rows, T, D)
        mlm = lm_loss(units, hidden[:batch], labels, mlm_total)
        pooled = mean_pool(hidden, mask).split(sizes)  # one (n, D) per view
        anchor, positive = (pooled[0][:k], pooled[1]) if config.mlm_pass_as_anchor else (pooled[1], pooled[2])
        if with_prev:
            prev = pooled[-1]
        else:
            with torch.no_grad(), scales_applied(units, previous):
                prev = mean_pool(hidden_states(model, anchor_ids, attention_mask[:k]), attention_mask[:k])
        contrast = _infonce(anchor, positive, prev, config.temperature, ranks, grad_prev=with_prev)
    loss = mlm + config.contrastive_weight * contrast
    return loss, {"loss": loss.detach(), part: mlm.detach(), "contrastive": contrast.detach()}


def _infonce(anchor: torch.Tensor, positive: torch.Tensor, prev: torch.Tensor, temperature: float, ranks: Ranks, *,
             grad_prev: bool) -> torch.Tensor:
    """The InfoNCE term; on a rank of a distributed run, every rank's positives and o_prev passes are columns of each
    anchor's row, and the term is this rank's share of the global batch's."""
    if not ranks.distributed:
        return contrastive_loss(anchor, positive, prev, temperature)
    k = anchor.shape[0]
    positive, prev = gather_rows(positive, ranks, grad=True), gather_rows(prev, ranks, grad=grad_prev)
    return contrastive_loss(anchor, positive, prev, temperature, first_target=ranks.rank * k,
                            reduction="sum") / (k * ranks.world)


def as_floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """das_loss's parts as Python floats, with one device sync."""
    return dict(zip(parts, torch.stack(list(parts.values())).tolist(), strict=True))


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, softmask: SoftMask | None,
                   config: DASConfig) -> None:
    """Clip, soft-mask (by gradient or by update), step, zero the gradients. No mask: plain training."""
    if config.max_grad_norm is not None:  # clip before masking (masking changes the norm)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    if softmask is None:
        optimizer.step()
    elif config.mask_mode == "grad":
        softmask.scale_gradients()
        optimizer.step()
    else:
        before = softmask.snapshot()
        optimizer.step()
        softmask.scale_updates(before)
    optimizer.zero_grad(set_to_none=True)


class StepLoss(nn.Module):
    """das_loss as a module: what DistributedDataParallel wraps on a rank, so that the whole step's forward runs
    through it and its hooks all-reduce every parameter's gradient during backward."""

    def __init__(self, model: nn.Module, units: ModelUnits, previous: UnitTensors | None, config: DASConfig) -> None:
        super().__init__()
        self.model, self.units, self.previous, self.config = model, units, previous, config

    def forward(self, input_ids: torch.Tensor, masked: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, shares: LossShares) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return das_loss(self.model, self.units, input_ids, masked, attention_mask, labels, self.previous,
                        self.config, shares)


def train_step(model: nn.Module, units: ModelUnits, tokenizer, optimizer: torch.optim.Optimizer,
               softmask: SoftMask | None, previous: UnitTensors | None, data: TrainingData,
               config: DASConfig, step: int, device: torch.device, ranks: Ranks = Ranks(),
               wrapped: nn.Module | None = None) -> tuple[dict[str, float], int]:
    """Step `step`: its lr, batch (with its replay rows), masks (a masked LM's) and dropout (each drawn from
    (seed, step)), the DAS
    loss, backward and the (soft-masked) optimizer step. Returns the loss parts and the batch's real tokens.

    On a rank of a distributed run, `wrapped` is the DistributedDataParallel StepLoss: the rank builds and masks the
    whole global batch, trains on its rows, and the loss parts it returns are the global batch's (summed shares)."""
    for group in optimizer.param_groups:
        group["lr"] = get_lr(config, step)
    input_ids, attention_mask = get_batch(data.packed, config, step, data.replay, data.replay_rows)
    masked, labels = lm_inputs(units.kind, input_ids, attention_mask, tokenizer, config.mlm_probability,
                               torch.Generator().manual_seed(step_seed(config.seed, step, 3)))
    torch.manual_seed(step_seed(config.seed, step, 4) + ranks.rank)  # dropout, each rank its own
    batch_tokens = int(attention_mask.sum())  # the global batch's, counted on the CPU copy: no device sync
    if not ranks.distributed:
        input_ids, masked, attention_mask, labels = to_device((input_ids, masked, attention_mask, labels), device)
        loss, parts = das_loss(model, units, input_ids, masked, attention_mask, labels, previous, config)
        loss.backward()
    else:
        shares = LossShares(ranks, scored_tokens(units.kind, labels))
        rows = to_device(tuple(ranks.rows(t) for t in (input_ids, masked, attention_mask, labels)), device)
        loss, parts = wrapped(*rows, shares)
        (loss * ranks.world).backward()  # DDP averages the ranks' gradients; the shares sum to the global loss
        summed = torch.stack(list(parts.values()))
        ranks.all_reduce_sum([summed])
        parts = dict(zip(parts, summed, strict=True))
    optimizer_step(model, optimizer, softmask, config)
    return as_floats(parts), batch_tokens  # as_floats: the step's one device sync, so its time is true


def data_parallel(step_loss: StepLoss, device: torch.device) -> nn.Module:
    """The step's loss under DistributedDataParallel (gloo on the CPU, nccl on a GPU: the process group's)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step_loss, device_ids=[device.index or 0] if device.type == "cuda" else None)


def to_device(tensors, device: torch.device | str):
    """Move a (nested) tuple/list of tensors to `device`."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device)
    return type(tensors)(to_device(t, device) for t in tensors)
