"""Token ids of documents kept on disk by the digest of the documents and of the tokenizer: a lineage's earlier
corpora, which every upload's replay draws from, are tokenised once instead of at every upload.

An entry is one .npz file (the ids of all documents in one int32 array, and where each document starts), written
to a temporary name and renamed into place, so a reader sees a whole entry or none; an entry that does not read
is tokenised again and rewritten. A tokenizer without a serialisable fast backend is not cached (its ids are
computed every time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from das_formats.fingerprint import corpus_fingerprint

from .data import TokenIds, tokenize

log = logging.getLogger(__name__)


def tokenizer_digest(tokenizer) -> str | None:
    """sha256 of the tokenizer's definition (vocabulary, added tokens, normaliser, pre-tokeniser, model), or None when
    it has no fast backend to serialise. The truncation and padding a call last set on the backend are left out: they
    change with every call and not the ids of a document tokenised without them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8")).hexdigest()


class TokenCache:
    def __init__(self, root: Path, tokenizer) -> None:
        self.root, self.tokenizer = Path(root), tokenizer
        self.tokenizer_key = tokenizer_digest(tokenizer)

    def token_ids(self, documents: list[str]) -> TokenIds:
        """What tokenize(documents, tokenizer) gives, read from the cache when it holds these documents."""
        if self.tokenizer_key is None:
            return tokenize(documents, self.tokenizer)
        key = hashlib.sha256(f"{self.tokenizer_key}:{corpus_fingerprint(documents)}".encode()).hexdigest()
        path = self.root / f"{key[:40]}.npz"
        try:
            with np.load(path) as entry:
                found = TokenIds(entry["ids"].astype(np.int64), entry["starts"])
            if len(found) != len(documents) or (len(found) and (found.starts[-1] > len(found.flat) or
                                                                 np.any(np.diff(found.starts) < 0))):
                raise ValueError(f"{len(found)} documents' offsets for {len(documents)} documents")
            return found
        except FileNotFoundError:
            pass
        except Exception as err:  # noqa: BLE001 - damaged (a cut zip, a bad array): tokenise again and rewrite it
            log.warning("token cache entry %s does not read (%s); tokenising again", path, err)
        encoded = tokenize(documents, self.tokenizer)
        self._write(path, encoded)
        return encoded

    def _write(self, path: Path, encoded: TokenIds) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".", suffix=".npz", delete=False) as tmp:
                np.savez(tmp, ids=encoded.flat.astype(np.int32), starts=encoded.starts)
            os.replace(tmp.name, path)
        except OSError as err:  # a full or read-only disk costs the next upload a tokenisation, nothing more
            log.warning("token cache: %s not written (%s)", path, err)
