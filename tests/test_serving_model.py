"""Serving answers what the model says: tokenised once, padded by hand, the head at mask positions only."""

from __future__ import annotations

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
