"""Decoding a causal LM with a KV cache, several sequences in one batch (torch lives here; the scheduler that decides
what runs when is serving/generation.py).

A batch of sequences is `Rows`: transformers' DynamicCache holding every row's keys and values, left-padded to one
length (the padding is zeros, masked out by the attention mask), each row's next position id, and the logits of its
last token. A new sequence is prefilled alone (no padding in its prompt's pass: its first token is what it would be
unbatched) and joins a running batch between two decode steps (`Rows.join`: both left-padded to the longer cache);
a finished one leaves (`Rows.keep`), and columns that became padding in every row are cut away.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .errors import InputError, NoChatTemplate


class GenerationTokenizer:
    """The tokenizer that generation uses, with a lock of its own: the micro-batcher's thread uses the version's other
    tokenizer object (a fast tokenizer is not safe to use from two threads when one changes its truncation)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.lock = tokenizer, threading.Lock()

    def prompt_ids(self, prompt: str) -> list[int]:
        """A completion prompt's ids, with the tokenizer's own special tokens (a BOS where it adds one)."""
        with self.lock, _refused_as_input("the prompt"):
            return list(self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The messages through the tokenizer's chat template, with the prompt of the assistant's turn."""
        with self.lock:
            if not getattr(self.tokenizer, "chat_template", None):
                raise NoChatTemplate("this version's tokenizer has no chat template, so chat messages cannot be put "
                                     "into a prompt: send a plain prompt to POST /v1/completions instead")
            with _refused_as_input("the messages (through the tokenizer's chat template)"):
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            return list(ids)

    def text(self, ids: list[int]) -> str:
        """Generated ids as text, special tokens left out."""
        with self.lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)


@contextmanager
def _refused_as_input(what: str) -> Iterator[None]:
    """An error of the tokenizer or its chat template (a template may raise on roles out of order) as an InputError:
    the request's fault, with the tokenizer's own words."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - tokenizers and jinja raise many types; all are the input's fault
        raise InputError(f"{what} cannot be tokenised ({type(err).__name__}: {err})"[:400]) from None


@dataclass
class Rows:
    """Sequences decoded together: the cache (B rows, left-padded), attention_mask (B, L), positions (B,): each row's
    next position id, logits (B, V): the next-token logits of each row's last token."""

    cache: DynamicCache
    attention_mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return self.attention_mask.shape[0]

    def join(self, other: Rows) -> Rows:
        """This batch's rows, then `other`'s, both left-padded to the longer cache."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        layers = [(torch.cat([_left_pad(k1, width), _left_pad(k2, width)]),
                   torch.cat([_left_pad(v1, width), _left_pad(v2, width)]))
                  for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True)]
        mask = torch.cat([_left_pad(self.attention_mask, width, dim=1), _left_pad(other.attention_mask, width, dim=1)])
        return Rows(DynamicCache(layers), mask, torch.cat([self.positions, other.positions]),
                    torch.cat([self.logits, other.logits]))

    def keep(self, rows: list[int]) -> Rows:
        """Only `rows` (in that order), without the columns that are padding in every one of them."""
        index = torch.tensor(rows, device=self.attention_mask.device)
        mask = self.attention_mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() else 0  # the first column a row still uses
        layers = [(k[index, :, start:], v[index, :, start:]) for k, v in _layers(self.cache)]
        return Rows(DynamicCache(layers), mask[:, start:], self.positions[index], self.logits[index])


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each (B, heads, L, head size)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(tensor: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """`tensor` with zeros before its entries along `dim` (the sequence axis) up to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class Sampler:
    """How one sequence picks its next token: greedy at temperature 0, else a draw from the softmax at `temperature`
    within the smallest set of tokens whose probability reaches `top_p`, with a generator of its own (seeded: the same
    seed gives the same draws whatever runs beside it)."""

    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def next(self, logits: torch.Tensor) -> int:
        """The next token from one row's logits (V,)."""
        if self.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)  # drawn on the CPU on every device
        if self.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs >= self.top_p  # the mass before it already reached top_p
            sorted_probs[outside] = 0
            return int(order[torch.multinomial(sorted_probs, 1, generator=self.generator)])
        return int(torch.multinomial(probs, 1, generator=self.generator))


class CausalDecoder:
    """A causal LM's decoding steps (the scheduler's torch side): prefill one prompt, one step for a batch of rows."""

    def __init__(self, model: torch.nn.Module, tokenizer: GenerationTokenizer, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        config = model.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        self.eos_ids = _eos_ids(model, tokenizer.tokenizer)

    def sampler(self, temperature: float, top_p: float, seed: int | None) -> Sampler:
        return Sampler(temperature, top_p, seed)

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> Rows:
        """One prompt's pass: its cache and the logits of its last token, a batch of one row."""
        input_ids = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(input_ids)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=torch.arange(len(ids),
                         device=self.device)[None], cache=DynamicCache(), use_cache=True, logits_to_keep=1)
        return Rows(out.cache, mask, torch.tensor([len(ids)], device=self.device), out.logits[:, -1].float())

    @torch.inference_mode()
    def step(self, rows: Rows, tokens: list[int]) -> Rows:
        """Each row's next token through the model: the rows with their caches one longer and new logits."""
        input_ids = torch.tensor(tokens, device=self.device)[:, None]  # (B, 1)
        mask = torch.cat([rows.attention_mask, torch.ones_like(input_ids)], dim=1)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=rows.positions[:, None],
                         cache=rows.cache, use_cache=True, logits_to_keep=1)
        return Rows(out.cache, mask, rows.positions + 1, out.logits[:, -1].float())


def _eos_ids(model: torch.nn.Module, tokenizer) -> frozenset[int]:
    """The tokens that end a sequence: the generation config's eos_token_id (one or several), else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
