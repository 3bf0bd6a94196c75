"""The engine on decoder-only causal LMs: tiny random Llama (grouped-query attention) and GPT-2 (Conv1D layers)
built here from configs. The unit map, the unit scales and the soft-mask by effect, the general importance with the
pass's own dropout, the next-token objective (HF's own loss as the reference), and `adapt` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers.masking_utils
from safetensors.torch import load_file
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import das_engine.mlm as mlm_module
from das_engine.data import lm_inputs, next_token_labels, pack_corpus
from das_engine.importance import (
    domain_importance_raw,
    general_importance_raw,
    importance_dropout,
    normalise,
    sample_batches,
    scale_gradients,
)
from das_engine.loading import lm_kind, load_lm, load_masked_lm
from das_engine.mlm import hidden_states, lm_loss
from das_engine.mlm_head import heldout_loss, heldout_mlm_loss
from das_engine.run_state import CHECKPOINTS
from das_engine.softmask import SoftMask
from das_engine.spawn_ranks import adapt_on_ranks
from das_engine.train_step import das_loss, optimizer_step
from das_engine.trainer import adapt
from das_engine.unit_scales import scales_applied
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig

EOS = "<|endoftext|>"
VOCAB = 400


@pytest.fixture(scope="module")
def causal_tokenizer(legal_docs, code_docs) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as GPT-2's and SmolLM2's: one end-of-text token, no pad, no mask."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(legal_docs + code_docs, vocab_size=VOCAB, min_frequency=2, special_tokens=[EOS])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   model_max_length=128)


def _save(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(causal_tokenizer, tmp_path_factory) -> Path:
    """2 layers, 4 query heads sharing 2 key/value heads, tied embeddings (as SmolLM2): no dropout anywhere."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(causal_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return _save(LlamaForCausalLM(config), causal_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def gpt2_dir(causal_tokenizer, tmp_path_factory) -> Path:
    """2 layers, 4 heads, Conv1D weights, dropout 0.1 (GPT-2's own)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(causal_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    return _save(GPT2LMHeadModel(config), causal_tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(params=["llama", "gpt2"])
def causal_dir(request, llama_dir, gpt2_dir) -> Path:
    return llama_dir if request.param == "llama" else gpt2_dir


def _config(**overrides) -> DASConfig:
    values = dict(steps=6, batch_size=4, max_length=32, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=3, log_every=1, lr=1e-3)
    return DASConfig(**{**values, **overrides})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# --- the unit map ---

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
FAMILY_CONFIGS = {  # model_type -> (config values, head size)
    "llama": (TINY, 8),
    "mistral": (TINY, 8),
    "qwen2": (TINY, 8),  # q, k, v with biases
    "qwen3": ({**TINY, "head_dim": 8}, 8),
    "gemma": ({**TINY, "head_dim": 16}, 16),  # head_dim * heads != hidden_size
    "gemma2": ({**TINY, "head_dim": 16}, 16),
    "gemma3_text": ({**TINY, "head_dim": 16}, 16),
    "gpt2": (dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=64), 8),
}


def _tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    values, _ = FAMILY_CONFIGS[model_type]
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values)).eval()


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_the_unit_map_resolves_each_causal_family(model_type):
    model = _tiny(model_type)
    units = resolve_units(model)
    kv = 4 if model_type == "gpt2" else 2
    d = FAMILY_CONFIGS[model_type][1]
    assert (units.kind, units.num_layers, units.num_heads, units.num_key_value_heads, units.head_size) == \
        ("causal", 2, 4, kv, d)
    assert units.shapes() == {"head": (2, 4), "intermediate": (2, 48), "output": (2, 32)}
    assert units.intermediate_at_output_input == (model_type != "gpt2")
    for layer in units.layers:
        for owned in layer.owned.values():
            for o in owned:
                assert o.units.shape[0] == o.param.shape[o.dim] and o.units.dtype == torch.long
    head = units.layers[0].owned["head"]
    if model_type == "gpt2":  # c_attn's 96 output columns: q, k, v of heads 0..3; c_proj's input rows
        expected = torch.arange(32) // 8
        assert torch.equal(head[0].units[:, 0], torch.cat([expected] * 3)) and head[0].dim == 1
        assert head[-1].param is units.layers[0].attention_output.weight and head[-1].dim == 0
    else:  # q rows per query head; k and v rows of kv head g belong to query heads 2g and 2g + 1
        q = next(o for o in head if o.param is units.layers[0].query.weight)
        k = next(o for o in head if o.param is units.layers[0].key.weight)
        assert torch.equal(q.units[:, 0], torch.arange(4 * d) // d)
        assert k.units.shape == (2 * d, 2) and k.units[0].tolist() == [0, 1] and k.units[-1].tolist() == [2, 3]
        assert head[-1].param is units.layers[0].attention_output.weight and head[-1].dim == 1
    with pytest.raises(ValueError, match="causal LM: it has no MLM head"):
        _ = units.mlm_head


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_a_zero_scale_removes_exactly_the_parameters_its_unit_owns(model_type):
    """By effect, on every family: gating a unit to 0 equals zeroing what it owns (a head: its columns of the
    attention output projection; an FFN neuron: its gate and up rows, or its c_fc column; an output neuron: its row
    of the down projection), and changes the output."""
    model = _tiny(model_type)
    units = resolve_units(model)
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    scales = UnitTensors.full(units, 1.0)
    scales.head[1, 2] = 0.0
    scales.intermediate[0, 5] = 0.0
    scales.output[1, 7] = 0.0
    pruned = copy.deepcopy(model)
    layers = resolve_units(pruned).layers
    with torch.no_grad():
        for layer, group, unit in ((1, "head", 2), (0, "intermediate", 5), (1, "output", 7)):
            for o in layers[layer].owned[group]:
                if group == "head" and o.param is not layers[layer].attention_output.weight:
                    continue  # q, k, v rows: zeroing a shared key/value head would touch its other query heads
                hit = (o.units == unit).any(-1)
                o.param.copy_(o.param.masked_fill(_along(hit, o.param, o.dim), 0.0))
        plain = hidden_states(model, ids, mask)
        with scales_applied(units, scales):
            gated = hidden_states(model, ids, mask)
        removed = hidden_states(pruned, ids, mask)
    torch.testing.assert_close(gated, removed, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(gated, plain, atol=1e-4)


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_the_lm_head_gives_the_models_own_logits(model_type):
    """The engine's head on the last hidden states is the model's own forward (Gemma 2's logit soft-capping too)."""
    model = _tiny(model_type)
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = resolve_units(model).lm_logits(hidden_states(model, ids, mask))
        theirs = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs)


