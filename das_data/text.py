"""Text helpers every domain builder shares: one-line cleaning, previews, word counts, a fixed order."""

from __future__ import annotations

import hashlib
import re

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def clean(text: str) -> str:
    """One line: control characters become spaces, every run of whitespace one space."""
    return " ".join(CONTROL_RE.sub(" ", text).split())


def preview(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def words(text: str) -> int:
    return len(text.split())


def rank(*parts: object) -> str:
    """A fixed pseudo-random order: sha256 of the seed and the item's key, stable across runs and Pythons."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()

