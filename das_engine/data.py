"""Packing a corpus into fixed-length blocks (once), MLM masking (masked LMs) and next-token labels (causal LMs)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .units import LMKind


@dataclass
class PackedCorpus:
    """Fixed-length blocks: input_ids and attention_mask, both (N, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    num_documents: int
    num_tokens: int  # real (non-padding) tokens over all blocks

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class TokenIds:
    """The token ids of documents (no special tokens) in one array, and where each document starts in it."""

    flat: np.ndarray  # (total,) integer ids
    starts: np.ndarray  # (documents,) int64 offsets into flat

    @classmethod
    def from_lists(cls, encoded: list[list[int]]) -> TokenIds:
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(encoded) else lengths)

    @classmethod
    def concat(cls, parts: list[TokenIds]) -> TokenIds:
        offsets = np.cumsum([0] + [len(p.flat) for p in parts[:-1]])
        return cls(np.concatenate([p.flat for p in parts]) if parts else np.zeros(0, np.int64),
                   np.concatenate([p.starts + o for p, o in zip(parts, offsets, strict=True)]) if parts else
                   np.zeros(0, np.int64))

    def to_lists(self) -> list[list[int]]:
        ends = [*self.starts[1:].tolist(), len(self.flat)]
        flat = self.flat.tolist()
        return [flat[a:b] for a, b in zip(self.starts.tolist(), ends, strict=True)]

    def __len__(self) -> int:
        return len(self.starts)


def tokenize(documents: list[str], tokenizer) -> TokenIds:
    """Each document's token ids, no special tokens."""
    return TokenIds.from_lists(tokenizer(documents, add_special_tokens=False, return_attention_mask=False,
                                         verbose=False)["input_ids"])


def pack_corpus(documents: list[str], tokenizer, max_length: int, token_ids: TokenIds | None = None,
                kind: LMKind = "masked") -> PackedCorpus:
    """Tokenise every document once (or take `token_ids`, the documents' ids, e.g. from das_engine.token_cache), join
    them with the separator, cut into blocks of max_length.

    Masked LMs: each block is [CLS] ... [SEP] (<s> ... </s> for RoBERTa). Causal LMs (`kind="causal"`): each document
    ends with the tokenizer's EOS token and the stream is cut into blocks of max_length tokens with no special tokens
    of their own (a block may start or end mid-document, as in causal pre-training). Either way only the last block
    may be padded.
    """
    if kind == "causal":
        return _pack_causal(documents, tokenizer, max_length, token_ids)
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if None in (cls_id, sep_id, pad_id, tokenizer.mask_token_id):
        raise ValueError("the tokenizer needs cls, sep, pad and mask tokens for masked-LM training")
    if token_ids is None:
        token_ids = tokenize(documents, tokenizer)
    ends = np.append(token_ids.starts[1:], len(token_ids.flat)) if len(token_ids) else token_ids.starts
    stream = torch.from_numpy(np.insert(token_ids.flat.astype(np.int64), ends, sep_id))  # a separator after each
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


def _pack_causal(documents: list[str], tokenizer, max_length: int, token_ids: TokenIds | None) -> PackedCorpus:
    """Causal LM blocks: doc EOS doc EOS ..., cut every max_length tokens; the last block padded (with the pad token,
    or EOS where the tokenizer has none: padding is masked out of attention and labels alike)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer needs an EOS token for causal-LM training (it ends each document)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if token_ids is None:
        token_ids = tokenize(documents, tokenizer)
    ends = np.append(token_ids.starts[1:], len(token_ids.flat)) if len(token_ids) else token_ids.starts
    stream = torch.from_numpy(np.insert(token_ids.flat.astype(np.int64), ends, eos_id))  # EOS after each document
    n_blocks = max(1, -(-len(stream) // max_length))
    input_ids = torch.full((n_blocks * max_length,), pad_id, dtype=torch.long)
    input_ids[: len(stream)] = stream
    attention_mask = (torch.arange(n_blocks * max_length) < len(stream)).long()
    return PackedCorpus(input_ids.view(n_blocks, max_length), attention_mask.view(n_blocks, max_length),
                        len(documents), len(stream))


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A causal LM's labels: the inputs themselves, -100 at padding (the loss shifts them: position t predicts t+1)."""
    return input_ids.masked_fill(attention_mask == 0, -100)


