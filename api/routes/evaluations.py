"""Evaluation results for the /ui page: the results.json files of `das eval` given to `das serve --eval-results`.

Each file is read and checked once, at start-up (`load_evaluations`): a file that is not the JSON `das eval` writes
stops the server with an error naming it and the field. The API keeps only what the page draws: per method the
a[T, i] matrices (mean over seeds) of the held-out MLM loss and of each probe score, and the two equal-learning
points (forgetting against new-domain gain). Plain JSON reading: das_eval (which may import torch) is not imported.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

FORMAT = "das-eval"
MLM = "mlm_loss"
FIX = "give a results.json as `das eval` writes it (its OUT folder's results.json)"
NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


class EvaluationFileError(ValueError):
    """A --eval-results file that cannot be read or is not what `das eval` writes (the message names it)."""


class Stat(BaseModel):
    mean: float = Field(description="Mean over seeds.")
    std: float | None = Field(None, description="Sample standard deviation over seeds (0 for one seed).")


class ParetoPoint(BaseModel):
    gain: Stat = Field(description="Learning: higher = learned the new domain more.")
    forgetting: Stat = Field(description="Forgetting of the earlier domains: lower = forgot less.")


class MethodView(BaseModel):
    spec: str = Field(description="The method as `das eval --methods` names it.")
    kind: str = Field(description="base, ncl or das.")
    matrices: dict[str, list[list[float]]] = Field(
        description="a[T, i] per score ('mlm_loss' and each family such as 'probe/macro_f1'), mean over seeds: "
                    "row T = after stage T (0: the base model), column i = domain i.")
    pareto: dict[str, ParetoPoint | None] = Field(
        description="'mlm': MLM-loss rise against new-domain MLM gain (nats); 'probe': forgetting rate against "
                    "plasticity of the probe family (points); null for the base model or where not recorded.")


class EvaluationItem(BaseModel):
    name: str
    file: str = Field(description="The results file's name (no folder).")
    methods: list[str]
    domains: list[str]
    seeds: list[int]


class EvaluationOut(EvaluationItem):
    date: str | None = None
    base: str | None = None
    stages: list[str] = Field(description="Row labels of the matrices: 'base', then the domains in order.")
    families: list[str] = Field(description="The probe score families the matrices hold besides 'mlm_loss'.")
    probe_family: str = Field(description="The family the probe Pareto point reads (macro-F1 when scored).")
    method_views: list[MethodView]


@dataclass(frozen=True)
class Evaluation:
    item: EvaluationItem
    detail: EvaluationOut


class _Bad(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where} {problem}")


def _get(container: Any, key: str, where: str, want: type) -> Any:
    path = f"{where}.{key}" if where else key
    if not isinstance(container, dict) or key not in container:
        raise _Bad(path, "is missing")
    value = container[key]
    if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
        raise _Bad(path, f"is {type(value).__name__}, expected {want.__name__}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(where, f"is {value!r}, expected a finite number")
    return float(value)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Bad(where, "must be a non-empty list of strings")
    return value


def _matrix(value: Any, where: str, rows: int, cols: int) -> list[list[float]]:
    if not isinstance(value, list) or len(value) != rows:
        raise _Bad(where, f"must be a list of {rows} rows (the base model, then one per domain)")
    out = []
    for t, row in enumerate(value):
        if not isinstance(row, list) or len(row) != cols:
            raise _Bad(f"{where}.{t}", f"must be a list of {cols} numbers (one per domain)")
        out.append([_number(v, f"{where}.{t}.{i}") for i, v in enumerate(row)])
    return out


def _stat(summary: dict[str, Any], key: str, where: str) -> Stat | None:
    """A summary's {mean, std, n}; None where it is absent (older files) or has no mean."""
    value = summary.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("mean") is None:
        return None
    std = value.get("std")
    return Stat(mean=_number(value["mean"], f"{where}.{key}.mean"),
                std=None if std is None else _number(std, f"{where}.{key}.std"))


def _point(summary: Any, score: str, gain: str, forgetting: str, where: str) -> ParetoPoint | None:
    entry = _get(summary, score, where, dict)
    x, y = _stat(entry, gain, f"{where}.{score}"), _stat(entry, forgetting, f"{where}.{score}")
    return ParetoPoint(gain=x, forgetting=y) if x is not None and y is not None else None


