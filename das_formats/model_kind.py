"""Whether a model folder's config.json describes a masked or a causal LM, without torch or transformers (the store,
the model card and the API read it; the engine's unit map knows the families it adapts: das_engine.units)."""

from __future__ import annotations

from typing import Any, Literal

LMKind = Literal["masked", "causal"]  # what a model predicts: masked tokens (MLM) or the next token
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")  # the endings of causal architectures' names (GPT2LMHeadModel, ...)


def config_kind(config: dict[str, Any]) -> LMKind:
    """A config.json's kind: causal when an architecture it names ends in ...ForCausalLM or ...LMHeadModel, else
    masked (the store's first families, BERT and RoBERTa, name ...ForMaskedLM)."""
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and any(isinstance(a, str) and a.endswith(CAUSAL_HEADS)
                                               for a in architectures):
        return "causal"
    return "masked"