def _along(hit: torch.Tensor, param: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * param.dim()
    shape[dim] = -1
    return hit.reshape(shape).expand_as(param)


# --- loading, packing, the objective ---

def test_the_loader_says_the_kind_and_the_masked_loader_refuses_a_causal_lm(llama_dir, gpt2_dir, bert_dir):
    for folder, model_class in ((llama_dir, LlamaForCausalLM), (gpt2_dir, GPT2LMHeadModel)):
        loaded = load_lm(folder)
        assert loaded.kind == "causal" == lm_kind(folder) and isinstance(loaded.model, model_class)
        with pytest.raises(ValueError, match="causal language model, not a masked one"):
            load_masked_lm(folder)
    assert load_lm(bert_dir).kind == "masked" == lm_kind(bert_dir)


def test_causal_blocks_end_documents_with_eos_and_label_only_real_tokens(causal_tokenizer):
    docs = ["the licence grants permission", "to copy and modify", "the work"]
    packed = pack_corpus(docs, causal_tokenizer, max_length=8, kind="causal")
    ids = [causal_tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = [t for doc in ids for t in [*doc, causal_tokenizer.eos_token_id]]
    assert packed.input_ids[packed.attention_mask.bool()].tolist() == stream  # no CLS/SEP per block, EOS per doc
    assert packed.num_tokens == len(stream) and packed.attention_mask[:-1].all()  # only the last block is padded
    labels = next_token_labels(packed.input_ids, packed.attention_mask)
    assert torch.equal(labels[packed.attention_mask.bool()], packed.input_ids[packed.attention_mask.bool()])
    assert (labels[~packed.attention_mask.bool()] == -100).all()


def test_the_next_token_loss_is_the_models_own_causal_loss(causal_dir, causal_tokenizer, legal_docs):
    """Our loss (the LM head at scored positions only) equals transformers' loss with labels = inputs, padding
    included (the last block), so importance and training optimise what the model's own forward reports."""
    model, tokenizer, _ = load_lm(causal_dir)
    model.eval()
    units = resolve_units(model)
    packed = pack_corpus(legal_docs[:5], tokenizer, max_length=32, kind="causal")
    ids, mask = packed.input_ids[-3:], packed.attention_mask[-3:]
    assert not mask[-1].all()  # the padded last block is in
    labels = next_token_labels(ids, mask)
    with torch.no_grad():
        ours = lm_loss(units, hidden_states(model, ids, mask), labels)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_next_token_loss_goes_down_on_a_repetitive_corpus(tmp_path, llama_dir):
    docs = [f"the licensee may copy the work number {i % 5} and the licensor keeps the rights." for i in range(60)]
    base = load_lm(llama_dir)
    before = heldout_loss(base.model, base.tokenizer, docs[:10], max_length=32)
    result = adapt(llama_dir, docs, tmp_path / "v1", _config(steps=40, lr=3e-3, batch_size=8, contrastive_weight=0.0,
                                                             checkpoint_every=0))
    history = result.metrics["history"]
    assert "mlm" not in history[0] and history[-1]["next_token"] < history[0]["next_token"] - 1.5
    trained = load_lm(result.out_dir)
    assert heldout_loss(trained.model, trained.tokenizer, docs[:10], max_length=32) < before - 1.5
    with pytest.raises(ValueError, match="causal LM: it has no MLM loss"):
        heldout_mlm_loss(trained.model, trained.tokenizer, docs[:10])


# --- importance ---

def _batches(tokenizer, docs, n=16, batch_size=8):
    return sample_batches(pack_corpus(docs, tokenizer, max_length=32, kind="causal"), n, batch_size, seed=0)


def test_the_general_importance_of_a_llama_uses_its_own_dropout_and_is_not_noise(llama_dir, legal_docs):
    """A Llama has no dropout: the pass adds p = 0.1 on every layer's output. Units made to matter (head 1's
    columns of o_proj, FFN neurons 0..7's columns and output neurons 0..3's rows of down_proj, scaled by 4: a random
    model has no structure of its own to find) come out important in two runs with other dropout draws, which
    agree; without dropout the two passes are identical and the gradients ~0 (the authors' defect 1)."""
    model, tokenizer, _ = load_lm(llama_dir)
    units = resolve_units(model)
    assert importance_dropout(model, units) == "added p=0.1"
    with torch.no_grad():
        for layer in units.layers:
            layer.attention_output.weight[:, units.head_size:2 * units.head_size] *= 4
            layer.output.weight[:, :8] *= 4
            layer.output.weight[:4] *= 4
    batches = _batches(tokenizer, legal_docs, n=32)
    torch.manual_seed(1)
    first = general_importance_raw(model, units, batches)
    torch.manual_seed(2)
    second = general_importance_raw(model, units, batches)
    off = general_importance_raw(model, units, batches, dropout=False)
    planted = {"head": torch.arange(4) == 1, "intermediate": torch.arange(64) < 8, "output": torch.arange(32) < 4}
    for raw in (first, second):
        for group, imp in normalise(raw, "clamp").items():
            found, rest = imp[:, planted[group]].mean(), imp[:, ~planted[group]].mean()
            assert found > 0.5 and found > 3 * rest, group
    for (group, a), (_, b), (_, z) in zip(first.items(), second.items(), off.items(), strict=True):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.5, group
        assert a.mean() > 1e3 * z.mean() + 1e-12, group
    assert not any(module._forward_hooks for module in model.modules())  # the added dropout's hooks are gone


def test_a_gpt2_uses_its_own_dropout_and_a_gpt2_without_any_gets_the_added_one(gpt2_dir):
    model, _, _ = load_lm(gpt2_dir)
    assert importance_dropout(model, resolve_units(model)) == "model"
    still = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0))
    assert importance_dropout(still, resolve_units(still)) == "added p=0.1"


