"""Fit the MLM head of a masked LM whose encoder and embeddings stay frozen; held-out LM losses (MLM, next token).

A base model that ships only an encoder (a sentence-embedding BERT, say) gets a fresh MLM head;
before DAS can use its MLM loss, the head has to learn to read the frozen encoder. Only the head's
own parameters train: for BERT the transform (dense + LayerNorm) and the output bias; the decoder
weight is tied to the word embeddings, which belong to the frozen embeddings and stay as they are.

The encoder runs in eval mode (no dropout) under `torch.no_grad()`, so no gradient reaches it
and none is computed for it. Batches, masks and the data order are seeded from (seed, step) the
way `trainer.adapt` seeds them; the corpus is packed and masked by `data.pack_corpus` and
`data.mask_tokens`, and the loss is `mlm.masked_lm_loss` at masked positions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from das_formats.config import DASConfig

from .data import PackedCorpus, get_batch, lm_inputs, mask_tokens, pack_corpus, step_seed
from .mlm import hidden_states, lm_loss, masked_lm_loss, scored_tokens
from .units import ModelUnits, resolve_units


@dataclass(frozen=True)
class HeadFitSettings:
    """What a head fit ran with (saved beside the weights it produced)."""

    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    mlm_probability: float = 0.15
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be within (0, 1), got {self.mlm_probability}")
        # the data order comes from data.get_batch (via train_step), which reads batch_size and seed from a DASConfig;
        # building one here also checks max_length and seed against the same bounds as a DAS step
        self.batch_config()

    def batch_config(self) -> DASConfig:
        return DASConfig(batch_size=self.batch_size, max_length=self.max_length, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadFitProgress:
    step: int  # steps done
    total: int
    loss: float  # this step's training loss
    tokens_per_s: float
    eta_s: float


@dataclass
class HeadFitResult:
    settings: HeadFitSettings
    losses: list[float]  # the training loss of every step
    tokens: int  # real tokens seen
    train_time_s: float
    trained: list[str] = field(default_factory=list)  # names of the parameters that trained
    trained_parameters: int = 0
    frozen_parameters: int = 0


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The MLM head's own parameters: those of the head module that the base model does not share.

    A decoder weight tied to the word embeddings is the embeddings' parameter, so it is left out;
    an untied decoder weight is the head's and is included.
    """
    units = resolve_units(model)
    shared = {id(p) for p in model.base_model.parameters()}
    return {name: p for name, p in units.mlm_head.named_parameters() if id(p) not in shared}


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameter counts: embeddings, encoder (the rest of the base model) and the head's own.

    Each parameter counts once: a decoder tied to the word embeddings counts as embeddings.
    """
    base = model.base_model
    embeddings = getattr(base, "embeddings", None)
    if embeddings is None:  # no embeddings module: the word embeddings alone
        embeddings = base.get_input_embeddings()
    embedding_ids = {id(p) for p in embeddings.parameters()}
    return {"embeddings": sum(p.numel() for p in embeddings.parameters()),
            "encoder": sum(p.numel() for p in base.parameters() if id(p) not in embedding_ids),
            "head": sum(p.numel() for p in head_parameters(model).values())}


@contextmanager
def _only_head_trains(model: nn.Module, head: dict[str, nn.Parameter]) -> Iterator[None]:
    """Every parameter but the head's frozen, the model in eval mode; both restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    head_ids = {id(p) for p in head.values()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
        model.eval()
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def fit_mlm_head(model: nn.Module, tokenizer, documents: list[str], *, steps: int = 300, lr: float = 2e-3,
                 batch_size: int = 32, max_length: int = 128, seed: int = 0, mlm_probability: float = 0.15,
                 weight_decay: float = 0.0,
                 on_step: Callable[[HeadFitProgress], None] | None = None) -> HeadFitResult:
    """Train only the MLM head on `documents` with AdamW at a constant `lr`; returns the losses.

    The model trains where it is (its device); the data is prepared on the CPU and moved there.
    """
    settings = HeadFitSettings(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
                               mlm_probability=mlm_probability, weight_decay=weight_decay)
    units = resolve_units(model)
    head = head_parameters(model)
    if not head:
        raise ValueError("the model's MLM head has no parameters of its own to fit")
    packed = pack_corpus(documents, tokenizer, max_length)
    batch_config = settings.batch_config()
    optimizer = torch.optim.AdamW(list(head.values()), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    tokens, train_time = 0, 0.0
    with _only_head_trains(model, head):
        for step in range(steps):
            t0 = time.perf_counter()
            input_ids, attention_mask = get_batch(packed, batch_config, step)
            masked, labels = mask_tokens(input_ids, attention_mask, tokenizer, mlm_probability,
                                         torch.Generator().manual_seed(step_seed(seed, step, 3)))
            tokens += int(attention_mask.sum())
            device = units.device
            with torch.no_grad():  # the frozen encoder: no graph, no gradient
                hidden = hidden_states(model, masked.to(device), attention_mask.to(device))
            loss = masked_lm_loss(units, hidden, labels.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            train_time += time.perf_counter() - t0
            if on_step is not None:
                on_step(HeadFitProgress(step + 1, steps, losses[-1], tokens / max(train_time, 1e-9),
                                        (steps - step - 1) * train_time / (step + 1)))
    trained = sum(p.numel() for p in head.values())
    frozen = sum(p.numel() for p in model.parameters()) - trained  # parameters() lists a tied one once
    return HeadFitResult(settings, losses, tokens, train_time, sorted(head), trained, frozen)


def heldout_mlm_loss(model: nn.Module, tokenizer, documents: list[str], *, max_length: int = 128,
                     batch_size: int = 32, seed: int = 0, mlm_probability: float = 0.15) -> float:
    """Mean MLM cross-entropy over every masked token of `documents` (eval mode, no gradients).

    Deterministic: the documents are packed in order and masked from one generator seeded with
    `seed`, so two models are compared on exactly the same masked tokens. A causal LM is refused by name
    (`heldout_loss` scores either kind).
    """
    units = resolve_units(model)
    if units.kind != "masked":
        raise ValueError(f"this {units.family} model is a causal LM: it has no MLM loss; score it with "
                         "das_engine.mlm_head.heldout_loss (the next-token loss)")
    return heldout_loss(model, tokenizer, documents, max_length=max_length, batch_size=batch_size, seed=seed,
                        mlm_probability=mlm_probability)


def heldout_loss(model: nn.Module, tokenizer, documents: list[str], *, max_length: int = 128,
                 batch_size: int = 32, seed: int = 0, mlm_probability: float = 0.15) -> float:
    """The model's own held-out LM loss on `documents` (eval mode, no gradients), in nats per scored token: a masked
    LM's MLM loss over every masked token (as `heldout_mlm_loss`), a causal LM's next-token loss over every token of
    the packed blocks but each block's first (`mlm_probability` and `seed` are then not used).

    Deterministic: the documents are packed in order (and masked from one generator seeded with `seed`), so two
    models are compared on exactly the same tokens.
    """
    units = resolve_units(model)
    packed = pack_corpus(documents, tokenizer, max_length, kind=units.kind)
    return _packed_lm_loss(model, units, tokenizer, packed, batch_size, seed, mlm_probability)


def _packed_lm_loss(model: nn.Module, units: ModelUnits, tokenizer, packed: PackedCorpus, batch_size: int, seed: int,
                    mlm_probability: float) -> float:
    device = units.device
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(packed), batch_size):
                input_ids = packed.input_ids[start:start + batch_size]
                attention_mask = packed.attention_mask[start:start + batch_size]
                inputs, labels = lm_inputs(units.kind, input_ids, attention_mask, tokenizer, mlm_probability,
                                           generator)
                hidden = hidden_states(model, inputs.to(device), attention_mask.to(device))
                n = scored_tokens(units.kind, labels)
                if n:
                    total += lm_loss(units, hidden, labels.to(device)).item() * n
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no token to score: the held-out documents are empty")
    return total / count
