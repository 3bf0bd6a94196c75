"""DAS through the real trainer: adapt() must stay DAS, never plain MLM with extra files.

Each test drives `adapt()` (or the trainer's `das_loss`) and checks one mechanism against the
spec, computed here by hand: soft-masking of every unit's parameters, the (1 - I) gradient factor
after clipping, the contrastive pairing and gating, the dropout the KL proxy needs, and the
fingerprints that keep a work folder to one corpus and one base model.
"""

import copy
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from das_engine.data import mask_tokens, pack_corpus
from das_engine.importance import general_importance_raw, sample_batches
from das_engine.run_state import CHECKPOINTS
from das_engine.train_step import as_floats, das_loss
from das_engine.trainer import adapt
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig
from das_formats.fingerprint import base_fingerprint, corpus_fingerprint


def _config(**overrides) -> DASConfig:
    values = dict(steps=4, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=0, log_every=1, lr=1e-3)
    values.update(overrides)
    return DASConfig(**values)


def _load(folder):
    model = AutoModelForMaskedLM.from_pretrained(folder)
    return model, resolve_units(model)


def _head_rows(units, heads: list[int]) -> torch.Tensor:
    """(H*d,) bool: the rows of Q/K/V (and columns of the attention output) of `heads`."""
    rows = torch.zeros(units.num_heads * units.head_size, dtype=torch.bool)
    for h in heads:
        rows[h * units.head_size:(h + 1) * units.head_size] = True
    return rows


# --- soft-masking in `update` mode: protected units do not move at all ---

def _protected(units) -> dict[str, dict[int, list[int]]]:
    """group -> layer -> protected units, in both layers and every group."""
    last_head = units.num_heads - 1
    return {"head": {0: [1], 1: [0, last_head]},
            "intermediate": {0: [0, 5, 17], 1: [3, units.intermediate_size - 1]},
            "output": {0: [2], 1: [7, units.hidden_size - 1]}}


def _importance_of(units, protected) -> UnitTensors:
    importance = UnitTensors.full(units, 0.0)
    for group, layers in protected.items():
        for layer, members in layers.items():
            getattr(importance, group)[layer, members] = 1.0
    return importance


def _mask_of(size: int, members: list[int]) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[members] = True
    return mask


def _assert_rows(new: torch.Tensor, old: torch.Tensor, protected: torch.Tensor, what: str) -> None:
    """Weights: protected rows bit-identical, every other row moved. Biases: protected entries identical."""
    changed = (new != old).flatten(1).any(1) if new.dim() > 1 else new != old
    assert not changed[protected].any(), f"{what}: a protected unit moved"
    if new.dim() > 1:
        assert changed[~protected].all(), f"{what}: a free unit did not move"


def test_update_mode_keeps_every_protected_slice_bit_identical(tmp_path, family_dir, corpus_file):
    base, base_units = _load(family_dir)
    protected = _protected(base_units)
    importance = tmp_path / "importance.safetensors"
    _importance_of(base_units, protected).save(importance)
    out = adapt(family_dir, corpus_file, tmp_path / "v2", _config(mask_mode="update", weight_decay=0.1),
                prev_importance=importance).out_dir
    adapted, units = _load(out)
    for layer, (new, old) in enumerate(zip(units.layers, base_units.layers, strict=True)):
        heads = _head_rows(units, protected["head"].get(layer, []))
        for name in ("query", "key", "value"):
            _assert_rows(getattr(new, name).weight, getattr(old, name).weight, heads, f"{layer}.{name}")
            _assert_rows(getattr(new, name).bias, getattr(old, name).bias, heads, f"{layer}.{name}.bias")
        _assert_rows(new.attention_output.weight.T, old.attention_output.weight.T, heads, f"{layer}.attn-out cols")
        inter = _mask_of(units.intermediate_size, protected["intermediate"].get(layer, []))
        _assert_rows(new.intermediate.weight, old.intermediate.weight, inter, f"{layer}.intermediate")
        _assert_rows(new.intermediate.bias, old.intermediate.bias, inter, f"{layer}.intermediate.bias")
        out_rows = _mask_of(units.hidden_size, protected["output"].get(layer, []))
        _assert_rows(new.output.weight, old.output.weight, out_rows, f"{layer}.output")
        _assert_rows(new.output.bias, old.output.bias, out_rows, f"{layer}.output.bias")
        assert (new.intermediate.bias != old.intermediate.bias)[~inter].any()
    # not masked: embeddings move
    assert not torch.equal(adapted.get_input_embeddings().weight, base.get_input_embeddings().weight)


