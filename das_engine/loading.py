"""The one way this project loads a masked LM and its tokenizer.

`from_pretrained` is not thread-safe in transformers 5 (it patches module construction while it
builds a model on the meta device), and an embedded service loads models from two threads (the
worker and the hot swap): every load goes through one process-wide lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import AutoModelForMaskedLM, AutoTokenizer

LOAD_LOCK = threading.Lock()


def load_masked_lm(source: str | Path, safetensors_only: bool = True, tokenizer=None):
    """(model, tokenizer) from a local folder or a hub id; only safetensors weights unless told otherwise.
    A `tokenizer` passed in is returned as it is instead of loading the folder's (the caller has checked
    that they are the same)."""
    with LOAD_LOCK:
        model = AutoModelForMaskedLM.from_pretrained(str(source), use_safetensors=True if safetensors_only else None)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
    return model, tokenizer
