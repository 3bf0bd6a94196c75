"""The trainer: outputs of one continual step, cancel and resume, determinism, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from das_engine.run_state import CHECKPOINTS
from das_engine.train_step import get_lr
from das_engine.trainer import adapt
from das_engine.units import UnitTensors, resolve_units
from das_formats.config import DASConfig
from das_formats.layout import GROUPS


def _config(**overrides) -> DASConfig:
    values = dict(steps=8, batch_size=4, max_length=48, importance_samples=8, importance_batch_size=4,
                  checkpoint_every=3, log_every=2, lr=1e-3)
    values.update(overrides)
    return DASConfig(**values)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_first_domain_writes_every_output(tmp_path, family_dir, corpus_file):
    seen = []
    result = adapt(family_dir, corpus_file, tmp_path / "v1", _config(), domain="legal", on_progress=seen.append)
    out = result.out_dir
    assert result.status == "completed"
    model = AutoModelForMaskedLM.from_pretrained(out)
    units = resolve_units(model)
    for name in ("importance_in", "domain_importance", "importance"):
        raw = load_file(str(out / f"{name}.safetensors"))
        assert set(raw) == {"head", "intermediate", "output", "embeddings"}  # protect_embeddings is on by default
        assert all(t.dtype == torch.float32 for t in raw.values())
        UnitTensors.load(out / f"{name}.safetensors").check_shapes(units)
    imp_in, dom, cum = (UnitTensors.load(out / f"{n}.safetensors")
                        for n in ("importance_in", "domain_importance", "importance"))
    for group in (*GROUPS, "embeddings"):  # EMax on every group and on the word-embedding rows
        assert torch.equal(getattr(cum, group), torch.maximum(getattr(imp_in, group), getattr(dom, group))), group
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert {"loss", "mlm", "contrastive", "lr"} <= set(metrics["history"][-1])
    assert metrics["settings"]["mask_mode"] == "update" and metrics["domain"] == "legal"
    assert "general_importance_s" in metrics["timings"]
    assert not (out / CHECKPOINTS).exists()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # not trained: the parent's bytes (a swap shares it)
        assert (out / name).read_bytes() == (family_dir / name).read_bytes(), name
    phases = [p.phase for p in seen]
    assert phases[0] == "general-importance" and phases[-1] == "done" and phases.count("train") == 8


def test_second_domain_trains_against_the_previous_importance(tmp_path, roberta_dir, corpus_file):
    first = adapt(roberta_dir, corpus_file, tmp_path / "v1", _config())
    second = adapt(first.out_dir, corpus_file, tmp_path / "v2", _config(),
                   prev_importance=first.out_dir / "importance.safetensors")
    handed_on = UnitTensors.load(first.out_dir / "importance.safetensors")
    trained_against = UnitTensors.load(second.out_dir / "importance_in.safetensors")
    assert "general_importance_s" not in second.metrics["timings"]
    cumulative = UnitTensors.load(second.out_dir / "importance.safetensors")
    for group in GROUPS:  # handed on, and never lowered, on every group
        assert torch.equal(getattr(handed_on, group), getattr(trained_against, group)), group
        assert (getattr(cumulative, group) >= getattr(handed_on, group)).all(), group


def test_cancel_then_resume_equals_an_unbroken_run(tmp_path, roberta_dir, corpus_file):
    unbroken = adapt(roberta_dir, corpus_file, tmp_path / "unbroken", _config())
    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    cancelled = adapt(roberta_dir, corpus_file, tmp_path / "broken", _config(), should_stop=stop_after_five)
    assert cancelled.status == "cancelled" and cancelled.step == 5
    assert (tmp_path / "broken" / CHECKPOINTS / "step-000005").is_dir()
    resumed = adapt(roberta_dir, corpus_file, tmp_path / "broken", _config())
    assert resumed.metrics["resumed_from_step"] == 5
    a, b = _weights(unbroken.out_dir), _weights(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed.metrics["history"]] == [h["loss"] for h in unbroken.metrics["history"]]


def test_same_seed_same_weights_other_seed_differs(tmp_path, roberta_dir, corpus_file):
    a = _weights(adapt(roberta_dir, corpus_file, tmp_path / "a", _config(steps=4)).out_dir)
    b = _weights(adapt(roberta_dir, corpus_file, tmp_path / "b", _config(steps=4)).out_dir)
    c = _weights(adapt(roberta_dir, corpus_file, tmp_path / "c", _config(steps=4, seed=1)).out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path, roberta_dir, corpus_file):
    adapt(roberta_dir, corpus_file, tmp_path / "run", _config(), should_stop=iter([False] * 4 + [True]).__next__)
    with pytest.raises(ValueError, match="other settings"):
        adapt(roberta_dir, corpus_file, tmp_path / "run", _config(lr=5e-4))


def test_a_completed_run_is_not_trained_again(tmp_path, roberta_dir, corpus_file):
    first = adapt(roberta_dir, corpus_file, tmp_path / "v1", _config(steps=3))
    stamp = (tmp_path / "v1" / "model.safetensors").stat().st_mtime_ns
    again = adapt(roberta_dir, corpus_file, tmp_path / "v1", _config(steps=3))
    assert again.status == "completed" and again.metrics == first.metrics
    assert (tmp_path / "v1" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        adapt(roberta_dir, corpus_file, tmp_path / "v1", _config(steps=4))


def test_resume_against_another_importance_is_refused(tmp_path, roberta_dir, corpus_file):
    first = adapt(roberta_dir, corpus_file, tmp_path / "v1", _config(steps=3))
    adapt(first.out_dir, corpus_file, tmp_path / "v2", _config(), should_stop=iter([False] * 4 + [True]).__next__)
    other = tmp_path / "other.safetensors"
    UnitTensors.load(first.out_dir / "importance.safetensors").map(lambda t: t * 0.5).save(other)
    with pytest.raises(ValueError, match="another importance"):
        adapt(first.out_dir, corpus_file, tmp_path / "v2", _config(), prev_importance=other)


def test_wrong_importance_shape_is_refused(tmp_path, roberta_dir, bert_dir, corpus_file):
    bert_imp = tmp_path / "bert_imp.safetensors"
    UnitTensors(head=torch.zeros(2, 2), intermediate=torch.zeros(2, 512), output=torch.zeros(2, 128)).save(bert_imp)
    with pytest.raises(ValueError, match="shape"):
        adapt(roberta_dir, corpus_file, tmp_path / "x", _config(), prev_importance=bert_imp)


def test_lr_schedule_warms_up_and_ends_at_zero():
    config = DASConfig(steps=100, lr=1e-3, warmup_ratio=0.1)
    lrs = [get_lr(config, s) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] < lrs[5] < lrs[9]
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 2e-5


@pytest.mark.parametrize("field,value", [("steps", 0), ("mask_mode", "both"), ("negative_rule", "square"),
                                         ("mlm_probability", 1.5), ("max_length", 4), ("precision", "fp16")])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DASConfig(**{field: value})