# --- soft-masking in `grad` mode: gradient handed to the optimizer = (1 - I) * clipped gradient ---

def _fractional_importance(units, seed: int = 0) -> UnitTensors:
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75])
    return UnitTensors.full(units, 0.0).map(lambda t: levels[torch.randint(4, t.shape, generator=gen)])


def _expected_factors(model, units, importance: UnitTensors) -> list[torch.Tensor]:
    """Per parameter (in model.parameters() order) the factor the spec puts on its gradient."""
    factor = {id(p): torch.ones_like(p) for p in model.parameters()}
    d = units.head_size
    for idx, layer in enumerate(units.layers):
        keep_head = (1 - importance.head[idx]).repeat_interleave(d)  # (H*d,): row r belongs to head r // d
        for linear in (layer.query, layer.key, layer.value):
            factor[id(linear.weight)] = keep_head[:, None].expand_as(linear.weight)
            factor[id(linear.bias)] = keep_head
        factor[id(layer.attention_output.weight)] = keep_head[None, :].expand_as(layer.attention_output.weight)
        for linear, group in ((layer.intermediate, importance.intermediate), (layer.output, importance.output)):
            keep = 1 - group[idx]
            factor[id(linear.weight)] = keep[:, None].expand_as(linear.weight)
            factor[id(linear.bias)] = keep
    return [factor[id(p)] for p in model.parameters()]


def _first_step_gradients(run) -> list[torch.Tensor]:
    """The gradients the optimizer sees at its first step, captured by a global step pre-hook."""
    captured: list[list[torch.Tensor]] = []

    def hook(optimizer, args, kwargs):
        if not captured:
            captured.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"]])
    handle = register_optimizer_step_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


def test_grad_mode_scales_the_clipped_gradient_by_one_minus_importance(tmp_path, roberta_dir, corpus_file):
    model, units = _load(roberta_dir)
    free, fractional = tmp_path / "free.safetensors", tmp_path / "fractional.safetensors"
    UnitTensors.full(units, 0.0).save(free)
    importance = _fractional_importance(units)
    importance.save(fractional)
    max_norm = 0.05  # small: clipping is on, and must come before the mask
    config = _config(steps=1, mask_mode="grad", contrastive_weight=0.0, max_grad_norm=max_norm)
    plain = _first_step_gradients(lambda: adapt(roberta_dir, corpus_file, tmp_path / "a", config, prev_importance=free))
    masked = _first_step_gradients(lambda: adapt(roberta_dir, corpus_file, tmp_path / "b", config,
                                                 prev_importance=fractional))
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in plain])) == pytest.approx(max_norm, rel=1e-4)
    factors = _expected_factors(model, units, importance)
    names = [n for n, _ in model.named_parameters()]
    assert len(plain) == len(masked) == len(factors) == len(names)
    for name, g_plain, g_masked, factor in zip(names, plain, masked, factors, strict=True):
        torch.testing.assert_close(g_masked, factor * g_plain, rtol=1e-6, atol=1e-12, msg=name)
    assert any((f < 1).any() for f in factors) and any((f == 0.25).any() for f in factors)


# --- the contrastive term of das_loss: own second pass as positive, o_prev gated by I(<=t-1) ---

def _scaled_copy(model, scales: UnitTensors):
    """A copy whose weights do what unit scales do: a unit's output times g is its producing rows (or, for a
    head, the attention output's columns reading it) times g. Independent of the engine's hooks."""
    gated = copy.deepcopy(model)
    units = resolve_units(gated)
    with torch.no_grad():
        for idx, layer in enumerate(units.layers):
            layer.attention_output.weight.mul_(scales.head[idx].repeat_interleave(units.head_size)[None, :])
            for linear, group in ((layer.intermediate, scales.intermediate), (layer.output, scales.output)):
                linear.weight.mul_(group[idx][:, None])
                linear.bias.mul_(group[idx])
    return gated


