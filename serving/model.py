"""A loaded model version that answers fill-mask and embeddings (torch lives here, not in api/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, AutoTokenizer

from das_engine.loading import load_masked_lm
from das_engine.mlm import mean_pool
from das_engine.units import resolve_units

from .errors import InputError


@dataclass
class LoadedModel:
    version: str
    model: AutoModelForMaskedLM
    tokenizer: AutoTokenizer
    mlm_head: torch.nn.Module  # run only at masked positions
    max_tokens: int
    device: torch.device

    @classmethod
    def load(cls, version: str, folder: Path, device: str = "cpu") -> LoadedModel:
        model, tokenizer = load_masked_lm(folder)
        model.eval().to(device)
        max_tokens = min(getattr(model.config, "max_position_embeddings", 512) - 2, 512)
        return cls(version, model, tokenizer, resolve_units(model).mlm_head, max_tokens, torch.device(device))

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    def warm(self) -> None:
        self.fill_mask([f"warm {self.mask_token} up"], top_k=1)
        self.embed(["warm up"])

    def _encode(self, texts: list[str]):
        """Tokenise on the CPU and move to the model's device; a text the tokenizer refuses is an InputError."""
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_tokens)
        except Exception as err:  # noqa: BLE001 - the tokenizer's errors differ by kind; all are the texts' fault
            raise InputError(f"a text cannot be tokenised ({type(err).__name__}: {err})"[:300]) from None
        return enc.to(self.device)

    def check_fill_mask(self, text: str) -> None:
        """Raise InputError unless the text holds a mask token that survives truncation."""
        if self.mask_token not in text:
            raise InputError(f"each text must hold the mask token {self.mask_token!r}")
        ids = self._encode([text])["input_ids"][0]
        if not (ids == self.tokenizer.mask_token_id).any():
            raise InputError(f"the mask token lies beyond the first {self.max_tokens} tokens")

    def measure(self, texts: list[str]) -> tuple[int, int]:
        """(tokens, mask tokens) of the texts together, as the model sees them: specials in, truncated, no padding."""
        try:
            ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        except Exception as err:  # noqa: BLE001 - as in _encode: the texts' fault
            raise InputError(f"a text cannot be tokenised ({type(err).__name__}: {err})"[:300]) from None
        mask_id = self.tokenizer.mask_token_id
        return sum(len(row) for row in ids), sum(row.count(mask_id) for row in ids)

    @torch.inference_mode()
    def fill_mask(self, texts: list[str], top_k: int) -> list[list[list[dict]]]:
        """Per text, per mask token: the top_k tokens with their probabilities."""
        enc = self._encode(texts)
        hidden = self.model.base_model(**enc).last_hidden_state  # (B, T, D)
        where = enc["input_ids"] == self.tokenizer.mask_token_id  # (B, T)
        scores = self.mlm_head(hidden[where]).softmax(-1)  # only the masked positions: (N, V)
        top = scores.topk(top_k, dim=-1)
        answers: list[list[list[dict]]] = [[] for _ in texts]
        rows = where.nonzero()[:, 0].tolist()
        for row, values, ids in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
            answers[row].append([{"token": self.tokenizer.decode([i]).strip(), "token_id": i, "score": round(v, 6)}
                                 for v, i in zip(values, ids, strict=True)])
        return answers

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean of the last hidden states over real tokens (the pooling the contrastive loss trains), L2-normalised."""
        enc = self._encode(texts)
        hidden = self.model.base_model(**enc).last_hidden_state  # (B, T, D)
        return F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1).tolist()
