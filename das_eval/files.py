"""The names of an evaluation folder's files, and how they are written (by rename: never half a file)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = "das-eval"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
SCORES_FILE = "scores.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def write_json(path: Path, data: Any) -> None:
    """Write by rename: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