def test_domain_importance_is_the_gradient_of_the_next_token_loss(causal_dir, legal_docs):
    model, tokenizer, _ = load_lm(causal_dir)
    units = resolve_units(model)
    batches = _batches(tokenizer, legal_docs, n=8, batch_size=4)
    ours = domain_importance_raw(model, units, batches, tokenizer, 0.15, seed=0, embeddings=True)
    model.eval()

    def their_loss(batch):
        ids, mask = batch
        return model(input_ids=ids, attention_mask=mask, labels=next_token_labels(ids, mask)).loss

    reference = scale_gradients(units, their_loss, batches, embeddings=True)
    for (group, a), (_, b) in zip(ours.items(), reference.items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9, msg=group)
    imp = normalise(ours, "clamp")
    assert imp.intermediate.max() > 0.5 and (imp.intermediate == 0).any()
    assert imp.embeddings.shape == (1, len(tokenizer)) and (imp.embeddings > 0).sum() > 10


# --- soft-masking by effect, through adapt ---

def test_important_units_do_not_move_under_update_mode_soft_masking(causal_dir, tmp_path, legal_docs):
    """Importance 1 on one head, half of layer 0's FFN neurons, one output neuron and some embedding rows; 0 on the
    rest. After a DAS step (update mode, weight decay on) every protected entry is bit-identical and the free ones
    moved: per group, with each family's orientation (Linear rows, Conv1D columns) and key/value heads shared."""
    model, tokenizer, _ = load_lm(causal_dir)
    units = resolve_units(model)
    importance = UnitTensors.full(units, 0.0)
    importance.head[0, 0] = 1.0  # layer 0, query head 0 (shares its key/value head with head 1 in the Llama)
    importance.intermediate[0, :32] = 1.0
    importance.output[1, 3] = 1.0
    protected_rows = torch.tensor(sorted({*tokenizer(legal_docs[0], add_special_tokens=False)["input_ids"][:20]}))
    rows = torch.zeros(1, len(tokenizer))
    rows[0, protected_rows] = 1.0
    importance.embeddings = rows
    importance.save(tmp_path / "given.safetensors")
    result = adapt(causal_dir, legal_docs[:40], tmp_path / "v", _config(steps=4, lr=1e-2, weight_decay=0.01),
                   prev_importance=tmp_path / "given.safetensors")
    trained = resolve_units(load_lm(result.out_dir).model)
    d, conv1d = units.head_size, units.family == "gpt2"

    def moved(new: torch.Tensor, old: torch.Tensor, dim: int) -> torch.Tensor:
        """Which output features (dim's entries) changed."""
        return (new != old).movedim(dim, 0).flatten(1).any(1) if new.dim() > 1 else new != old

    out_dim = 1 if conv1d else 0
    new, old = trained.layers[0], units.layers[0]
    head0 = torch.arange(4 * d) < d
    if conv1d:  # c_attn: q, k and v of head 0 (all 3 blocks), and its bias
        changed = moved(new.query.weight, old.query.weight, 1)
        assert not changed[head0.repeat(3)].any() and changed[~head0.repeat(3)].all()
        assert not moved(new.query.bias, old.query.bias, 0)[head0.repeat(3)].any()
    else:
        q = moved(new.query.weight, old.query.weight, 0)
        assert not q[head0].any() and q[~head0].all()
        for name in ("key", "value"):  # kv head 0 serves query heads 0 and 1: protected by the larger importance
            kv = moved(getattr(new, name).weight, getattr(old, name).weight, 0)
            assert not kv[:d].any() and kv[d:].all(), name
    read = moved(new.attention_output.weight, old.attention_output.weight, 0 if conv1d else 1)
    assert not read[head0].any() and read[~head0].all()
    mlp_new, mlp_old = new.block.mlp, old.block.mlp
    for name in (["c_fc"] if conv1d else ["gate_proj", "up_proj"]):  # FFN neuron j: its gate and up rows (c_fc column)
        changed = moved(getattr(mlp_new, name).weight, getattr(mlp_old, name).weight, out_dim)
        assert not changed[:32].any() and changed[32:].all(), name
    if conv1d:
        assert not moved(mlp_new.c_fc.bias, mlp_old.c_fc.bias, 0)[:32].any()
    out_changed = moved(trained.layers[1].output.weight, units.layers[1].output.weight, out_dim)
    assert not out_changed[3] and out_changed[torch.arange(len(out_changed)) != 3].all()
    emb_new, emb_old = trained.word_embeddings.weight, units.word_embeddings.weight
    assert torch.equal(emb_new[protected_rows], emb_old[protected_rows])
    free = torch.ones(len(tokenizer), dtype=torch.bool)
    free[protected_rows] = False
    assert (emb_new[free] != emb_old[free]).any(1).float().mean() > 0.9  # tied to the head: every row has a gradient


