"""Fill-mask on any model folder (used by the demo and to compare versions)."""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer


@torch.inference_mode()
def fill_mask(model_dir: str, texts: list[str], top_k: int = 5) -> list[list[dict]]:
    """Top-k tokens for the first mask token of each text. '[MASK]' is mapped to the model's mask token."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    texts = [t.replace("[MASK]", tokenizer.mask_token) for t in texts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    logits = model(**enc).logits  # (B, T, V)
    answers = []
    for row, ids in enumerate(enc["input_ids"]):
        where = (ids == tokenizer.mask_token_id).nonzero()
        if len(where) == 0:
            raise ValueError(f"text {row} holds no {tokenizer.mask_token} token")
        probs = logits[row, where[0, 0]].softmax(-1)
        scores, tokens = probs.topk(top_k)
        answers.append([{"token": tokenizer.decode([int(t)]).strip(), "token_id": int(t), "score": float(s)}
                        for s, t in zip(scores, tokens, strict=True)])
    return answers
