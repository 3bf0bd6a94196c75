"""Contrastive loss: each sample's positive is its own second pass; the DAS loss trains every variant."""

import math

import pytest
import torch
import torch.nn.functional as F

from das_engine.contrastive import contrastive_loss
from das_engine.data import mask_tokens, pack_corpus
from das_engine.train_step import as_floats, das_loss
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig


def _naive(anchor, positive, previous, tau):
    total = 0.0
    for i in range(len(anchor)):
        def s(x, y):
            return F.cosine_similarity(x, y, dim=0).item() / tau
        denom = sum(math.exp(s(anchor[i], positive[j])) + math.exp(s(anchor[i], previous[j]))
                    for j in range(len(anchor)))
        total += -math.log(math.exp(s(anchor[i], positive[i])) / denom)
    return total / len(anchor)


def test_matches_the_formula_sample_by_sample():
    gen = torch.Generator().manual_seed(0)
    a, p, prev = (torch.randn(6, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    assert contrastive_loss(a, p, prev, 0.05).item() == pytest.approx(_naive(a, p, prev, 0.05), rel=1e-9)


def test_positives_are_each_samples_own_second_pass():
    gen = torch.Generator().manual_seed(1)
    anchor = torch.randn(8, 32, generator=gen)
    second_pass = anchor + 0.05 * torch.randn(8, 32, generator=gen)  # the same samples, other dropout
    previous = torch.randn(8, 32, generator=gen)
    paired = contrastive_loss(anchor, second_pass, previous, 0.05)
    mispaired = contrastive_loss(anchor, second_pass.roll(1, dims=0), previous, 0.05)
    assert paired < 0.1 < mispaired


def _training_batch(model_and_tokenizer, legal_docs):
    """The model in train mode, its units, and one MLM batch of 4: (ids, masked, attention mask, labels)."""
    model, tokenizer = model_and_tokenizer
    model.train()
    packed = pack_corpus(legal_docs, tokenizer, max_length=48)
    ids, mask = packed.input_ids[:4], packed.attention_mask[:4]
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(0))
    return model, resolve_units(model), (ids, masked, mask, labels)


@pytest.mark.parametrize("anchor,no_grad", [(True, True), (False, True), (True, False)])
def test_das_loss_variants_backpropagate(model_and_tokenizer, legal_docs, anchor, no_grad):
    model, units, (ids, masked, mask, labels) = _training_batch(model_and_tokenizer, legal_docs)
    previous = UnitTensors.full(units, 0.5)
    config = DASConfig(mlm_pass_as_anchor=anchor, prev_pass_no_grad=no_grad)
    loss, parts = das_loss(model, units, ids, masked, mask, labels, previous, config)
    loss.backward()
    parts = as_floats(parts)
    assert parts["loss"] == pytest.approx(parts["mlm"] + parts["contrastive"], rel=1e-5)
    assert parts["contrastive"] > 0
    assert resolve_units(model).layers[0].query.weight.grad.abs().sum() > 0


def _rows_per_forward(model, run) -> list[int]:
    """The batch size of every forward pass `run` makes through the model (read at the word embeddings)."""
    rows: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize("k,expected", [(0, [8, 4]), (2, [6, 2]), (4, [8, 4])])
def test_contrastive_samples_limits_the_extra_passes_to_k_samples(model_and_tokenizer, legal_docs, k, expected):
    model, units, (ids, masked, mask, labels) = _training_batch(model_and_tokenizer, legal_docs)
    config = DASConfig(batch_size=4, contrastive_samples=k)
    out = []
    rows = _rows_per_forward(model, lambda: out.extend(das_loss(
        model, units, ids, masked, mask, labels, UnitTensors.full(units, 0.5), config)))
    # one concatenated pass with gradients (the MLM batch + k positives), one o_prev pass of k without
    assert rows == expected
    loss, parts = out
    loss.backward()
    parts = as_floats(parts)
    assert parts["contrastive"] > 0
    assert parts["loss"] == pytest.approx(parts["mlm"] + parts["contrastive"], rel=1e-5)


def test_contrastive_samples_equal_to_the_batch_is_the_full_term(model_and_tokenizer, legal_docs):
    model, units, (ids, masked, mask, labels) = _training_batch(model_and_tokenizer, legal_docs)
    previous = UnitTensors.full(units, 0.5)
    losses = []
    for k in (0, 4, 2):
        torch.manual_seed(3)  # the same dropout masks
        losses.append(das_loss(model, units, ids, masked, mask, labels, previous,
                               DASConfig(batch_size=4, contrastive_samples=k))[1])
    full, all_four, two = (as_floats(p) for p in losses)
    assert all_four == full
    assert two["contrastive"] != pytest.approx(full["contrastive"], rel=1e-3)
    model.eval()  # no dropout: the MLM term must be the same whatever k, since it still covers every sample
    mlm = [as_floats(das_loss(model, units, ids, masked, mask, labels, previous,
                              DASConfig(batch_size=4, contrastive_samples=k))[1])["mlm"] for k in (0, 2)]
    assert mlm[1] == pytest.approx(mlm[0], rel=1e-5)


@pytest.mark.parametrize("k", [1, -1, 17])
def test_contrastive_samples_out_of_bounds_is_refused(k):
    with pytest.raises(ValueError, match="contrastive_samples"):
        DASConfig(batch_size=16, contrastive_samples=k)
