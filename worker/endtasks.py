"""End-task models on backbone versions: fit one, and the forgetting gate that fits them all on a candidate.

`fit_task_model` fits a registered task on a version of the store and publishes the task model
(probe: a classifier on frozen pooled features; finetune: all parameters tuned, its own weights).
`gate_candidate` runs before an adaptation's candidate is activated: it fits every probe task on
the candidate, scores the ones with an eval set against the active version (paired bootstrap),
and returns the scores, the decision and the fitted probes, so the candidate and its task models
are published together and the swap moves them together.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from das_engine import endtask
from das_engine.loading import load_masked_lm
from das_engine.task_data import LabeledSet, TaskSettings, label_ids, read_labeled_jsonl
from das_engine.trainer import Progress
from job_records import Job
from model_store.store import ModelStore
from model_store.tasks import TaskDefinition, TaskModel, TaskStore

from .context import WorkerContext
from .progress import ProgressReporter
from .task_registry import fit_request

log = logging.getLogger(__name__)
BOOTSTRAP_SAMPLES = 1000


@dataclass
class Backbone:
    """A backbone loaded for fitting, and the features it has computed (per text set, computed once)."""

    folder: Path
    model: Any
    tokenizer: Any
    device: str
    cache: dict[tuple[str, int], Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> Backbone:
        model, tokenizer = load_masked_lm(folder)
        return cls(Path(folder), model.eval().to(device), tokenizer, device)

    def features(self, key: str, texts: tuple[str, ...]):
        """Pooled features truncated as the service truncates them (a probe serves on exactly these)."""
        max_length = endtask.served_max_tokens(self.model.config)
        if (key, max_length) not in self.cache:
            self.cache[(key, max_length)] = endtask.pooled_features(self.model, self.tokenizer, texts,
                                                                    max_length=max_length)
        return self.cache[(key, max_length)]


def read_sets(tasks: TaskStore, definition: TaskDefinition) -> tuple[LabeledSet, LabeledSet | None]:
    """The task's train and eval sets, as registered (already checked at registration)."""
    unbounded = {"max_examples": 10**9, "max_chars": 10**9}
    train = read_labeled_jsonl(tasks.data_path(definition.train).read_bytes(), name="train", **unbounded)
    evals = None
    if definition.eval is not None:
        evals = read_labeled_jsonl(tasks.data_path(definition.eval).read_bytes(), name="eval", **unbounded)
    return train, evals


@dataclass
class Fitted:
    """A task model fitted in a temporary folder, with its eval predictions (for the gate)."""

    definition: TaskDefinition
    folder: Path
    scores: dict[str, Any]
    predictions: list[int] | None
    fit_seconds: float


def fit_probe_on(backbone: Backbone, definition: TaskDefinition, train: LabeledSet,
                 evals: LabeledSet | None, out: Path) -> Fitted:
    """Fit a probe on `backbone`'s frozen features; save it into `out`; score it on the eval set."""
    config = endtask.ProbeConfig.of(TaskSettings.from_dict(definition.settings))
    started = time.perf_counter()
    train_x = backbone.features(f"{definition.name}/train", train.texts)
    features_seconds = time.perf_counter() - started
    eval_x = backbone.features(f"{definition.name}/eval", evals.texts) if evals is not None else None
    fit = endtask.probe_task(train_x, train, definition.labels, config, eval_x, evals)
    fit.head.save(out)
    return _fitted(definition, out, fit.scores, features_seconds + fit.fit_seconds)


def fit_finetune_on(folder: Path, definition: TaskDefinition, train: LabeledSet,
                    evals: LabeledSet | None, out: Path, device: str = "cpu",
                    on_step: Callable[[int, int, float], None] | None = None) -> Fitted:
    """Fine-tune all parameters of the backbone in `folder` for the task; save the model into `out`."""
    config = endtask.FinetuneConfig.of(TaskSettings.from_dict(definition.settings))
    fit = endtask.finetune_task(folder, train, config, evals, device=device, on_step=on_step)
    fit.model.save_pretrained(out)
    fit.tokenizer.save_pretrained(out)
    return _fitted(definition, out, fit.scores, fit.fit_seconds)


def _fitted(definition: TaskDefinition, out: Path, scores: endtask.TaskScores | None, seconds: float) -> Fitted:
    """A fitted model with its scores on the eval set, as the manifest records them (none without one)."""
    if scores is None:
        return Fitted(definition, out, {}, None, seconds)
    record = {"macro_f1": round(scores.macro_f1, 3), "accuracy": round(scores.accuracy, 3), "n": scores.n}
    return Fitted(definition, out, record, scores.predictions, seconds)


def publish_fitted(store: ModelStore, tasks: TaskStore, version: str, fitted: Fitted) -> TaskModel:
    """Publish a fitted task model on `version`, and its score into the version's manifest."""
    definition = fitted.definition
    record = tasks.publish_model(fitted.folder, TaskModel(
        task=definition.name, version=version, generation=definition.generation, kind=definition.kind,
        labels=definition.labels, files={}, scores=fitted.scores, fit_seconds=round(fitted.fit_seconds, 3)))
    if fitted.scores:
        store.record_task_score(version, definition.name, {**fitted.scores, "kind": definition.kind,
                                                           "generation": definition.generation})
    return record


