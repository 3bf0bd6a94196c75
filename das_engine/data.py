"""Corpus reading, packing into fixed-length blocks (once), and MLM masking."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

MAX_DOCUMENT_CHARS = 1_000_000


class CorpusError(ValueError):
    """The corpus file cannot be used; the message says what to fix."""


def read_corpus(path: str | Path) -> list[str]:
    """Documents of a UTF-8 text file (one per line) or of JSONL with a `text` field per line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise CorpusError(f"{path}: looks binary (NUL bytes); give UTF-8 text or JSONL")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CorpusError(f"{path}: not UTF-8 (invalid byte at offset {err.start}, line {line}); "
                          "re-encode the file as UTF-8") from None
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or first.startswith("{")
    docs = _jsonl_documents(path, lines) if is_jsonl else [ln.strip() for ln in lines if ln.strip()]
    if not docs:
        raise CorpusError(f"{path}: holds no documents (empty, or only blank lines)")
    too_long = next((i for i, d in enumerate(docs) if len(d) > MAX_DOCUMENT_CHARS), None)
    if too_long is not None:
        raise CorpusError(f"{path}: document {too_long + 1} exceeds {MAX_DOCUMENT_CHARS} characters")
    return docs


def _jsonl_documents(path: Path, lines: list[str]) -> list[str]:
    docs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f"{path}: line {number} has no string field 'text'")
        if record["text"].strip():
            docs.append(record["text"].strip())
    return docs


@dataclass
class PackedCorpus:
    """Fixed-length blocks: input_ids and attention_mask, both (N, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    num_documents: int
    num_tokens: int  # real (non-padding) tokens over all blocks

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack_corpus(documents: list[str], tokenizer, max_length: int) -> PackedCorpus:
    """Tokenise every document once, join them with the separator, cut into blocks of max_length.

    Each block is [CLS] ... [SEP] (<s> ... </s> for RoBERTa); only the last block may be padded.
    """
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if None in (cls_id, sep_id, pad_id, tokenizer.mask_token_id):
        raise ValueError("the tokenizer needs cls, sep, pad and mask tokens for masked-LM training")
    encoded = tokenizer(documents, add_special_tokens=False, return_attention_mask=False,
                        verbose=False)["input_ids"]
    stream = torch.tensor([t for ids in encoded for t in (*ids, sep_id)], dtype=torch.long)
    body = max_length - 2
    n_blocks = max(1, -(-len(stream) // body))
    padded = torch.full((n_blocks * body,), pad_id, dtype=torch.long)
    padded[: len(stream)] = stream
    blocks = padded.view(n_blocks, body)  # (N, L-2)
    real = torch.zeros(n_blocks * body, dtype=torch.long)
    real[: len(stream)] = 1
    real = real.view(n_blocks, body)
    ones = torch.ones(n_blocks, 1, dtype=torch.long)
    # each block ends with [SEP] right after its last real token
    input_ids = torch.cat([ones * cls_id, blocks, torch.full_like(ones, pad_id)], dim=1)
    lengths = real.sum(1)  # (N,)
    input_ids[torch.arange(n_blocks), lengths + 1] = sep_id
    attention_mask = (torch.arange(max_length)[None, :] < (lengths + 2)[:, None]).long()
    return PackedCorpus(input_ids, attention_mask, len(documents), int(attention_mask.sum()))


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: of the chosen tokens 80% [MASK], 10% random, 10% kept.

    Returns (masked_input_ids, labels) with labels -100 where nothing is predicted. At least
    one token per batch is chosen, so the loss is always defined.
    """
    special = (input_ids == tokenizer.cls_token_id) | (input_ids == tokenizer.sep_token_id) | (attention_mask == 0)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    if not chosen.any():
        candidates = (~special).nonzero()
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
        chosen[pick[:, 0], pick[:, 1]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = tokenizer.mask_token_id
    randomise = chosen & (action >= 0.8) & (action < 0.9)
    masked[randomise] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomise]
    return masked, labels
