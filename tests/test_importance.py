"""Importance: shapes and range, the KL proxy needs dropout, per-batch gradients, EMax."""

import torch

from das_engine.data import pack_corpus
from das_engine.importance import (
    accumulate,
    domain_importance_raw,
    general_importance_raw,
    normalise,
    sample_batches,
    scale_gradients,
)
from das_engine.mlm import hidden_states
from das_engine.units import UnitTensors, resolve_units


def _batches(tokenizer, docs, n=16, batch_size=8):
    packed = pack_corpus(docs, tokenizer, max_length=64)
    return sample_batches(packed, n, batch_size, seed=0)


def test_importance_shapes_and_range(model_and_tokenizer, legal_docs):
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    batches = _batches(tokenizer, legal_docs)
    general = general_importance_raw(model, units, batches)
    domain = domain_importance_raw(model, units, batches, tokenizer, 0.15, seed=0)
    for raw in (general, domain):
        for rule in ("clamp", "abs"):
            imp = normalise(raw, rule)
            imp.check_shapes(units)
            for _, t in imp.items():
                assert t.dtype == torch.float32
                assert t.min() >= 0.0 and t.max() < 1.0
            # some units are important and (with clamp) some are free
            assert imp.intermediate.max() > 0.5
        assert (normalise(raw, "clamp").intermediate == 0).any()


def test_kl_proxy_needs_dropout(model_and_tokenizer, legal_docs):
    """In eval mode the two passes are identical, so the KL gradient is ~0 (the authors' defect 1)."""
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    batches = _batches(tokenizer, legal_docs)
    train = general_importance_raw(model, units, batches, dropout=True)
    evaluated = general_importance_raw(model, units, batches, dropout=False)
    for (group, t_train), (_, t_eval) in zip(train.items(), evaluated.items(), strict=True):
        assert t_train.mean() > 1e3 * t_eval.mean() + 1e-12, group


def test_scale_gradients_do_not_carry_over_between_batches(model_and_tokenizer, legal_docs):
    model, tokenizer = model_and_tokenizer
    model.eval()
    units = resolve_units(model)
    b1, b2 = _batches(tokenizer, legal_docs, n=8, batch_size=4)

    def loss(batch):
        return hidden_states(model, *batch).pow(2).mean()

    both = scale_gradients(units, loss, [b1, b2])
    one, two = scale_gradients(units, loss, [b1]), scale_gradients(units, loss, [b2])
    for (_, t), (_, a), (_, b) in zip(both.items(), one.items(), two.items(), strict=True):
        assert torch.allclose(t, (a + b) / 2, rtol=1e-5, atol=1e-9)


def test_normalise_rules():
    raw = UnitTensors(head=torch.tensor([[1.0, 3.0]]), intermediate=torch.tensor([[1.0, 2.0, 3.0, 10.0]]),
                      output=torch.tensor([[5.0, 5.0, 5.0]]))
    clamp, absolute = normalise(raw, "clamp"), normalise(raw, "abs")
    z = (raw.intermediate - raw.intermediate.mean()) / raw.intermediate.std()
    assert torch.allclose(clamp.intermediate, torch.tanh(z).clamp_min(0))
    assert torch.allclose(absolute.intermediate, torch.tanh(z).abs())
    assert clamp.intermediate[0, 0] == 0 and absolute.intermediate[0, 0] > 0  # below the mean: free vs marked
    assert torch.allclose(clamp.head, torch.tensor([[0.0, torch.tanh(torch.tensor(2**-0.5)).item()]]))
    assert torch.equal(clamp.output, torch.zeros(1, 3))  # equal units: nothing stands out


def test_emax_never_decreases():
    gen = torch.Generator().manual_seed(0)
    shapes = {"head": (2, 4), "intermediate": (2, 16), "output": (2, 8)}
    cumulative = None
    for _ in range(20):
        new = UnitTensors(**{g: torch.rand(s, generator=gen) for g, s in shapes.items()})
        updated = accumulate(cumulative, new)
        for g, t in updated.items():
            assert torch.equal(t, getattr(new, g) if cumulative is None
                               else torch.maximum(getattr(cumulative, g), getattr(new, g)))
            if cumulative is not None:
                assert (t >= getattr(cumulative, g)).all()
        cumulative = updated


def test_importance_file_roundtrip(tmp_path, model_and_tokenizer):
    model, _ = model_and_tokenizer
    units = resolve_units(model)
    imp = UnitTensors.full(units, 0.25)
    imp.save(tmp_path / "imp.safetensors")
    back = UnitTensors.load(tmp_path / "imp.safetensors")
    back.check_shapes(units)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(imp.items(), back.items(), strict=True))
