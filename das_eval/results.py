"""results.json: collected from a run's stage files, or merged from several runs of one evaluation."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from das_engine.config import DASConfig

from .files import FORMAT, FORMAT_VERSION, RUN_FILE, SCORES_FILE, now
from .methods import EvalError
from .metrics import mean_std, step_costs, summarise_method
from .plan import EvalPlan, Stage
from .scoring import PreparedDomain

SCORE_METRICS = ("macro_f1", "accuracy")


def collect_results(plan: EvalPlan, domains: list[PreparedDomain], out: Path) -> dict[str, Any]:
    """results.json's content, from the stages' scores files."""
    names = [d.name for d in domains]
    n = len(names)
    families = [f"{kind}/{metric}" for kind in plan.scoring.kinds() for metric in SCORE_METRICS]
    scores: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    step_times: dict[str, list[float]] = {}
    stage_seconds: dict[str, list[float]] = {}
    for method in plan.methods:
        by_seed: dict[str, Any] = {}
        for seed in plan.seeds:
            records = [_read_scores(Stage(method, seed, 0, "base").folder(out))]
            if method.trains:
                records += [_read_scores(Stage(method, seed, t + 1, names[t]).folder(out)) for t in range(n)]
            else:
                records *= n + 1  # the base model at every stage
            entry = {family: _matrix(records, names, family) for family in families}
            entry["mlm_loss"] = [[r["scores"][d]["mlm_loss"] for d in names] for r in records]
            by_seed[str(seed)] = entry
            if method.trains:
                for r in records[1:]:
                    step_times.setdefault(method.spec, []).extend(r["train"]["step_times_s"])
                    stage_seconds.setdefault(method.spec, []).append(r["train"]["wall_time_s"])
        scores[method.spec] = by_seed
        summary[method.spec] = summarise_method(list(by_seed.values()), families)
    run = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    costs = step_costs(step_times)
    for spec, cost in costs.items():
        cost["stage_wall_time_s"] = mean_std(stage_seconds[spec])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "date": now(),
        "domains": names, "stages": ["base", *names], "families": families,
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


def _read_scores(folder: Path) -> dict[str, Any]:
    path = folder / SCORES_FILE
    if not path.is_file():
        raise EvalError(f"{path} is missing: the stage has not been scored")
    return json.loads(path.read_text(encoding="utf-8"))


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


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings with the DASConfig fields added since they were written filled in with their defaults.

    A new DASConfig field's default keeps the behaviour from before it existed, so a folder (or a results.json)
    written before it was added still matches a run that leaves it at its default.
    """
    if not isinstance(settings.get("train"), dict):
        return settings
    defaults = DASConfig().to_dict()
    defaults.pop("seed")
    return {**settings, "train": {**defaults, **settings["train"]}}


def merge_results(parts: Sequence[dict[str, Any]], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """One results.json content from several runs of `das eval` with the same domains, base, settings and seeds
    (methods run into separate folders, or on separate machines). A method in several runs is taken from the
    first. Each method's cost stays as its own run measured it: `ratio_to_ncl` compares steps within one run
    only (None where that run had no `ncl`).

    `seeds`: keep only these seeds of every run (each run must have them) and summarise again over them, to
    compare runs that finished different numbers of seeds.
    """
    if not parts:
        raise EvalError("give at least one results.json")
    if seeds is not None:
        parts = [_only_seeds(part, list(seeds), index) for index, part in enumerate(parts, start=1)]
    # what must agree between runs: domains, score families, seeds and settings (fields added since filled in)
    made_with = [{"domains": p["domains"], "families": p["families"], "seeds": p["seeds"],
                  "settings": comparable_settings(p["settings"])} for p in parts]
    for index, other in enumerate(made_with[1:], start=2):
        differ = differences(made_with[0], other)
        if differ:
            raise EvalError(f"results {index} was made with other settings than results 1 ({'; '.join(differ)}); "
                            "only runs of the same evaluation can be merged")
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


def _only_seeds(results: dict[str, Any], seeds: list[int], index: int) -> dict[str, Any]:
    missing = sorted(set(seeds) - set(results["seeds"]))
    if not seeds or missing:
        raise EvalError(f"results {index} has seeds {results['seeds']}; it lacks {missing or 'a seed to keep'}")
    scores = {spec: {str(seed): by_seed[str(seed)] for seed in seeds} for spec, by_seed in results["scores"].items()}
    summary = {spec: summarise_method(list(by_seed.values()), results["families"]) for spec, by_seed in scores.items()}
    return {**results, "seeds": seeds, "scores": scores, "summary": summary}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
