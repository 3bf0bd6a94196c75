"""Importance of units: |dL/dscale| averaged over batches, standardised per layer, squashed to [0, 1).

- domain importance I(t): L = the model's LM loss on a sample of the domain corpus: the MLM loss on
  masked inputs (a masked LM), the next-token loss on the blocks as they are (a causal LM);
- general-knowledge importance I(0): L = KL between two dropout passes (train mode) of the
  same unmasked batch, a proxy for what the original LM knows. Llama-family causal LMs have no
  dropout (attention_dropout 0, no hidden dropout): for a causal LM without any, the pass adds its
  own, functional dropout p = ADDED_DROPOUT_P on every layer's output (`importance_dropout` names
  which, and the trainer records it in train_metrics.json). A masked LM whose dropout is all 0 is
  refused instead (`check_dropout`): its config says how to turn it back on;
- accumulation: I(<=t) = max(I(<=t-1), I(t)) element-wise (EMax).

With `embeddings=True` (the `protect_embeddings` setting) both passes also give one importance
per row of the word-embedding matrix: the mean over batches of the row's mean |dL/dW_row| (the
whole parameter's gradient: with BERT/RoBERTa's tied MLM decoder it includes the decoder's part),
kept only for the rows of tokens that occur in the sample (real tokens of the unmasked input;
every other row is exactly 0). `normalise` standardises it over those rows alone, then applies the
same tanh and negative rule; rows never seen stay 0 (free to learn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from das_formats.config import Precision

from .data import PackedCorpus, lm_inputs
from .distributed import current
from .mlm import hidden_states, lm_loss
from .precision import autocast
from .unit_scales import scales_applied
from .units import ModelUnits, UnitTensors

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, attention_mask: (B, T) each
STD_EPS = 1e-12
# tanh(z) < 1, but rounds to 1.0 in float32 for z > ~9 (an outlier among 512+ neurons); keep [0, 1)
BELOW_ONE = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()


def sample_batches(corpus: PackedCorpus, samples: int, batch_size: int, seed: int) -> list[Batch]:
    """A fixed-seed random sample of blocks, in batches."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(corpus), generator=generator)[:samples]
    return [(corpus.input_ids[idx], corpus.attention_mask[idx]) for idx in order.split(batch_size)]


BatchDone = Callable[[int, int], None]  # (batches done, batches in all): an importance pass's progress


def scale_gradients(units: ModelUnits, loss_fn: Callable[[Batch], torch.Tensor],
                   batches: Iterable[Batch], precision: Precision = "fp32", embeddings: bool = False,
                   on_batch: BatchDone | None = None) -> UnitTensors:
    """Mean over batches of |dL/dg| with all unit scales at 1 (raw importance, before normalising).

    torch.autograd.grad hands back fresh gradients for each batch, so nothing carries over
    from one batch to the next (the authors' code never zeroed them). The scales and the running
    sum are fp32 on the model's device; only the forward pass runs in `precision`.
    `embeddings=True` adds the raw word-embedding row importance (see the module's docstring).
    `on_batch(done, total)` is called after each batch (this rank's batches).
    """
    device = units.device
    scales = UnitTensors.full(units, 1.0, requires_grad=True, device=device)
    total = UnitTensors.full(units, 0.0, device=device)
    inputs = [t for _, t in scales.items()]
    if embeddings:
        weight = units.word_embeddings.weight  # tied to the MLM decoder: dL/dW holds both uses
        inputs.append(weight)
        row_total = torch.zeros(weight.shape[0], dtype=torch.float32, device=device)
        seen = torch.zeros(weight.shape[0], dtype=torch.bool, device=device)
    count = 0
    ranks = current()  # on a rank of a distributed run: every world-th batch, summed over the ranks below
    mine = list(batches)[ranks.rank::ranks.world]
    with scales_applied(units, scales):
        for batch in mine:
            with autocast(device, precision):
                loss = loss_fn(batch)
            grads = torch.autograd.grad(loss, inputs)
            unit_grads, row_grad = (grads[:-1], grads[-1]) if embeddings else (grads, None)
            for (_, acc), grad in zip(total.items(), unit_grads, strict=True):
                acc += grad.abs()
            if row_grad is not None:
                row_total += row_grad.abs().float().mean(-1)
                input_ids, attention_mask = batch[0], batch[1]
                seen[input_ids.to(device)[attention_mask.to(device).bool()]] = True
            count += 1
            if on_batch is not None:
                on_batch(count, len(mine))
    if ranks.distributed:
        counted = torch.tensor([float(count)], device=device)
        sums = [acc for _, acc in total.items()] + [counted]
        if embeddings:
            seen_count = seen.float()
            sums += [row_total, seen_count]
        ranks.all_reduce_sum(sums)
        count = int(counted.item())
        if embeddings:
            seen = seen_count > 0
    if count == 0:
        raise ValueError("importance needs at least one batch")
    raw = total.map(lambda t: t / count)
    if embeddings:
        raw.embeddings = torch.where(seen, row_total / count, 0.0)[None]  # (1, V)
    return raw