def _pooled(model, ids, mask) -> torch.Tensor:
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.double()  # (B, T, D)
    real = mask[..., None].double()
    return (hidden * real).sum(1) / real.sum(1)  # (B, D)


def _info_nce(anchor, positive, previous, tau) -> float:
    """The spec's formula, sample by sample."""
    def s(x, y):
        return (F.cosine_similarity(x, y, dim=0) / tau).item()
    total = 0.0
    for i in range(len(anchor)):
        denominator = sum(math.exp(s(anchor[i], positive[j])) + math.exp(s(anchor[i], previous[j]))
                          for j in range(len(anchor)))
        total -= math.log(math.exp(s(anchor[i], positive[i])) / denominator)
    return total / len(anchor)


@pytest.mark.parametrize("no_grad", [True, False])
@pytest.mark.parametrize("anchor_is_mlm_pass", [True, False])
def test_das_loss_contrastive_term_matches_the_spec(family_dir, legal_docs, no_grad, anchor_is_mlm_pass):
    """In eval mode the passes are deterministic, so the whole term can be recomputed exactly."""
    model, units = _load(family_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(family_dir)
    ids, mask = sample_batches(pack_corpus(legal_docs, tokenizer, max_length=40), 5, 5, seed=0)[0]
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    previous = UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=gen))  # I(<=t-1)
    config = DASConfig(prev_pass_no_grad=no_grad, mlm_pass_as_anchor=anchor_is_mlm_pass, contrastive_weight=0.5)
    loss, parts = das_loss(model, units, ids, masked, mask, labels, previous, config)
    parts = as_floats(parts)
    with torch.no_grad():
        view = masked if anchor_is_mlm_pass else ids
        o_full = _pooled(model, view, mask)  # eval mode: o_full+ is the same pass
        o_prev = _pooled(_scaled_copy(model, previous), view, mask)
        expected_mlm = model(input_ids=masked, attention_mask=mask, labels=labels).loss.item()
    assert parts["contrastive"] == pytest.approx(_info_nce(o_full, o_full, o_prev, 0.05), rel=1e-4)
    assert parts["mlm"] == pytest.approx(expected_mlm, rel=1e-5)
    assert loss.item() == pytest.approx(expected_mlm + 0.5 * parts["contrastive"], rel=1e-5)


# --- EMax and the importance handed on, all three groups ---

def test_emax_and_handing_on_hold_for_every_group(tmp_path, roberta_dir, corpus_file, code_docs):
    first = adapt(roberta_dir, corpus_file, tmp_path / "v1", _config(steps=2))
    second = adapt(first.out_dir, code_docs, tmp_path / "v2", _config(steps=2),
                   prev_importance=first.out_dir / "importance.safetensors")
    for result in (first, second):
        imp_in, dom, cum = (UnitTensors.load(result.out_dir / f"{n}.safetensors")
                            for n in ("importance_in", "domain_importance", "importance"))
        for group, t in cum.items():
            assert torch.equal(t, torch.maximum(getattr(imp_in, group), getattr(dom, group))), group
    handed_on = UnitTensors.load(first.out_dir / "importance.safetensors")
    trained_against = UnitTensors.load(second.out_dir / "importance_in.safetensors")
    for group, t in handed_on.items():
        assert torch.equal(t, getattr(trained_against, group)), group
        assert t.max() > 0, group  # a real importance, not a file of zeros


# --- the KL proxy refuses a model without dropout ---