def _views(results: Any) -> tuple[EvaluationItem, EvaluationOut]:
    if not isinstance(results, dict):
        raise _Bad("the file", "is not a JSON object")
    if results.get("format") != FORMAT:
        raise _Bad("format", f"is {results.get('format')!r}, expected {FORMAT!r}")
    domains = _strings(results.get("domains"), "domains")
    stages = _strings(results.get("stages"), "stages")
    if len(stages) != len(domains) + 1:
        raise _Bad("stages", f"has {len(stages)} names, expected {len(domains) + 1} (base, then the domains)")
    families = _strings(results.get("families"), "families")
    seeds = _get(results, "seeds", "", list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _Bad("seeds", "must be a non-empty list of integers")
    methods = _get(results, "methods", "", dict)
    scores = _get(results, "scores", "", dict)
    summaries = _get(results, "summary", "", dict)
    if not methods:
        raise _Bad("methods", "is empty")
    probe = "probe/macro_f1" if "probe/macro_f1" in families else families[0]
    rows, cols = len(stages), len(domains)
    views = []
    for spec, method in methods.items():
        kind = _get(method, "kind", f"methods.{spec}", str)
        by_seed = _get(scores, spec, "scores", dict)
        matrices = {}
        for score in (MLM, *families):
            per_seed = [_matrix(_get(_get(by_seed, str(seed), f"scores.{spec}", dict), score,
                                     f"scores.{spec}.{seed}", list), f"scores.{spec}.{seed}.{score}", rows, cols)
                        for seed in seeds]
            matrices[score] = [[statistics.fmean(m[t][i] for m in per_seed) for i in range(cols)]
                               for t in range(rows)]
        summary = _get(summaries, spec, "summary", dict)
        pareto = {"mlm": None, "probe": None}
        if kind != "base":
            pareto = {"mlm": _point(summary, MLM, "gain", "rise", f"summary.{spec}"),
                      "probe": _point(summary, probe, "plasticity", "forgetting_rate", f"summary.{spec}")}
        views.append(MethodView(spec=spec, kind=kind, matrices=matrices, pareto=pareto))
    item = EvaluationItem(name="", file="", methods=list(methods), domains=domains, seeds=seeds)
    date, base = results.get("date"), results.get("base")
    detail = EvaluationOut(**item.model_dump(), date=date if isinstance(date, str) else None,
                           base=base if isinstance(base, str) else None, stages=stages, families=families,
                           probe_family=probe, method_views=views)
    return item, detail


def _name(path: Path, taken: set[str]) -> str:
    """The file's stem as a URL-safe name (its folder's name first when the file is a plain results.json)."""
    stem = path.stem if path.stem != "results" or not path.parent.name else f"{path.parent.name}-{path.stem}"
    name = NAME_CHARS.sub("-", stem).strip("-.") or "results"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    return unique


def read_evaluation(path: Path, name: str) -> Evaluation:
    """One results file, read and checked; an EvaluationFileError naming it (and the field) when it is not one."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise EvaluationFileError(f"--eval-results {path}: cannot read it ({err.strerror or err}); {FIX}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationFileError(f"--eval-results {path}: not JSON ({err}); {FIX}") from None
    try:
        item, detail = _views(results)
    except _Bad as bad:
        raise EvaluationFileError(f"--eval-results {path}: {bad}; {FIX}") from None
    item = item.model_copy(update={"name": name, "file": path.name})
    return Evaluation(item=item, detail=detail.model_copy(update={"name": name, "file": path.name}))


def load_evaluations(paths: Sequence[Path]) -> dict[str, Evaluation]:
    """Every configured results file by its name, in the order given."""
    loaded: dict[str, Evaluation] = {}
    for path in paths:
        name = _name(Path(path), set(loaded))
        loaded[name] = read_evaluation(Path(path), name)
    return loaded


def _configured(request: Request) -> dict[str, Evaluation]:
    evaluations = getattr(request.app.state, "evaluations", {})
    if not evaluations:
        raise HTTPException(404, "no evaluation results are configured: start the server with "
                                 "`das serve --eval-results FILE` (or DAS_EVAL_RESULTS) to show a `das eval` "
                                 "results.json")
    return evaluations


@router.get("", response_model=list[EvaluationItem])
def list_evaluations(request: Request) -> list[EvaluationItem]:
    """The `das eval` results this server was started with (`das serve --eval-results`); 404 when none."""
    return [e.item for e in _configured(request).values()]


@router.get("/{name}", response_model=EvaluationOut)
def get_evaluation(name: str, request: Request) -> EvaluationOut:
    """One evaluation as the /ui page draws it: per method the a[T, i] matrices (mean over seeds) and the
    equal-learning points (forgetting against new-domain gain)."""
    evaluations = _configured(request)
    if name not in evaluations:
        raise HTTPException(404, f"no evaluation {name!r}; the configured ones: {', '.join(evaluations)}")
    return evaluations[name].detail