def _squash(z: torch.Tensor, rule: str) -> torch.Tensor:
    squashed = torch.tanh(z).clamp(-BELOW_ONE, BELOW_ONE)
    return squashed.clamp_min(0.0) if rule == "clamp" else squashed.abs()


def normalise(raw: UnitTensors, rule: str) -> UnitTensors:
    """Per layer and group: standardise, tanh, then 'clamp' (max(0, .)) or 'abs' (|.|).

    Word-embedding rows (if present) are standardised over the rows seen (raw > 0) alone; the
    others stay 0.
    """
    def one(t: torch.Tensor) -> torch.Tensor:  # (L, U)
        z = (t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + STD_EPS)
        return _squash(z, rule)
    if rule not in ("clamp", "abs"):
        raise ValueError(f"negative_rule must be 'clamp' or 'abs', got {rule!r}")
    result = raw.units_only().map(lambda t: one(t.detach()).float())
    if raw.embeddings is not None:
        result.embeddings = normalise_rows(raw.embeddings.detach(), rule)
    return result


def normalise_rows(raw: torch.Tensor, rule: str) -> torch.Tensor:
    """Word-embedding rows (1, V): standardise over the seen rows (raw > 0), tanh, rule; unseen rows 0."""
    seen = raw > 0
    values = raw[seen].float()
    if values.numel() > 1:
        z = (values - values.mean()) / (values.std() + STD_EPS)
    else:  # one row (or none): no spread to standardise by
        z = torch.zeros_like(values)
    return torch.zeros_like(raw, dtype=torch.float32).masked_scatter(seen, _squash(z, rule))


def accumulate(previous: UnitTensors | None, new: UnitTensors) -> UnitTensors:
    """EMax: the element-wise maximum of the cumulative and the new importance."""
    return new.map(torch.clone) if previous is None else previous.maximum(new)


def kl_between_dropout_passes(model: nn.Module, batch: Batch) -> torch.Tensor:
    """KL(p1 || p2) of the softmax over the hidden axis of two passes, mean over real tokens."""
    input_ids, attention_mask = batch
    # fp32 whatever the passes ran in: the KL of two near-identical passes is a small difference
    log_p1 = F.log_softmax(hidden_states(model, input_ids, attention_mask).float(), dim=-1)  # (B, T, D)
    log_p2 = F.log_softmax(hidden_states(model, input_ids, attention_mask).float(), dim=-1)
    per_token = (log_p1.exp() * (log_p1 - log_p2)).sum(-1)  # (B, T)
    real = attention_mask.to(per_token.dtype)
    return (per_token * real).sum() / real.sum()


