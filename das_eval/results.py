"""results.json: collected from a run's stage files, or merged from several runs of one evaluation."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import FORMAT, FORMAT_VERSION, SCORES_FILE, loss_kind, now, read_json, read_run
from .methods import EvalError
from .metrics import CORRECT, mean_std, step_costs, summarise_method
from .plan import EvalPlan, Stage
from .results_check import (
    MAX_MLM_LOSS,
    SCORE_METRICS,
    _Bad,
    _correct,
    _get,
    _number,
    _of,
    check_comparable,
    check_results,
    comparable_settings,
    differences,
)
from .scoring import PreparedDomain


def collect_results(plan: EvalPlan, domains: list[PreparedDomain], out: Path) -> dict[str, Any]:
    """results.json's content, from the stages' scores files."""
    names = [d.name for d in domains]
    n = len(names)
    families = [f"{kind}/{metric}" for kind in plan.scoring.kinds() for metric in SCORE_METRICS]
    scores: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    step_times: dict[str, list[float]] = {}
    stage_seconds: dict[str, list[float]] = {}
    loss_kinds: set[str] = set()  # the held-out loss every stage was scored on: one per run (its base's kind)
    for method in plan.methods:
        by_seed: dict[str, Any] = {}
        for seed in plan.seeds:
            kinds = plan.scoring.kinds()
            records = [read_stage_scores(Stage(method, seed, 0, "base").folder(out), names, kinds, trained=False)]
            if method.trains:
                records += [read_stage_scores(Stage(method, seed, t + 1, names[t]).folder(out), names, kinds,
                                              trained=True) for t in range(n)]
            else:
                records *= n + 1  # the base model at every stage
            loss_kinds.update(loss_kind(r) for r in records)
            entry = {family: _matrix(records, names, family) for family in families}
            entry["mlm_loss"] = [[r["scores"][d]["mlm_loss"] for d in names] for r in records]
            correct = [[r["scores"][d]["probe"].get("correct") for d in names] for r in records]
            if any(c is not None for row in correct for c in row):  # stages scored before it was recorded lack it
                entry[CORRECT] = correct
            by_seed[str(seed)] = entry
            if method.trains:
                for r in records[1:]:
                    step_times.setdefault(method.spec, []).extend(r["train"]["step_times_s"])
                    stage_seconds.setdefault(method.spec, []).append(r["train"]["wall_time_s"])
        scores[method.spec] = by_seed
        summary[method.spec] = summarise_method(list(by_seed.values()), families)
    if len(loss_kinds) > 1:
        raise EvalError(f"the stages of {out} were scored on different held-out losses ({sorted(loss_kinds)}): "
                        "one base model gives one; choose another --out")
    run = read_run(out)
    costs = step_costs(step_times)
    for spec, cost in costs.items():
        cost["stage_wall_time_s"] = mean_std(stage_seconds[spec])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "date": now(),
        "domains": names, "stages": ["base", *names], "families": families, "loss_kind": loss_kinds.pop(),
        "methods": {m.spec: {"kind": m.kind, "folder": m.folder, "overrides": m.overrides,
                             "config": (plan.config(m, plan.seeds[0]).to_dict() if m.trains else None)}
                    for m in plan.methods},
        "seeds": plan.seeds,
        "settings": run["settings"],
        "base": plan.base_spec,
        "domain_sizes": {d.name: {"training_documents": len(d.training_documents),
                                  "heldout_documents": len(d.heldout_documents),
                                  "train": len(d.train), "test": len(d.test), "labels": len(d.domain.labels)}
                         for d in domains},
        "commands": run["commands"],
        "machine": machine_info(plan.device),
        "scores": scores,
        "summary": summary,
        "cost": costs,
    }


def read_stage_scores(folder: Path, names: Sequence[str], kinds: Sequence[str], *, trained: bool) -> dict[str, Any]:
    """A stage's scores.json, with what collect_results reads of it checked; a damaged one is an EvalError that
    names it and says to remove the stage folder (the next run recomputes the stage)."""
    path = folder / SCORES_FILE
    if not path.is_file():
        raise EvalError(f"{path} is missing: the stage has not been scored")
    fix = f"remove the stage folder {folder} and rerun the same command to recompute the stage"
    record = read_json(path, what="a stage's scores file", fix=fix)
    try:
        _check_stage_record(record, names, kinds, trained)
    except _Bad as bad:
        raise EvalError(f"{path}: {bad}; {bad.fix or fix}") from None
    return record


def _check_stage_record(record: Any, names: Sequence[str], kinds: Sequence[str], trained: bool) -> None:
    _of(record, "", dict)
    scores = _get(record, "scores", "", dict)
    for name in names:
        entry = _get(scores, name, "scores", dict)
        loss = _get(entry, "mlm_loss", f"scores.{name}")
        if isinstance(loss, float) and not math.isfinite(loss):  # as scored: recomputing gives the same
            raise _Bad(f"scores.{name}.mlm_loss", f"is {loss}: the stage's model diverged",
                       fix="run the evaluation again into another --out with other settings (a lower --lr)")
        _number(loss, f"scores.{name}.mlm_loss", 0, MAX_MLM_LOSS)
        for kind in kinds:
            metrics = _get(entry, kind, f"scores.{name}", dict)
            for metric in SCORE_METRICS:
                _number(_get(metrics, metric, f"scores.{name}.{kind}"), f"scores.{name}.{kind}.{metric}", 0, 100)
        if "correct" in entry["probe"]:  # optional: stages scored before it was recorded lack it
            _correct(entry["probe"]["correct"], f"scores.{name}.probe.correct")
    if trained:
        train = _get(record, "train", "", dict)
        times = _get(train, "step_times_s", "train", list)
        if not times:
            raise _Bad("train.step_times_s", "is empty")
        for i, value in enumerate(times):
            _number(value, f"train.step_times_s.{i}", 0)
        _number(_get(train, "wall_time_s", "train"), "train.wall_time_s", 0)


def _matrix(records: list[dict[str, Any]], names: list[str], family: str) -> list[list[float]]:
    kind, metric = family.split("/")
    return [[r["scores"][d][kind][metric] for d in names] for r in records]


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpus": os.cpu_count(), "device": device}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info




def merge_results(parts: Sequence[dict[str, Any]], seeds: Sequence[int] | None = None,
                  names: Sequence[str] | None = None) -> dict[str, Any]:
    """One results.json content from several runs of `das eval` with the same domains, base, settings and seeds
    (methods run into separate folders, or on separate machines). A method in several runs is taken from the
    first. Each method's cost stays as its own run measured it: `ratio_to_ncl` compares steps within one run
    only (None where that run had no `ncl`).

    `seeds`: keep only these seeds of every run (each run must have them) and summarise again over them, to
    compare runs that finished different numbers of seeds.

    Every part is checked first (`check_results`): a part `das eval` could not have written, or one that
    contradicts itself, is an EvalError naming it (`names`: the files; by default "results 1", ...) and the field.
    """
    if not parts:
        raise EvalError("give at least one results.json")
    names = [f"results {i}" for i in range(1, len(parts) + 1)] if names is None else list(names)
    for part, name in zip(parts, names, strict=True):
        check_comparable(part, name)
    if seeds is not None:
        for part, name in zip(parts, names, strict=True):
            check_results(part, name)
        most = max(len(part["seeds"]) for part in parts)
        if not 1 <= len(seeds) <= most:
            raise EvalError(f"keeping {len(seeds)} seed(s): give 1..{most}, the most seeds a run has")
        parts = [_only_seeds(part, list(seeds), name) for part, name in zip(parts, names, strict=True)]
    # what must agree between runs: domains, score families, seeds and settings (fields added since filled in)
    made_with = [{"domains": p["domains"], "families": p["families"], "seeds": p["seeds"], "loss_kind": loss_kind(p),
                  "settings": comparable_settings(p["settings"])} for p in parts]
    for name, other in zip(names[1:], made_with[1:], strict=True):
        differ = differences(made_with[0], other)
        if differ:
            raise EvalError(f"{name} was made with other settings than {names[0]} ({'; '.join(differ)}); "
                            "only runs of the same evaluation can be merged")
    if seeds is None:  # after the comparison: runs of another evaluation are named as such first
        for part, name in zip(parts, names, strict=True):
            check_results(part, name)
    merged = {**parts[0], "date": now(), "settings": made_with[0]["settings"],
              "methods": {}, "scores": {}, "summary": {}, "cost": {}, "commands": []}
    for part in parts:
        for spec in part["methods"]:
            if spec not in merged["methods"]:
                for key in ("methods", "scores", "summary"):
                    merged[key][spec] = part[key][spec]
                if spec in part["cost"]:
                    merged["cost"][spec] = part["cost"][spec]
        merged["commands"] += part["commands"]
    return merged


def _only_seeds(results: dict[str, Any], seeds: list[int], name: str) -> dict[str, Any]:
    missing = sorted(set(seeds) - set(results["seeds"]))
    if not seeds or missing:
        raise EvalError(f"{name} has seeds {results['seeds']}; it lacks {missing or 'a seed to keep'}")
    scores = {spec: {str(seed): by_seed[str(seed)] for seed in seeds} for spec, by_seed in results["scores"].items()}
    summary = {spec: summarise_method(list(by_seed.values()), results["families"]) for spec, by_seed in scores.items()}
    return {**results, "seeds": seeds, "scores": scores, "summary": summary}






# ---------------------------------------------------------------------------------------------