def fit_task_model(store: ModelStore, definition: TaskDefinition, version: str, *, device: str = "cpu",
                   on_step: Callable[[int, int, float], None] | None = None) -> TaskModel:
    """Fit a registered task on one version of the store and publish it (idempotent per generation)."""
    tasks = TaskStore(store)
    existing = tasks.model(version, definition.name, definition.generation)
    if existing is not None:
        return existing
    train, evals = read_sets(tasks, definition)
    folder = store.model_dir(version)
    with tempfile.TemporaryDirectory() as tmp:
        if definition.kind == "probe":
            fitted = fit_probe_on(Backbone.load(folder, device), definition, train, evals, Path(tmp))
        else:
            fitted = fit_finetune_on(folder, definition, train, evals, Path(tmp), device, on_step)
        return publish_fitted(store, tasks, version, fitted)


def ensure_probe_models(store: ModelStore, version: str, device: str = "cpu") -> list[TaskModel]:
    """Fit every probe task that has no model on `version` yet (a published candidate whose worker died)."""
    tasks = TaskStore(store)
    missing = [d for d in tasks.definitions()
               if d.kind == "probe" and tasks.model(version, d.name, d.generation) is None]
    return [fit_task_model(store, definition, version, device=device) for definition in missing]


# ------------------------------------------------------------------ the forgetting gate
@dataclass
class GateResult:
    evaluation: dict[str, Any]  # the candidate's manifest `evaluation`: scores per task and the gate
    probes: list[Fitted]  # fitted on the candidate, published with it
    rejected: list[endtask.GateDecision]

    @property
    def reason(self) -> str:
        return "; ".join(d.reason for d in self.rejected)


def gate_candidate(store: ModelStore, candidate_folder: Path, parent: str, work: Path, *, max_drop: float,
                   device: str = "cpu", force: bool = False) -> GateResult:
    """Fit every probe task on the candidate; score each task with an eval set against `parent`.

    A task's drop counts only when it exceeds `max_drop` points of macro-F1 and the sampling noise
    of the eval set (paired bootstrap over its examples); `force` records the decision but never rejects.
    """
    tasks = TaskStore(store)
    definitions = [d for d in tasks.definitions() if d.kind == "probe" or d.eval is not None]
    if not definitions:
        return GateResult({}, [], [])
    candidate = Backbone.load(candidate_folder, device)
    active: Backbone | None = None
    probes, decisions, scores = [], [], {}
    for definition in definitions:
        train, evals = read_sets(tasks, definition)
        # finetune tasks are gated by a probe of their data: they are re-tuned in the background
        probe_def = definition if definition.kind == "probe" else dataclasses.replace(definition, kind="probe")
        fitted = fit_probe_on(candidate, probe_def, train, evals, work / definition.name)
        if definition.kind == "probe":
            probes.append(fitted)
        if evals is None:
            continue
        scores[definition.name] = {**fitted.scores, "kind": "probe", "generation": definition.generation}
        if active is None:
            active = Backbone.load(store.model_dir(parent), device)
        before = fit_probe_on(active, probe_def, train, evals, work / f"{definition.name}-active")
        decision = endtask.gate(definition.name, label_ids(evals.labels, definition.labels), before.predictions,
                                fitted.predictions, len(definition.labels), max_drop, samples=BOOTSTRAP_SAMPLES)
        decisions.append(decision)
    rejected = [] if force else [d for d in decisions if d.rejected]
    gate = {"max_drop": max_drop, "forced": force, "rejected": bool(rejected), "against": parent,
            "decisions": [dataclasses.asdict(d) for d in decisions]}
    return GateResult({"tasks": scores, "gate": gate}, probes, rejected)


def publish_probes(store: ModelStore, version: str, probes: list[Fitted]) -> None:
    tasks = TaskStore(store)
    for fitted in probes:
        publish_fitted(store, tasks, version, fitted)


# ------------------------------------------------------------------ the fit job
def run_fit_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """The `fit` kind of job: fit task `job.task` on version `job.parent` (fixed when it started)."""
    definition = TaskStore(ctx.store).definition(job.task)
    if definition.generation != job.generation:
        raise ValueError(f"task {definition.name!r} was registered again while this job waited; "
                         "its new registration has its own job")

    def on_step(step: int, total: int, loss: float) -> None:
        reporter(Progress(phase="train", step=step, total=total, losses={"loss": loss}))

    fit_task_model(ctx.store, definition, job.parent, device=ctx.device, on_step=on_step)
    return job.parent


def retune_jobs(ctx: WorkerContext, version: str) -> list[str]:
    """After `version` became active: a background fit job for every finetune task not tuned on it."""
    tasks = TaskStore(ctx.store)
    created = []
    for definition in tasks.definitions():
        if definition.kind != "finetune" or tasks.model(version, definition.name, definition.generation):
            continue
        job = ctx.jobs.create(fit_request(definition))
        ctx.jobs.update(job.id, parent=version)
        ctx.submit(job.id)
        created.append(job.id)
    return created
