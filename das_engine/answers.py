"""The service's answers from a masked LM's last hidden states: embeddings and fill-mask candidates.

The service (serving.model) and the batch-prediction job (pipeline.predict) both answer with these, so a
line of a batch gets exactly the answer POST /v1/embeddings or /v1/fill-mask gives the same text on the same version.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .mlm import mean_pool


def pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over real tokens (the pooling the contrastive loss trains), L2-normalised:
    hidden (B, T, D), attention_mask (B, T) -> (B, D)."""
    return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


TopTokens = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # (hidden (N, D), k) -> probs, ids (N, k)


def mlm_top_tokens(mlm_head: torch.nn.Module) -> TopTokens:
    """The top k tokens of each hidden state under the MLM head, with their probabilities: the softmax of the top k
    only, exp(logit - logsumexp), not of the whole vocabulary."""

    def top(hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = mlm_head(hidden)  # (N, V)
        best = logits.topk(k, dim=-1)
        return (best.values - logits.logsumexp(-1, keepdim=True)).exp(), best.indices

    return top


def fill_mask_candidates(hidden: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int, top_tokens: TopTokens,
                         top_k: int, token_text: Callable[[int], str]) -> list[list[list[dict]]]:
    """Per row, per mask token: the top_k tokens with their probabilities. The MLM head (`top_tokens`, e.g.
    mlm_top_tokens(head)) runs at the masked positions only; `token_text` shows a token id as an answer does."""
    where = input_ids == mask_token_id  # (B, T)
    probabilities, indices = top_tokens(hidden[where], top_k)  # hidden (B, T, D); only the masked positions
    answers: list[list[list[dict]]] = [[] for _ in range(input_ids.shape[0])]
    rows = where.nonzero()[:, 0].tolist()
    for row, values, ids in zip(rows, probabilities.tolist(), indices.tolist(), strict=True):
        answers[row].append([{"token": token_text(i), "token_id": i, "score": round(v, 6)}
                             for v, i in zip(values, ids, strict=True)])
    return answers
