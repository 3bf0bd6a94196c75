"""Evaluation results for the /ui page: the results.json files of `das eval` given to `das serve --eval-results`.

Each file is read and checked once, at start-up (`load_evaluations`): a file that is not the JSON `das eval` writes
stops the server with an error naming it and the field. The API keeps only what the page draws: per method the
a[T, i] matrices (mean over seeds) of the held-out MLM loss and of each probe score, and the two equal-learning
points (forgetting against new-domain gain). The file is read and checked by das_eval's own reader and schema
(das_eval.files.read_json, das_eval.results_check.check_results: torch-free), the ones `das eval-merge` uses.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from das_eval.files import read_json
from das_eval.methods import EvalError
from das_eval.results_check import RESULTS_FIX, check_results

MLM = "mlm_loss"
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
    loss_kind: str = Field("mlm", description="The held-out loss 'mlm_loss' holds: 'mlm' (a masked base) or "
                           "'next_token' (a causal base).")
    method_views: list[MethodView]


@dataclass(frozen=True)
class Evaluation:
    item: EvaluationItem
    detail: EvaluationOut


def _mean_matrix(per_seed: list[list[list[float]]]) -> list[list[float]]:
    return [[statistics.fmean(m[t][i] for m in per_seed) for i in range(len(per_seed[0][0]))]
            for t in range(len(per_seed[0]))]


def _stat(value: dict[str, Any] | None) -> Stat | None:
    """A summary's {mean, std, n}; None where it is absent or has no mean (a single stage)."""
    if not isinstance(value, dict) or value.get("mean") is None:
        return None
    return Stat(mean=value["mean"], std=value.get("std"))


def _point(entry: dict[str, Any], gain: str, forgetting: str) -> ParetoPoint | None:
    x, y = _stat(entry.get(gain)), _stat(entry.get(forgetting))
    return ParetoPoint(gain=x, forgetting=y) if x is not None and y is not None else None


def _views(results: dict[str, Any]) -> tuple[EvaluationItem, EvaluationOut]:
    """What the page draws from a results.json that das_eval.results_check has checked."""
    domains, stages, families, seeds = results["domains"], results["stages"], results["families"], results["seeds"]
    probe = "probe/macro_f1" if "probe/macro_f1" in families else families[0]
    views = []
    for spec, method in results["methods"].items():
        by_seed, summary = results["scores"][spec], results["summary"][spec]
        matrices = {score: _mean_matrix([by_seed[str(seed)][score] for seed in seeds]) for score in (MLM, *families)}
        pareto = {"mlm": None, "probe": None}
        if method["kind"] != "base":
            pareto = {"mlm": _point(summary[MLM], "gain", "rise"),
                      "probe": _point(summary[probe], "plasticity", "forgetting_rate")}
        views.append(MethodView(spec=spec, kind=method["kind"], matrices=matrices, pareto=pareto))
    item = EvaluationItem(name="", file="", methods=list(results["methods"]), domains=domains, seeds=seeds)
    detail = EvaluationOut(**item.model_dump(), date=results["date"], base=results["base"], stages=stages,
                           families=families, probe_family=probe, method_views=views,
                           loss_kind=results.get("loss_kind", "mlm"))
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
        results = read_json(path, what="a results.json", fix=RESULTS_FIX)
        check_results(results, str(path))
    except EvalError as err:
        raise EvaluationFileError(f"--eval-results {err}") from None
    item, detail = _views(results)
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
    return getattr(request.app.state, "evaluations", {})


@router.get("", response_model=list[EvaluationItem])
def list_evaluations(request: Request) -> list[EvaluationItem]:
    """The `das eval` results this server was started with (`das serve --eval-results`); an empty list when none."""
    return [e.item for e in _configured(request).values()]


@router.get("/{name}", response_model=EvaluationOut)
def get_evaluation(name: str, request: Request) -> EvaluationOut:
    """One evaluation as the /ui page draws it: per method the a[T, i] matrices (mean over seeds) and the
    equal-learning points (forgetting against new-domain gain)."""
    evaluations = _configured(request)
    if not evaluations:
        raise HTTPException(404, f"no evaluation {name!r}: none is configured; start the server with "
                                 "`das serve --eval-results FILE` (or DAS_EVAL_RESULTS) to show a `das eval` "
                                 "results.json")
    if name not in evaluations:
        raise HTTPException(404, f"no evaluation {name!r}; the configured ones: {', '.join(evaluations)}")
    return evaluations[name].detail
