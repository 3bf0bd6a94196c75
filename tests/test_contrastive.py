"""Contrastive loss: each sample's positive is its own second pass; the DAS loss trains every variant."""

import math

import pytest
import torch
import torch.nn.functional as F

from das_engine.config import DASConfig
from das_engine.contrastive import contrastive_loss
from das_engine.data import mask_tokens, pack_corpus
from das_engine.trainer import as_floats, das_loss
from das_engine.units import UnitTensors, resolve_units


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


@pytest.mark.parametrize("anchor,no_grad", [(True, True), (False, True), (True, False)])
def test_das_loss_variants_backpropagate(model_and_tokenizer, legal_docs, anchor, no_grad):
    model, tokenizer = model_and_tokenizer
    model.train()
    units = resolve_units(model)
    packed = pack_corpus(legal_docs, tokenizer, max_length=48)
    ids, mask = packed.input_ids[:4], packed.attention_mask[:4]
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(0))
    previous = UnitTensors.full(units, 0.5)
    config = DASConfig(mlm_pass_as_anchor=anchor, prev_pass_no_grad=no_grad)
    loss, parts = das_loss(model, units, ids, masked, mask, labels, previous, config)
    loss.backward()
    parts = as_floats(parts)
    assert parts["loss"] == pytest.approx(parts["mlm"] + parts["contrastive"], rel=1e-5)
    assert parts["contrastive"] > 0
    assert resolve_units(model).layers[0].query.weight.grad.abs().sum() > 0
