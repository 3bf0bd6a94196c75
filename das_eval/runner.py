"""The runner: check or write OUT/run.json, score stage 0 (the base model), train and score every stage of
every method and seed (reusing the finished ones), then collect the results and write the reports.

Layout of OUT:

    run.json                                        settings the folder was made with, commands
    runs/base/seed-S/stage-0-base/scores.json       the base model's scores (stage 0 of every method)
    runs/METHOD/seed-S/stage-T-DOMAIN/              the model after T domains (das_engine.trainer.adapt)
    runs/METHOD/seed-S/stage-T-DOMAIN/scores.json   its scores on every domain; written last: the stage is done
    results.json, results.md, *.png
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from das_formats.layout import IMPORTANCE, is_weight_file

from .files import FORMAT, FORMAT_VERSION, RUN_FILE, SCORES_FILE, now, read_run, write_json
from .methods import EvalError, parse_method
from .plan import EvalPlan, Stage
from .reports import write_reports
from .results import collect_results, read_stage_scores
from .results_check import comparable_settings, differences
from .scoring import PreparedDomain, prepare_domain, score_model


@dataclass
class StageEvent:
    phase: Literal["start", "done"]
    stage: Stage
    position: int  # 1-based among the stages this run computes
    total: int  # stages this run computes (finished ones are reused and not counted)
    seconds: float | None = None  # the stage's time (done)
    eta_s: float | None = None  # the rest of the run, from the mean time of the stages computed so far


def run_evaluation(plan: EvalPlan, out: Path, *, command: Sequence[str] | None = None,
                   on_stage: Callable[[StageEvent], None] | None = None,
                   on_train: Callable[[Stage, Any], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole evaluation into `out` and write its results; returns results.json's content.

    `on_stage` hears each stage start and end; raising from it interrupts the run (rerun to resume).
    `on_train(stage, das_engine.run_state.Progress)` hears the trainer's progress.
    """
    out = Path(out)
    domains = [prepare_domain(folder, plan.scoring) for folder in plan.domains]
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise EvalError(f"domain names must be distinct, got {names}")
    check_run_folder(out, plan, domains, command)

    # every stage of every method and seed, in the order they chain; stage 0 is the base model. Seed-major:
    # a run stopped early leaves every method with the same seeds finished, so its results compare
    stages = [Stage(parse_method("base"), seed, 0, "base") for seed in plan.seeds]
    for seed in plan.seeds:
        for method in (m for m in plan.methods if m.trains):
            stages += [Stage(method, seed, t + 1, d.name) for t, d in enumerate(domains)]
    todo = [s for s in stages if not (s.folder(out) / SCORES_FILE).is_file()]
    durations: list[float] = []
    for position, stage in enumerate(todo, start=1):
        if on_stage:
            on_stage(StageEvent("start", stage, position, len(todo)))
        started = time.perf_counter()
        if stage.index == 0:
            run_base_stage(plan, stage, domains, out)
        else:
            run_training_stage(plan, stage, domains, out, on_train)
        durations.append(time.perf_counter() - started)
        eta = statistics.fmean(durations) * (len(todo) - position)
        if on_stage:
            on_stage(StageEvent("done", stage, position, len(todo), durations[-1], eta))

    results = collect_results(plan, domains, out)
    write_reports(results, out)
    return results


def check_run_folder(out: Path, plan: EvalPlan, domains: list[PreparedDomain], command: Sequence[str] | None) -> None:
    """Write OUT/run.json for a new folder; for an existing one, refuse other settings, and record the command.

    Methods and seeds may differ between runs into one folder (a method or seed is its own set of folders);
    the domains (names, order and contents), the base model, the shared training settings and the scoring
    settings may not.
    """
    from das_formats.fingerprint import base_fingerprint

    settings = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "domains": [{"name": d.name, "fingerprint": d.fingerprint} for d in domains],
        "base_fingerprint": base_fingerprint(plan.base),
        "train": plan.shared_config(),
        "scoring": plan.scoring.compared(),
    }
    entry = {"argv": list(command) if command is not None else None, "date": now(),
             "methods": [m.spec for m in plan.methods], "seeds": plan.seeds, "base": plan.base_spec,
             "device": plan.device}
    open_run_folder(out, RUN_FILE, settings, entry, plan.base_spec, what="an evaluation",
                    normalise=comparable_settings)


def open_run_folder(out: Path, run_file: str, settings: dict[str, Any], entry: dict[str, Any], base: str, *,
                    what: str, normalise: Callable[[dict[str, Any]], dict[str, Any]] = lambda s: s) -> None:
    """Write OUT/`run_file` for a new folder; for an existing one, refuse other settings and record the command
    (`entry`) in it. `normalise` turns the recorded settings into today's form before they are compared; `what`
    names the kind of run (its messages). The evaluation and the served view (das_eval.served) keep their folders
    this way."""
    path = out / run_file
    if path.is_file():
        recorded = read_run(out, run_file, what)
        differ = differences(normalise(recorded["settings"]), settings)
        if differ:
            raise EvalError(f"{out} holds {what} made with other settings ({'; '.join(differ)}); "
                            "rerun with the same ones to resume, or choose another --out")
        recorded["commands"].append(entry)
        write_json(path, recorded)
        return
    if out.exists() and not out.is_dir():
        raise EvalError(f"{out} is a file; --out names a folder")
    if out.is_dir() and any(out.iterdir()):
        raise EvalError(f"{out} is not empty and holds no {run_file}: not {what} folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EvalError(f"cannot make the folder {out} ({err.strerror or err}: {err.filename}); "
                        "choose another --out") from None
    write_json(path, {"settings": settings, "base": base, "commands": [entry]})


