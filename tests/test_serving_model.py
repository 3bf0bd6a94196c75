"""Serving answers what the model says: tokenised once, padded by hand, the head at mask positions only."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from serving.model import LoadedModel


def test_fill_mask_matches_the_full_model(family_dir):
    tokenizer = AutoTokenizer.from_pretrained(family_dir)
    mask = tokenizer.mask_token
    texts = [f"the licence is {mask} here", f"{mask} software is provided as is, without {mask} of any kind",
             f"short {mask}"]
    served = LoadedModel.load("v", family_dir).fill_mask(texts, top_k=3)
    model = AutoModelForMaskedLM.from_pretrained(family_dir).eval()
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        probs = model(**enc).logits.softmax(-1)  # (B, T, V): the reference, every position
    for row, answers in enumerate(served):
        positions = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero()[:, 0]
        assert len(answers) == len(positions)
        for answer, position in zip(answers, positions, strict=True):
            top = probs[row, position].topk(3)
            assert [a["token_id"] for a in answer] == top.indices.tolist()
            # the same probabilities (served: exp(logit - logsumexp) of the top k; rounded to 6 places)
            assert [a["score"] for a in answer] == pytest.approx(top.values.tolist(), abs=2e-6)
            assert answer[0]["token"] == tokenizer.decode([answer[0]["token_id"]]).strip()


def test_a_batch_answers_each_text_as_if_alone(family_dir):
    loaded = LoadedModel.load("v", family_dir)
    texts = ["one short text", "a much longer text that needs padding for the others in its batch", "mid length"]
    together = torch.tensor(loaded.embed(texts))
    alone = torch.tensor([loaded.embed([t])[0] for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def _adapted_copy(source, target, seed: int):
    """A 'version' of `source`: its files, with every weight nudged (the tokenizer files untouched)."""
    import shutil

    shutil.copytree(source, target)
    model = AutoModelForMaskedLM.from_pretrained(target)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(target)
    return target


def test_a_version_with_the_same_tokenizer_files_shares_the_tokenizer(family_dir, tmp_path):
    """A swap between versions of one base reuses the serving tokenizer (building one holds the GIL
    ~20 ms while the old version answers); the new weights are still the ones loaded."""
    current = LoadedModel.load("v1", _adapted_copy(family_dir, tmp_path / "v1", 0))
    folder = _adapted_copy(family_dir, tmp_path / "v2", 1)
    swapped = LoadedModel.load("v2", folder, current)
    assert swapped.tokenizer is current.tokenizer
    texts = [f"the licence is {current.mask_token} here"]
    assert swapped.fill_mask(texts, top_k=3) == LoadedModel.load("v2", folder).fill_mask(texts, top_k=3)
    assert swapped.fill_mask(texts, top_k=3) != current.fill_mask(texts, top_k=3)

    other = tmp_path / "v3"
    _adapted_copy(family_dir, other, 2)
    config = other / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 64}))
    reloaded = LoadedModel.load("v3", other, current)
    assert reloaded.tokenizer is not current.tokenizer
    assert reloaded.tokenizer.model_max_length == 64


def test_warm_does_not_tokenise(family_dir):
    """warm() runs on the loader thread while the batcher thread may be tokenising with a shared
    tokenizer (a fast tokenizer used from two threads at once can fail): so it makes its ids itself."""
    loaded = LoadedModel.load("v", family_dir)

    class NoCalls:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            raise AssertionError("warm() called the tokenizer")

    loaded.tokenizer = NoCalls(loaded.tokenizer)
    loaded.warm()
