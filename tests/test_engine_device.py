"""Every tensor the engine creates follows the model's device; bf16 runs the forward passes only.

No GPU here, so the model goes to the `meta` device instead: meta tensors have shapes but no
data, and an op that mixes a meta tensor with a CPU tensor raises, just as CUDA with CPU does.
A gate, mask, multiplier or target made on the CPU for a model elsewhere fails these tests.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers.masking_utils
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import das_engine.importance as importance_module
import das_engine.mlm as mlm_module
import das_engine.train_step as train_step_module
from das_engine.contrastive import contrastive_loss
from das_engine.data import mask_tokens, pack_corpus
from das_engine.importance import domain_importance_raw, general_importance_raw, normalise, sample_batches
from das_engine.loading import load_masked_lm, load_pretrained
from das_engine.mlm import hidden_states
from das_engine.run_state import CHECKPOINTS
from das_engine.softmask import SoftMask
from das_engine.train_step import das_loss, optimizer_step
from das_engine.trainer import adapt
from das_engine.unit_scales import scales_applied
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig

META = torch.device("meta")


def _full_vocabulary_loss(units, hidden, labels, total=None):
    """The MLM loss over every position. The engine's loss runs the head at masked positions only,
    a data-dependent shape the meta device cannot compute; this one creates no tensor either."""
    assert total is None, "one process: the mean over the batch's masked tokens"
    logits = units.mlm_head(hidden)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


@pytest.fixture
def on_meta(family_dir, legal_docs, monkeypatch):
    """(model on meta, its units, tokenizer, CPU batches of real token ids)."""
    # transformers skips building the attention mask when it holds no padding, a look at the data
    # that meta cannot answer: always build it (the same mask, data-independent)
    monkeypatch.setattr(transformers.masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False)
    monkeypatch.setattr(mlm_module, "masked_lm_loss", _full_vocabulary_loss)  # what mlm.lm_loss calls for a masked LM
    model, tokenizer = load_masked_lm(family_dir)  # the engine's own loader: what trainer.adapt trains
    batches = sample_batches(pack_corpus(legal_docs, tokenizer, max_length=32), 4, 2, seed=0)
    model.to(META)
    return model, resolve_units(model), tokenizer, batches


def _meta(batch):
    return tuple(t.to(META) for t in batch)


def _importance(units, seed=0) -> UnitTensors:
    """Fractional importance on the CPU, as the trainer loads it from a file."""
    gen = torch.Generator().manual_seed(seed)
    return UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=gen))


def test_the_trick_holds_meta_and_cpu_do_not_mix(on_meta):
    """If torch ever let these mix, the tests below would prove nothing."""
    model, units, _, batches = on_meta
    with pytest.raises(RuntimeError, match="device"):
        with scales_applied(units, UnitTensors.full(units, 1.0)):  # scales left on the CPU
            hidden_states(model, *_meta(batches[0]))


@pytest.mark.parametrize("load", ["masked_lm", "classifier"])
def test_the_engine_loads_models_without_hub_kernels(family_dir, monkeypatch, load):
    """transformers >= 5.25 turns the `kernels` package on in from_pretrained and re-kernelizes the model
    at every train()/eval() for the device its parameters are on: forwards swapped for hub code
    (inference-only on CUDA), and a ValueError on a device `kernels` does not know. The engine's loads
    keep torch's own layers on every device and mode. (On a transformers without `kernels` this holds
    trivially; the locked one has it.)"""
    import transformers.modeling_utils as modeling_utils
    kernelized = []
    monkeypatch.setattr(modeling_utils, "kernelize", lambda model, **kw: kernelized.append(kw), raising=False)
    if load == "masked_lm":
        model, _ = load_masked_lm(family_dir)
    else:
        model = load_pretrained(AutoModelForSequenceClassification, family_dir, num_labels=3)
    forwards = {name: type(m).forward for name, m in model.named_modules()}
    model.to(META)
    model.train()
    model.eval()
    model.train()
    assert kernelized == [] and not getattr(model, "use_kernels", False)
    assert {name: type(m).forward for name, m in model.named_modules()} == forwards
    assert all("forward" not in vars(m) for m in model.modules())  # no forward patched onto an instance


def test_mask_tokens_follows_the_input_device(on_meta):
    _, _, tokenizer, batches = on_meta
    ids, mask = batches[0]
    masked, labels = mask_tokens(*_meta((ids, mask)), tokenizer, 0.15, torch.Generator().manual_seed(0))
    assert masked.device == labels.device == META
    assert masked.shape == labels.shape == ids.shape and masked.dtype == labels.dtype == torch.long


def test_gates_and_importance_passes_follow_the_model(on_meta):
    model, units, tokenizer, batches = on_meta
    batches = [_meta(b) for b in batches]
    with scales_applied(units, UnitTensors.full(units, 1.0, device=units.device)):
        assert hidden_states(model, *batches[0]).device == META
    general = general_importance_raw(model, units, batches)
    domain = domain_importance_raw(model, units, batches, tokenizer, 0.15, seed=0)
    for raw in (general, domain):
        raw.check_shapes(units)
        for _, t in normalise(raw, "clamp").items():
            assert t.device == META and t.dtype == torch.float32


def test_contrastive_targets_follow_the_representations():
    a, p, prev = (torch.empty(4, 8, device=META) for _ in range(3))
    assert contrastive_loss(a, p, prev, 0.05).device == META


@pytest.mark.parametrize("anchor,no_grad,mode", [(True, True, "update"), (False, True, "grad"),
                                                 (True, False, "update"), (False, False, "grad")])
def test_a_training_step_follows_the_model(on_meta, anchor, no_grad, mode):
    """das_loss (per-sample scales, o_prev scales) forward and backward, then the soft-masked step;
    the importance stays on the CPU, as loaded: das_loss and SoftMask must move it."""
    model, units, tokenizer, batches = on_meta
    model.train()
    ids, mask = batches[0]
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, torch.Generator().manual_seed(0))
    ids, masked, mask, labels = (t.to(META) for t in (ids, masked, mask, labels))
    previous = _importance(units)
    config = DASConfig(mlm_pass_as_anchor=anchor, prev_pass_no_grad=no_grad, mask_mode=mode, weight_decay=0.01)
    loss, parts = das_loss(model, units, ids, masked, mask, labels, previous, config)
    assert loss.device == META and all(v.device == META for v in parts.values())
    loss.backward()
    softmask = SoftMask.build(units, previous)
    # in-place ops on meta accept a CPU operand (CUDA's do not), so the multipliers are checked directly
    assert all(keep.device == META and keep.dtype == param.dtype for param, keep in softmask.entries)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    optimizer_step(model, optimizer, softmask, config)
    assert all(p.device == META for p in model.parameters())


# --- precision ---

def _config(**overrides) -> DASConfig:
    values = dict(steps=6, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=3, log_every=1, lr=1e-3)
    values.update(overrides)
    return DASConfig(**values)


def _autocast_seen(monkeypatch) -> dict[str, set[bool]]:
    """Record whether autocast was on at each forward pass of training and of both importance passes."""
    seen: dict[str, set[bool]] = {"train": set(), "importance": set()}

    def spy(where, inner):
        def wrapped(*args, **kwargs):
            seen[where].add(torch.is_autocast_enabled("cpu"))
            return inner(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(train_step_module, "hidden_states", spy("train", train_step_module.hidden_states))
    monkeypatch.setattr(importance_module, "hidden_states", spy("importance", importance_module.hidden_states))
    return seen


def test_bf16_runs_the_passes_in_bf16_and_keeps_everything_else_fp32(tmp_path, roberta_dir, corpus_file,
                                                                     monkeypatch):
    seen = _autocast_seen(monkeypatch)
    out = tmp_path / "bf16"
    cancelled = adapt(roberta_dir, corpus_file, out, _config(precision="bf16"),
                      should_stop=iter([False] * 4 + [True]).__next__)
    assert cancelled.status == "cancelled"
    checkpoint = out / CHECKPOINTS / "step-000004"
    assert all(t.dtype == torch.float32 for t in load_file(str(checkpoint / "optimizer.safetensors")).values()
               if t.is_floating_point())
    assert all(t.dtype == torch.float32 for t in load_file(str(checkpoint / "model.safetensors")).values())
    result = adapt(roberta_dir, corpus_file, out, _config(precision="bf16"))
    assert result.status == "completed" and result.metrics["resumed_from_step"] == 4
    assert seen == {"train": {True}, "importance": {True}}  # general, training, domain: all under autocast
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values())
    for name in ("importance_in", "domain_importance", "importance"):
        for group, t in load_file(str(out / f"{name}.safetensors")).items():
            assert t.dtype == torch.float32 and torch.isfinite(t).all() and 0 <= t.min() and t.max() < 1, group
    losses = [h[k] for h in json.loads((out / "train_metrics.json").read_text())["history"]
              for k in ("loss", "mlm", "contrastive")]
    assert len(losses) == 18 and all(map(torch.isfinite, torch.tensor(losses)))
    assert result.metrics["settings"]["precision"] == "bf16"


def test_bf16_differs_from_fp32_only_by_rounding(tmp_path, roberta_dir, corpus_file, monkeypatch):
    seen = _autocast_seen(monkeypatch)
    fp32 = adapt(roberta_dir, corpus_file, tmp_path / "fp32", _config(steps=2, checkpoint_every=0))
    assert seen == {"train": {False}, "importance": {False}}
    bf16 = adapt(roberta_dir, corpus_file, tmp_path / "bf16", _config(steps=2, checkpoint_every=0, precision="bf16"))
    first = [(h["mlm"], h2["mlm"]) for h, h2 in zip(fp32.metrics["history"], bf16.metrics["history"], strict=True)]
    assert all(a != b and a == pytest.approx(b, rel=0.05) for a, b in first)


def test_contrastive_similarities_stay_fp32_under_autocast():
    """s / tau with tau = 0.05 magnifies bf16 rounding twentyfold: the term runs in fp32."""
    gen = torch.Generator().manual_seed(0)
    a, p, prev = (torch.randn(8, 64, generator=gen) for _ in range(3))
    exact = contrastive_loss(a, p + a, prev, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = contrastive_loss(a, p + a, prev, 0.05)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, exact, rtol=1e-6, atol=0)


def test_gates_keep_the_activation_dtype_and_their_gradient_fp32(model_and_tokenizer, legal_docs):
    """Under bf16 autocast a gated pass hands bf16 on, like an ungated one; dL/dgate is fp32."""
    model, tokenizer = model_and_tokenizer
    units = resolve_units(model)
    ids, mask = sample_batches(pack_corpus(legal_docs, tokenizer, max_length=32), 2, 2, seed=0)[0]
    seen = []
    handle = units.layers[0].output.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    scales = UnitTensors.full(units, 1.0, requires_grad=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden_states(model, ids, mask)
            with scales_applied(units, scales):
                loss = hidden_states(model, ids, mask).float().pow(2).mean()
    finally:
        handle.remove()
    assert seen == [torch.bfloat16, torch.bfloat16]  # the FFN output layer's input, ungated then gated
    grads = torch.autograd.grad(loss, [t for _, t in scales.items()])
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_loading_a_model_draws_no_progress_bar(bert_dir):
    """Every load goes through das_engine.loading, which turns transformers' "Loading weights" bar off: in a job
    process or a swap it would land in the server's log (and break JSON log lines)."""
    code = f"from das_engine.loading import load_masked_lm; load_masked_lm({str(bert_dir)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "%|" not in done.stderr, done.stderr