# --- adapt end to end ---

def test_adapt_runs_a_causal_lm_with_softmask_replay_and_merge(causal_dir, tmp_path, legal_docs, code_docs):
    seen = []
    config = _config(replay_fraction=0.25, merge_auto=True, merge_weighting="importance")
    first = adapt(causal_dir, legal_docs[:60], tmp_path / "v1", config, domain="legal", on_progress=seen.append)
    second = adapt(first.out_dir, code_docs[:60], tmp_path / "v2", config, domain="code",
                   prev_importance=first.out_dir / "importance.safetensors", replay={"legal": legal_docs[:60]})
    model = load_lm(first.out_dir).model
    units = resolve_units(model)
    for name in ("importance_in", "domain_importance", "importance"):
        raw = load_file(str(first.out_dir / f"{name}.safetensors"))
        assert set(raw) == {"head", "intermediate", "output", "embeddings"}
        imp = UnitTensors.load(first.out_dir / f"{name}.safetensors")
        imp.check_shapes(units)
        assert all(t.min() >= 0 and t.max() < 1 for _, t in imp.items())
    metrics = first.metrics
    assert metrics["kind"] == "causal" and metrics["family"] in ("llama", "gpt2")
    assert metrics["importance_dropout"] == ("added p=0.1" if metrics["family"] == "llama" else "model")
    assert {"loss", "next_token", "contrastive"} <= set(metrics["history"][-1])
    assert seen[-1].phase == "done" and "next_token" in seen[-1].losses
    assert second.metrics["replay"]["rows_per_batch"] == 1 and second.metrics["replay"]["corpora"]
    assert second.metrics["merge"]["auto"]["parent_losses"]["old"]["legal"] > 0  # held-out next-token loss
    assert second.metrics["importance_dropout"] is None  # it trained against the handed-on importance
    handed_on = UnitTensors.load(first.out_dir / "importance.safetensors")
    cumulative = UnitTensors.load(second.out_dir / "importance.safetensors")
    assert all((t >= getattr(handed_on, g)).all() for g, t in cumulative.items())  # EMax