def run_base_stage(plan: EvalPlan, stage: Stage, domains: list[PreparedDomain], out: Path) -> None:
    """Stage 0: score the base model. Without fine-tuning the scores do not depend on the seed, so the
    first seed's are copied for the others."""
    first = Stage(stage.method, plan.seeds[0], 0, "base").folder(out) / SCORES_FILE
    if not plan.scoring.finetune and stage.seed != plan.seeds[0] and first.is_file():
        record = read_stage_scores(first.parent, [d.name for d in domains], plan.scoring.kinds(), trained=False)
        record.update(seed=stage.seed, copied_from=str(first.relative_to(out)))
    else:
        started = time.perf_counter()
        scores, kind = score_model(plan.base, domains, plan, stage.seed)
        record = {"stage": 0, "domain": None, "method": "base", "seed": stage.seed, "scores": scores,
                  "loss_kind": kind, "train": None, "scoring_s": time.perf_counter() - started, "device": plan.device,
                  "date": now()}
    write_json(stage.folder(out) / SCORES_FILE, record)


def run_training_stage(plan: EvalPlan, stage: Stage, domains: list[PreparedDomain], out: Path,
                       on_train: Callable[[Stage, Any], None] | None) -> None:
    """Stage T: train from stage T-1's model (and its cumulative importance, if it wrote one) on domain T's
    training documents (the earlier domains' training documents are the lineage's corpora that replay and merge_auto
    read), then score the new model on every domain. The trainer resumes from its own
    checkpoints and returns a run it already finished without training again."""
    from das_engine.trainer import adapt

    folder = stage.folder(out)
    previous = Stage(stage.method, stage.seed, stage.index - 1, domains[stage.index - 2].name) \
        if stage.index > 1 else None
    base = previous.folder(out) if previous else Path(plan.base)
    if previous and not has_weights(base):
        raise EvalError(f"{base} holds no model (pruned or deleted) and {folder} needs it to train; "
                        f"remove {folder.parent} to recompute this method and seed from its first stage")
    prev_importance = base / IMPORTANCE if previous and (base / IMPORTANCE).is_file() else None
    domain = domains[stage.index - 1]
    config = plan.config(stage.method, stage.seed)

    reports: list[float] = []  # perf_counter at each training step's report: step times are their differences

    def progress(p) -> None:
        if p.phase == "train":
            reports.append(time.perf_counter())
        if on_train:
            on_train(stage, p)

    try:
        result = adapt(base, domain.training_documents, folder, config, prev_importance=prev_importance,
                       domain=domain.name, device=plan.device, on_progress=progress,
                       replay={d.name: d.training_documents for d in domains[:stage.index - 1]})
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # the trainer's own files in the stage folder
        raise EvalError(f"{folder}: a file the trainer left there (train_metrics.json or a checkpoint's) is "
                        f"damaged ({err}); remove {folder} and rerun the same command to recompute the stage"
                        ) from None
    if result.status != "completed":
        raise EvalError(f"training {stage.label()} stopped at step {result.step}")
    metrics = result.metrics
    step_times = [b - a for a, b in zip(reports, reports[1:], strict=False)]
    source = "measured between the trainer's step reports"
    if not step_times:  # a run the trainer had finished before: its mean step time
        step_times, source = [metrics["train_time_s"] / max(1, metrics["steps"])], "train_time_s / steps"
    train = {"steps": metrics["steps"], "tokens_per_s": metrics["tokens_per_s"],
             "train_time_s": metrics["train_time_s"], "wall_time_s": metrics["wall_time_s"],
             "timings": metrics.get("timings", {}), "step_times_s": step_times,
             "median_step_s": statistics.median(step_times), "step_time_source": source,
             "settings": config.to_dict(), "prev_importance": str(prev_importance) if prev_importance else None,
             "replay": metrics.get("replay"), "merge": metrics.get("merge")}
    started = time.perf_counter()
    scores, kind = score_model(folder, domains, plan, stage.seed)
    record = {"stage": stage.index, "domain": domain.name, "method": stage.method.spec, "seed": stage.seed,
              "scores": scores, "loss_kind": kind, "train": train, "scoring_s": time.perf_counter() - started,
              "device": plan.device, "date": now()}
    write_json(folder / SCORES_FILE, record)
    if plan.prune_models and previous is not None:
        prune_model(previous.folder(out))


def _weight_files(folder: Path) -> list[Path]:
    """A model folder's weight files (possibly sharded), not its importance files."""
    return [p for p in folder.iterdir() if is_weight_file(p.name)] if folder.is_dir() else []


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and bool(_weight_files(folder))


def prune_model(folder: Path) -> None:
    """Delete a stage's model weights; its scores, metrics and importance files stay."""
    for path in _weight_files(folder):
        path.unlink()
