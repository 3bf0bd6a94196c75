"""The names of an evaluation folder's files, how they are written (by rename: never half a file), and the one
reader of its JSON files (run.json, the stages' scores.json, a results.json given to `das eval-merge`)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from das_formats.jsonl import JsonInputError, parse_json

from .methods import EvalError

FORMAT = "das-eval"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
SCORES_FILE = "scores.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

# The held-out LM loss every stage is scored on, by the model's kind (das_engine.units.LMKind): a masked LM's MLM
# loss, a causal LM's next-token loss (the names of das_engine.mlm.LOSS_PART). The score files keep it under the key
# `mlm_loss` for both, with `loss_kind` beside it; a file without `loss_kind` was written before causal LMs: "mlm".
LossKind = Literal["mlm", "next_token"]
LOSS_KINDS: dict[str, LossKind] = {"masked": "mlm", "causal": "next_token"}
LOSS_NAMES: dict[str, str] = {"mlm": "MLM loss", "next_token": "next-token loss"}


def loss_kind(record: dict[str, Any]) -> LossKind:
    """The `loss_kind` of a scores.json, results.json or served.json ("mlm" for one written before it existed)."""
    return record.get("loss_kind", "mlm")


def write_json(path: Path, data: Any) -> None:
    """Write by rename: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, *, what: str, fix: str) -> Any:
    """A JSON file's content. Any problem (missing, a folder, unreadable, not UTF-8, not JSON) is an EvalError that
    names the file, what it should be (`what`, e.g. "a results.json") and what to do (`fix`)."""
    path = Path(path)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a file" if path.exists() else "missing"
        raise EvalError(f"{path} is not a file ({kind}); {fix}")
    try:
        return parse_json(path.read_bytes())
    except JsonInputError as err:
        reason = str(err).removeprefix("is ")
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
    raise EvalError(f"{path} is not {what} ({reason}); {fix}")


def read_run(out: Path, run_file: str = RUN_FILE, what: str = "an evaluation") -> dict[str, Any]:
    """OUT/run.json (or the served view's `run_file`): the settings the folder was made with and the commands run
    into it."""
    path = Path(out) / run_file
    fix = (f"it records the settings {out} was made with: restore it, or choose another --out "
           "(the stage folders cannot be checked without it)")
    run = read_json(path, what=f"{what}'s {run_file}", fix=fix)
    problem = ("holds no JSON object" if not isinstance(run, dict) else
               "lacks its 'settings' object" if not isinstance(run.get("settings"), dict) else
               "lacks its 'commands' list" if not isinstance(run.get("commands"), list) else None)
    if problem:
        raise EvalError(f"{path} {problem}; {fix}")
    return run


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
