"""Fingerprints: of a file (sha256_file, which the store also verifies blobs with), and of what a run is made from
(its corpus and its base model), so a work folder is never resumed, or a finished run returned, for other inputs
than the ones it was made from."""

from __future__ import annotations

import hashlib
from pathlib import Path

# a base folder's files that decide the model: weights, architecture, tokenizer (not the README)
BASE_FILES = ("config.json", "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt")


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def corpus_fingerprint(documents: list[str]) -> str:
    """sha256 over the documents in order; each is prefixed by its length, so boundaries count."""
    digest = hashlib.sha256()
    for document in documents:
        data = document.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def base_fingerprint(base: str | Path, digests: dict[str, str] | None = None) -> str:
    """sha256 over a base folder's config, tokenizer and *.safetensors files (names and contents),
    so a copy of the folder elsewhere matches; a hub id is its own fingerprint ('hub:<id>'). `digests`: file name ->
    sha256 already known for these files (a store version's manifest, just checked): those are not read again."""
    digests = digests or {}
    folder = Path(base)
    if not folder.is_dir():
        return f"hub:{base}"
    named = {folder / name for name in BASE_FILES if (folder / name).is_file()}
    files = sorted(named | set(folder.glob("*.safetensors")))
    digest = hashlib.sha256()
    for path in files:
        known = digests.get(path.name) or sha256_file(path)
        digest.update(path.name.encode("utf-8") + b"\0" + known.encode("ascii"))
    return digest.hexdigest()

