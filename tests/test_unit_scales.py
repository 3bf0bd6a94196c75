"""Unit scales attached by hooks: neutral at 1, and a zero scale removes exactly that unit."""

import copy

import pytest
import torch

from das_engine.mlm import hidden_states
from das_engine.unit_scales import scales_applied
from das_engine.units import UnitTensors, resolve_units


def _batch(tokenizer, texts=("the licence grants permission to copy", "return the sum of the list")):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_scales_at_one_change_nothing(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    units = resolve_units(model)
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with scales_applied(units, UnitTensors.full(units, 1.0)):
            scaled = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, scaled)


def test_zero_head_scale_equals_removing_the_head(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    units = resolve_units(model)
    layer, head, d = units.num_layers - 1, 1, units.head_size
    scales = UnitTensors.full(units, 1.0)
    scales.head[layer, head] = 0.0
    # reference: the same model with that head's columns of the attention output projection zeroed
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        resolve_units(pruned).layers[layer].attention_output.weight[:, head * d:(head + 1) * d] = 0.0
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        with scales_applied(units, scales):
            scaled = hidden_states(model, ids, mask)
        removed = hidden_states(pruned, ids, mask)
        untouched = hidden_states(model, ids, mask)
    assert torch.allclose(scaled, removed, atol=1e-5)
    assert not torch.allclose(scaled, untouched, atol=1e-3)


def test_zero_intermediate_scale_equals_zeroing_its_row(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    units = resolve_units(model)
    scales = UnitTensors.full(units, 1.0)
    scales.intermediate[0, 3] = 0.0
    scales.output[1, 5] = 0.0
    pruned = copy.deepcopy(model)
    pruned_units = resolve_units(pruned)
    with torch.no_grad():
        for linear, row in ((pruned_units.layers[0].intermediate, 3), (pruned_units.layers[1].output, 5)):
            linear.weight[row] = 0.0
            linear.bias[row] = 0.0
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        with scales_applied(units, scales):
            scaled = hidden_states(model, ids, mask)
        removed = hidden_states(pruned, ids, mask)
    assert torch.allclose(scaled, removed, atol=1e-5)


def test_per_sample_scales_match_separate_passes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    units = resolve_units(model)
    ids, mask = _batch(tokenizer)
    gen = torch.Generator().manual_seed(1)
    importance = UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=gen))
    batched = importance.map(lambda t: torch.stack([torch.ones_like(t), t]))  # sample 0 free, sample 1 scaled
    with torch.no_grad():
        with scales_applied(units, batched):
            together = hidden_states(model, ids, mask)
        free = hidden_states(model, ids[:1], mask[:1])
        with scales_applied(units, importance):
            scaled = hidden_states(model, ids[1:], mask[1:])
    assert torch.allclose(together[0, : int(mask[0].sum())], free[0, : int(mask[0].sum())], atol=1e-5)
    assert torch.allclose(together[1, : int(mask[1].sum())], scaled[0, : int(mask[1].sum())], atol=1e-5)


def test_hooks_are_removed_even_after_an_error(model_and_tokenizer):
    model, _ = model_and_tokenizer
    units = resolve_units(model)
    with pytest.raises(RuntimeError):
        with scales_applied(units, UnitTensors.full(units, 0.0)):
            raise RuntimeError("boom")
    for layer in units.layers:
        assert not layer.attention_output._forward_pre_hooks
        assert not layer.intermediate._forward_hooks and not layer.output._forward_hooks