@pytest.fixture
def no_dropout_dir(tmp_path, family_dir):
    config = AutoConfig.from_pretrained(family_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder = tmp_path / "no-dropout"
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(family_dir).save_pretrained(folder)
    return folder


def test_general_importance_refuses_a_model_without_dropout(tmp_path, no_dropout_dir, corpus_file, legal_docs):
    model, units = _load(no_dropout_dir)
    batches = sample_batches(pack_corpus(legal_docs, AutoTokenizer.from_pretrained(no_dropout_dir), 32), 4, 2, 0)
    with pytest.raises(ValueError, match="needs dropout.*hidden_dropout_prob"):
        general_importance_raw(model, units, batches)
    with pytest.raises(ValueError, match="needs dropout"):
        adapt(no_dropout_dir, corpus_file, tmp_path / "v1", _config())
    assert not (tmp_path / "v1" / "model.safetensors").exists()


# --- a work folder belongs to one corpus and one base model ---

def _cancel_after(steps: int):
    return iter([False] * steps + [True]).__next__


def _other_base(tmp_path, roberta_dir):
    model = AutoModelForMaskedLM.from_pretrained(roberta_dir)
    with torch.no_grad():
        resolve_units(model).layers[0].query.weight[0, 0] += 1e-3
    folder = tmp_path / "other-base"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(folder)
    return folder


def test_resume_and_finished_runs_refuse_another_corpus(tmp_path, roberta_dir, corpus_file, code_docs):
    run, config = tmp_path / "run", _config(checkpoint_every=2)
    adapt(roberta_dir, corpus_file, run, config, should_stop=_cancel_after(3))
    state = json.loads((run / CHECKPOINTS / "step-000003" / "state.json").read_text())["state"]
    assert state["made_from"] == {"corpus_sha256": corpus_fingerprint(corpus_file.read_text().splitlines()),
                                  "base_sha256": base_fingerprint(roberta_dir)}
    with pytest.raises(ValueError, match=f"another corpus; remove {run / CHECKPOINTS}"):
        adapt(roberta_dir, code_docs, run, config)
    done = adapt(roberta_dir, corpus_file, run, config)
    assert done.status == "completed" and done.metrics["resumed_from_step"] == 3
    assert done.metrics["made_from"]["corpus_sha256"] == corpus_fingerprint(corpus_file.read_text().splitlines())
    with pytest.raises(ValueError, match=f"from another corpus; remove {run}"):
        adapt(roberta_dir, code_docs, run, config)
    assert adapt(roberta_dir, corpus_file, run, config).metrics == done.metrics


def test_a_crash_before_the_first_checkpoint_still_refuses_another_corpus(tmp_path, roberta_dir, corpus_file,
                                                                         code_docs):
    """I(0) is saved in the checkpoints folder before step 1: it was computed on the first corpus."""
    run = tmp_path / "run"
    adapt(roberta_dir, corpus_file, run, _config(), should_stop=_cancel_after(0))
    assert (run / CHECKPOINTS / "importance_in.safetensors").is_file()
    with pytest.raises(ValueError, match="another corpus"):
        adapt(roberta_dir, code_docs, run, _config())


def test_resume_and_finished_runs_refuse_another_base(tmp_path, roberta_dir, corpus_file):
    run, config = tmp_path / "run", _config(checkpoint_every=2)
    other = _other_base(tmp_path, roberta_dir)
    adapt(roberta_dir, corpus_file, run, config, should_stop=_cancel_after(3))
    with pytest.raises(ValueError, match=f"another base model; remove {run / CHECKPOINTS}"):
        adapt(other, corpus_file, run, config)
    moved = shutil.copytree(roberta_dir, tmp_path / "moved-base")  # the same base elsewhere: still the same
    done = adapt(moved, corpus_file, run, config)
    assert done.metrics["resumed_from_step"] == 3
    assert done.metrics["made_from"]["base_sha256"] == base_fingerprint(roberta_dir)
    with pytest.raises(ValueError, match=f"from another base model; remove {run}"):
        adapt(other, corpus_file, run, config)


def test_fingerprints_see_document_boundaries_and_hub_ids():
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])
    assert corpus_fingerprint(["a"]) == corpus_fingerprint(["a"])
    assert base_fingerprint("FacebookAI/roberta-base") == "hub:FacebookAI/roberta-base"
    assert json.dumps(base_fingerprint("x/y"))  # JSON-able, as it goes into train_metrics.json
