"""Soft-masking: protected units stay put (update mode) or get no gradient (grad mode); rows, never columns."""

import copy

import pytest
import torch

from das_engine.data import mask_tokens, pack_corpus
from das_engine.mlm import hidden_states, masked_lm_loss
from das_engine.softmask import SoftMask
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig

PROTECTED_HEAD = (0, 0)  # (layer, head)


def _importance(units) -> UnitTensors:
    imp = UnitTensors.full(units, 0.0)
    imp.head[PROTECTED_HEAD] = 1.0
    imp.intermediate[0, : units.intermediate_size // 2] = 1.0
    imp.output[1, 3] = 1.0
    return imp


def _one_step(model, tokenizer, docs, softmask: SoftMask, mode: str, weight_decay: float = 0.01):
    units = resolve_units(model)
    packed = pack_corpus(docs, tokenizer, max_length=48)
    ids, mask = packed.input_ids[:8], packed.attention_mask[:8]
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    model.train()
    torch.manual_seed(0)
    masked_lm_loss(units, hidden_states(model, masked, mask), labels).backward()
    if mode == "grad":
        softmask.scale_gradients()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        return grads
    before = softmask.snapshot()
    optimizer.step()
    softmask.scale_updates(before)
    return None


def _changed_rows(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return (new != old).flatten(1).any(1) if new.dim() > 1 else new != old


@pytest.mark.parametrize("mode", ["update", "grad"])
def test_protected_units_do_not_learn(model_and_tokenizer, legal_docs, mode):
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    original = copy.deepcopy(model)
    # weight decay moves every parameter in grad mode (see the last test), so only update mode gets it
    grads = _one_step(model, tokenizer, legal_docs, SoftMask.build(units, _importance(units)), mode,
                      weight_decay=0.01 if mode == "update" else 0.0)
    old = resolve_units(original)
    layer, head = PROTECTED_HEAD
    d = units.head_size
    rows = torch.zeros(units.num_heads * d, dtype=torch.bool)
    rows[head * d:(head + 1) * d] = True
    for name in ("query", "key", "value"):
        new_lin, old_lin = getattr(units.layers[layer], name), getattr(old.layers[layer], name)
        changed = _changed_rows(new_lin.weight, old_lin.weight)
        assert not changed[rows].any(), f"{name}: a protected head's row moved"
        assert changed[~rows].all(), f"{name}: a free head's row did not move"
        assert not _changed_rows(new_lin.bias, old_lin.bias)[rows].any()
        # rows, never columns: every input column of the protected rows is untouched
        assert torch.equal(new_lin.weight[rows], old_lin.weight[rows])
    out_changed = (units.layers[layer].attention_output.weight != old.layers[layer].attention_output.weight).any(0)
    assert not out_changed[rows].any() and out_changed[~rows].all()
    half = units.intermediate_size // 2
    inter = _changed_rows(units.layers[0].intermediate.weight, old.layers[0].intermediate.weight)
    assert not inter[:half].any() and inter[half:].all()
    out = _changed_rows(units.layers[1].output.weight, old.layers[1].output.weight)
    assert not out[3] and out[torch.arange(len(out)) != 3].all()
    # embeddings, LayerNorms and the MLM head are free
    emb_new = model.get_input_embeddings().weight
    assert not torch.equal(emb_new, original.get_input_embeddings().weight)
    if grads is not None:  # grad mode: protected rows got exactly zero gradient
        q_grad = next(g for n, g in grads.items() if n.endswith(f"layer.{layer}.attention.self.query.weight"))
        assert torch.count_nonzero(q_grad[rows]) == 0 and torch.count_nonzero(q_grad[~rows]) > 0


def test_update_mode_scales_the_update_exactly(model_and_tokenizer, legal_docs):
    """p = p_old + (1 - I) * (p_new - p_old): with I = 0.75 the move is a quarter of the free move."""
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    free, masked = copy.deepcopy(model), copy.deepcopy(model)
    _one_step(free, tokenizer, legal_docs, SoftMask.build(resolve_units(free), UnitTensors.full(units, 0.0)), "update")
    _one_step(masked, tokenizer, legal_docs, SoftMask.build(resolve_units(masked), UnitTensors.full(units, 0.75)),
              "update")
    w0 = units.layers[1].intermediate.weight
    moved_free = resolve_units(free).layers[1].intermediate.weight - w0
    moved_masked = resolve_units(masked).layers[1].intermediate.weight - w0
    assert torch.allclose(moved_masked, 0.25 * moved_free, atol=1e-7)


def test_a_strength_scales_the_importance_the_mask_applies(model_and_tokenizer, legal_docs):
    """softmask_strength s: each unit learns at 1 - s * I. I = 0.75 at s = 0.5 moves 1 - 0.375 of the free move;
    s = 0 moves it all (the mask is there and does nothing); s outside 0..1 is refused."""
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    free, half, zero = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    _one_step(free, tokenizer, legal_docs, SoftMask.build(resolve_units(free), UnitTensors.full(units, 0.0)), "update")
    for copy_, strength in ((half, 0.5), (zero, 0.0)):
        mask = SoftMask.build(resolve_units(copy_), UnitTensors.full(units, 0.75), strength=strength)
        _one_step(copy_, tokenizer, legal_docs, mask, "update")
    w0 = units.layers[1].intermediate.weight
    moved = {name: resolve_units(m).layers[1].intermediate.weight - w0 for name, m in
             (("free", free), ("half", half), ("zero", zero))}
    assert torch.allclose(moved["half"], 0.625 * moved["free"], atol=1e-7)
    assert torch.equal(moved["zero"], moved["free"])
    for strength in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            SoftMask.build(units, UnitTensors.full(units, 0.5), strength=strength)
        with pytest.raises(ValueError, match="softmask_strength"):
            DASConfig(softmask_strength=strength)


def test_grad_mode_leaves_weight_decay_moving_while_update_mode_does_not(model_and_tokenizer, legal_docs):
    """Why `update` is the default: AdamW's decoupled decay moves a unit whose gradient is masked."""
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    ones = UnitTensors.full(units, 1.0)
    by_grad, by_update = copy.deepcopy(model), copy.deepcopy(model)
    _one_step(by_grad, tokenizer, legal_docs, SoftMask.build(resolve_units(by_grad), ones), "grad", weight_decay=0.1)
    _one_step(by_update, tokenizer, legal_docs, SoftMask.build(resolve_units(by_update), ones), "update",
              weight_decay=0.1)
    w0 = units.layers[0].intermediate.weight
    assert not torch.equal(resolve_units(by_grad).layers[0].intermediate.weight, w0)
    assert torch.equal(resolve_units(by_update).layers[0].intermediate.weight, w0)
