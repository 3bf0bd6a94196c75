"""The one way this project loads a pretrained model (masked or causal LM, sequence classifier) and its tokenizer.

A language model is masked (BERT, RoBERTa: MLM) or causal (Llama, Qwen2, Gemma, GPT-2: next token), as its
family's `units.FAMILIES` entry says (`units.family_kind`); `load_lm` loads either and says which
(`LoadedLM.kind`), `load_masked_lm` is for callers that need a masked LM (fill-mask, the MLM head) and refuses a
causal one by name.

Two rules every load follows:
- `from_pretrained` is not thread-safe in transformers 5 (it patches module construction while it
  builds a model on the meta device), and an embedded service loads models from two threads (the
  worker and the hot swap): every load goes through one process-wide lock.
- No hub kernels. Since transformers 5.25, `from_pretrained` turns on the `kernels` package by
  default, and every `model.train()` / `model.eval()` then re-"kernelizes" the model for the device
  its parameters are on: it swaps the forward of decorated layers (GELU/SiLU activations, RMSNorm,
  rotary embeddings) for code downloaded from the Hugging Face hub. For this engine that means
  (a) a model on a device `kernels` does not know (`meta`, which the device tests use) raises in
  `train()`; (b) on CUDA, `eval()` fetches inference-only activation kernels at run time: with no hub
  (this service's normal case) the importance pass fails, and with one, the pass's gradients run
  through a kernel built for inference, and results depend on whatever the hub serves that day.
  The engine scales units with hooks on plain torch layers and needs the same arithmetic on every
  machine, so every model is loaded with `use_kernels=False` (docs/engine.md, "Hub kernels").

And no progress bars: transformers draws a "Loading weights" bar on stderr for every load, which lands in the
server's log from the swap and from every job process (breaking JSON log lines); they are off wherever this
module is imported.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, NamedTuple

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .units import LMKind, family_kind

LOAD_LOCK = threading.Lock()
hf_logging.disable_progress_bar()


def load_pretrained(auto_class: Any, source: str | Path, **kwargs: Any) -> PreTrainedModel:
    """`auto_class.from_pretrained(source, **kwargs)` under the load lock, with hub kernels off."""
    with LOAD_LOCK:
        return auto_class.from_pretrained(str(source), use_kernels=False, **kwargs)


class LoadedLM(NamedTuple):
    """A language model, its tokenizer and its kind: "masked" (MLM) or "causal" (next token)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: LMKind


def lm_kind(source: str | Path) -> LMKind:
    """Whether the model at `source` (a local folder or a hub id) is a masked or a causal LM, from its config alone."""
    return family_kind(AutoConfig.from_pretrained(str(source)))


def load_lm(source: str | Path, safetensors_only: bool = True, tokenizer=None) -> LoadedLM:
    """(model, tokenizer, kind) from a local folder or a hub id: AutoModelForCausalLM for a causal LM,
    AutoModelForMaskedLM for a masked one; only safetensors weights unless told otherwise. A `tokenizer` passed in is
    returned as it is instead of loading the folder's (the caller has checked that they are the same)."""
    kind = lm_kind(source)
    auto_class = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    model = load_pretrained(auto_class, source, use_safetensors=True if safetensors_only else None)
    return LoadedLM(model, load_tokenizer(source) if tokenizer is None else tokenizer, kind)


def load_masked_lm(source: str | Path, safetensors_only: bool = True, tokenizer=None):
    """(model, tokenizer) of a masked LM from a local folder or a hub id; only safetensors weights unless told
    otherwise. A `tokenizer` passed in is returned as it is instead of loading the folder's (the caller has checked
    that they are the same). A causal LM is refused by name (`load_lm` loads either kind)."""
    kind = lm_kind(source)
    if kind != "masked":
        raise ValueError(f"{source} is a {kind} language model, not a masked one: this needs a masked LM "
                         "(MLM loss, fill-mask); load it with das_engine.loading.load_lm")
    model = load_pretrained(AutoModelForMaskedLM, source, use_safetensors=True if safetensors_only else None)
    return model, load_tokenizer(source) if tokenizer is None else tokenizer


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder or a hub id, under the load lock."""
    with LOAD_LOCK:
        return AutoTokenizer.from_pretrained(str(source))