def lm_inputs(kind: LMKind, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
              probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a batch for the LM loss: masked by `mask_tokens` for a masked LM; for a causal LM the
    inputs as they are and `next_token_labels` (nothing is masked and `generator` is not drawn from)."""
    if kind == "causal":
        return input_ids, next_token_labels(input_ids, attention_mask)
    return mask_tokens(input_ids, attention_mask, tokenizer, probability, generator)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: of the chosen tokens 80% [MASK], 10% random, 10% kept.

    Returns (masked_input_ids, labels) on the inputs' device, with labels -100 where nothing is
    predicted. At least one token per batch is chosen, so the loss is always defined. The random
    draws come from `generator` (a CPU generator: the same masks on every device) and are moved
    to the inputs' device; no step asks the device for a value (no host sync on a GPU).
    """
    device = input_ids.device
    special = (input_ids == tokenizer.cls_token_id) | (input_ids == tokenizer.sep_token_id) | (attention_mask == 0)
    score = _draw(torch.rand, input_ids.shape, generator, device)  # (B, T) in [0, 1)
    chosen = (score < probability) & ~special
    # none chosen (tiny batches): take the real token with the lowest score instead
    lowest = score.masked_fill(special, 2.0).argmin()  # index into the flattened (B*T,)
    fallback = torch.zeros_like(chosen).flatten().index_fill(0, lowest.view(1), True).view_as(chosen)
    chosen = chosen | (fallback & ~special & ~chosen.any())
    labels = torch.where(chosen, input_ids, -100)
    action = _draw(torch.rand, input_ids.shape, generator, device)  # (B, T)
    random_ids = _draw(torch.randint, input_ids.shape, generator, device, high=len(tokenizer))  # (B, T)
    masked = torch.where(chosen & (action < 0.8), tokenizer.mask_token_id, input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


def _draw(sampler, shape: torch.Size, generator: torch.Generator, device: torch.device, **kwargs) -> torch.Tensor:
    """A draw on the generator's device (the CPU), moved to `device`."""
    return sampler(size=shape, generator=generator, device=generator.device, **kwargs).to(device)


def step_seed(seed: int, step: int, stream: int) -> int:
    """Every random draw of a step derives from (seed, step): resuming replays it exactly."""
    return (seed * 1_000_003 + step * 97 + stream) % (2**63 - 1)


DOMAIN_STREAM, REPLAY_STREAM = 1, 7  # step_seed streams of the two block orders


def stream_rows(corpus: PackedCorpus, seed: int, stream: int, step: int,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows step*size .. (step+1)*size-1 of an endless stream of seeded permutations of the blocks."""
    positions = torch.arange(step * size, (step + 1) * size)
    epochs, offsets = positions // len(corpus), positions % len(corpus)
    index = torch.empty_like(positions)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(step_seed(seed, epoch, stream)))
        index[epochs == epoch] = perm[offsets[epochs == epoch]]
    return corpus.input_ids[index], corpus.attention_mask[index]


def get_batch(corpus: PackedCorpus, config, step: int, replay: PackedCorpus | None = None,
              replay_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` (config: a DASConfig, for batch_size and seed): batch_size - replay_rows rows of the domain's
    block stream, then replay_rows rows of the replay stream (its own seeded order). Each stream advances by its own
    rows per step, so the same seed gives the same batches, and without replay the batches are the domain's alone."""
    domain_rows = config.batch_size - replay_rows
    ids, mask = stream_rows(corpus, config.seed, DOMAIN_STREAM, step, domain_rows)
    if replay is None or replay_rows == 0:
        return ids, mask
    replay_ids, replay_mask = stream_rows(replay, config.seed, REPLAY_STREAM, step, replay_rows)
    return torch.cat([ids, replay_ids]), torch.cat([mask, replay_mask])