def test_a_cancelled_causal_run_resumes_to_the_weights_of_an_unbroken_one(causal_dir, tmp_path, legal_docs):
    unbroken = adapt(causal_dir, legal_docs[:60], tmp_path / "unbroken", _config())
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    cancelled = adapt(causal_dir, legal_docs[:60], tmp_path / "broken", _config(), should_stop=stop_after_four)
    assert cancelled.status == "cancelled" and (tmp_path / "broken" / CHECKPOINTS / "step-000004").is_dir()
    resumed = adapt(causal_dir, legal_docs[:60], tmp_path / "broken", _config())
    assert resumed.metrics["resumed_from_step"] == 4
    a, b = _weights(unbroken.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("importance_in", "domain_importance", "importance"):
        assert UnitTensors.load(unbroken.out_dir / f"{name}.safetensors").equals(
            UnitTensors.load(resumed.out_dir / f"{name}.safetensors")), name
    assert resumed.metrics["importance_dropout"] == unbroken.metrics["importance_dropout"]


def test_a_llama_trains_on_two_ranks_as_in_one_process(llama_dir, tmp_path, legal_docs):
    """`--nproc` on a causal base: the global batch's next-token loss is shared over the ranks by its scored tokens
    (no dropout in a Llama, so the runs agree exactly up to float order)."""
    given = tmp_path / "given.safetensors"
    units = resolve_units(load_lm(llama_dir).model)
    generator = torch.Generator().manual_seed(3)
    UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=generator) * 0.99).save(given)
    config = _config(lr=1e-2, warmup_ratio=0.0, protect_embeddings=False)
    one = adapt(llama_dir, legal_docs[:60], tmp_path / "one", config, prev_importance=given)
    two = adapt_on_ranks(2, llama_dir, legal_docs[:60], tmp_path / "two", config, prev_importance=given)
    a, b, start = _weights(one.out_dir), _weights(two.out_dir), load_file(str(llama_dir / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3
    assert two.metrics["history"][-1]["next_token"] == pytest.approx(one.metrics["history"][-1]["next_token"],
                                                                     rel=1e-4)


def test_ncl_on_a_causal_lm_computes_no_importance(causal_dir, tmp_path, legal_docs):
    result = adapt(causal_dir, legal_docs[:30], tmp_path / "v", _config(steps=2, softmask=False))
    metrics = json.loads((result.out_dir / "train_metrics.json").read_text())
    assert metrics["kind"] == "causal" and metrics["importance_dropout"] is None  # NCL computes no importance
    assert not (result.out_dir / "importance.safetensors").exists()


def test_every_tensor_the_engine_makes_follows_a_causal_model_to_its_device(causal_dir, legal_docs, monkeypatch):
    """On the meta device (no GPU here; mixing meta with CPU raises as CUDA does): both importance passes (the
    added dropout too), das_loss with its contrastive passes, the soft-mask built from the shared key/value rows, and
    the masked optimizer step. The head at scored positions only has a data-dependent shape: the full-vocabulary
    loss stands in (test_engine_device.py does the same for masked LMs)."""
    def full_vocabulary_loss(units, hidden, labels, total=None):
        return F.cross_entropy(units.lm_logits(hidden).flatten(0, 1), labels.flatten(), ignore_index=-100)

    monkeypatch.setattr(mlm_module, "masked_lm_loss", full_vocabulary_loss)  # next_token_loss calls it, shifted
    monkeypatch.setattr(transformers.masking_utils, "_ignore_causal_mask_sdpa", lambda *a, **k: False)  # a data look
    meta = torch.device("meta")
    model, tokenizer, _ = load_lm(causal_dir)
    batches = _batches(tokenizer, legal_docs, n=4, batch_size=2)
    model.to(meta)
    units = resolve_units(model)
    on_meta = [tuple(t.to(meta) for t in batch) for batch in batches]
    for raw in (general_importance_raw(model, units, on_meta),
                domain_importance_raw(model, units, on_meta, tokenizer, 0.15, seed=0)):
        assert all(t.device == meta for _, t in raw.items())
    ids, mask = batches[0]
    inputs, labels = lm_inputs("causal", ids, mask, tokenizer, 0.15, torch.Generator())
    previous = UnitTensors.full(units, 0.5, device=meta)
    loss, _ = das_loss(model, units, *(t.to(meta) for t in (ids, inputs, mask, labels)), previous,
                       DASConfig(batch_size=2))
    loss.backward()
    softmask = SoftMask.build(units, previous)
    assert all(keep.device == meta for _, keep in softmask.entries)
    optimizer_step(model, torch.optim.AdamW(model.parameters()), softmask, DASConfig())