def active_dropout(model: nn.Module) -> list[str]:
    """Names of the encoder's (decoder's) dropout modules that drop anything (p > 0), and "config.attention_dropout"
    where the attention drops its probabilities functionally (Llama-style attention has no Dropout module)."""
    modules = [name for name, module in model.base_model.named_modules()
               if isinstance(module, nn.Dropout) and module.p > 0]
    functional = ["config.attention_dropout"] if (getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0 else []
    return modules + functional


ADDED_DROPOUT_P = 0.1  # the importance pass's own dropout, for a causal LM that has none


def importance_dropout(model: nn.Module, units: ModelUnits) -> str:
    """Which dropout the KL proxy's two passes differ by: "model" (the model's own), or "added p=0.1" (a causal LM
    without any gets the pass's own, on every layer's output). A masked LM without any is refused (check_dropout)."""
    if units.kind == "masked":
        check_dropout(model)
    return "model" if active_dropout(model) else f"added p={ADDED_DROPOUT_P}"


@contextmanager
def added_dropout(units: ModelUnits, p: float) -> Iterator[None]:
    """Within the block, every layer's output hidden states go through dropout p (train or eval mode alike: only the
    general-importance pass uses it, on a model that has no dropout of its own). The hooks are removed on exit."""
    def hook(module, args, out):
        if isinstance(out, tuple):  # (hidden, ...) from older layer forwards
            return (F.dropout(out[0], p, training=True), *out[1:])
        return F.dropout(out, p, training=True)  # (B, T, D)
    handles = [layer.block.register_forward_hook(hook) for layer in units.layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_dropout(model: nn.Module) -> None:
    """The KL proxy compares two dropout passes: without dropout they are identical and I(0) is noise."""
    if not active_dropout(model):
        raise ValueError(
            "the general-knowledge importance I(0) (the KL proxy) needs dropout, but every dropout of this "
            f"{model.config.model_type} encoder has p = 0, so its two passes are identical and I(0) would be "
            "noise. Set hidden_dropout_prob (and attention_probs_dropout_prob) above 0 in the base model's "
            "config.json (0.1 is usual), or give a prepared importance file (prev_importance) instead.")


def general_importance_raw(model: nn.Module, units: ModelUnits, batches: list[Batch],
                           dropout: bool = True, precision: Precision = "fp32",
                           embeddings: bool = False, on_batch: BatchDone | None = None) -> UnitTensors:
    """Raw unit-scale gradients of the KL proxy. `dropout=False` (eval mode) exists to show it is noise.

    With `dropout=True` the passes differ by the model's own dropout, or (a causal LM with none) by the dropout the
    pass adds (`importance_dropout`, `added_dropout`); a masked LM whose dropout is 0 everywhere is refused (see
    check_dropout). `embeddings=True` adds the word-embedding row importance.
    """
    added = dropout and importance_dropout(model, units) != "model"
    was_training = model.training
    model.train(dropout)
    try:
        with added_dropout(units, ADDED_DROPOUT_P) if added else nullcontext():
            return scale_gradients(units, lambda b: kl_between_dropout_passes(model, b), batches, precision,
                                   embeddings, on_batch)
    finally:
        model.train(was_training)


def domain_importance_raw(model: nn.Module, units: ModelUnits, batches: list[Batch], tokenizer,
                          mlm_probability: float, seed: int, precision: Precision = "fp32",
                          embeddings: bool = False, on_batch: BatchDone | None = None) -> UnitTensors:
    """Raw unit-scale gradients of the LM loss (eval mode: no dropout noise): the MLM loss on masked inputs (a masked
    LM), the next-token loss on the inputs as they are (a causal LM: `mlm_probability` and `seed` are not used).

    `embeddings=True` adds the word-embedding row importance."""
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same masks on every device
    # every batch's masks, drawn in order first: a rank of a distributed run scores some of the batches only
    masked_batches = [(input_ids, attention_mask,
                       *lm_inputs(units.kind, input_ids, attention_mask, tokenizer, mlm_probability, generator))
                      for input_ids, attention_mask in batches]

    def loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, attention_mask, masked, labels = batch
        return lm_loss(units, hidden_states(model, masked, attention_mask), labels)

    was_training = model.training
    model.eval()
    try:
        return scale_gradients(units, loss, masked_batches, precision, embeddings, on_batch)
    finally:
        model.train(was_training)

