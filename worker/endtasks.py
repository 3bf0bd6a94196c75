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
from functools import cached_property
from pathlib import Path
from typing import Any

from das_engine import endtask
from das_engine.loading import load_masked_lm
from das_engine.task_data import LabeledSet, TaskDataError, TaskSettings, label_ids, read_labeled_jsonl
from das_engine.trainer import Progress
from job_records import Job
from model_store.locks import StoreLocked
from model_store.store import ModelStore, StoreError
from model_store.tasks import TaskDefinition, TaskModel, TaskNotFound, TaskStore

from .context import JobStopped, Superseded, WorkerContext
from .progress import ProgressReporter

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
    existing = tasks.sound_model(version, definition.name, definition.generation)
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
    """Fit every probe task that has no model on `version` yet (a published candidate whose worker died).
    A task that cannot be fitted is recorded on the task, and the others are fitted all the same."""
    tasks = TaskStore(store)
    fitted = []
    for definition in tasks.definitions():
        if definition.kind != "probe" or tasks.sound_model(version, definition.name, definition.generation) is not None:
            continue
        try:
            fitted.append(fit_task_model(store, definition, version, device=device))
        except ONE_TASK_PROBLEMS as err:
            _task_failed(tasks, definition, version, f"its probe could not be fitted on {version}", err)
    return fitted


# failures that belong to one task's data or model, not to the store or the job: recorded on the task, while the
# adaptation and the other tasks go on (a lost lock or connection is the job's, and retries it)
ONE_TASK_PROBLEMS = (TaskDataError, StoreError, ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError)
NOT_ONE_TASKS = (StoreLocked, ConnectionError, TimeoutError, MemoryError)


def _task_failed(tasks: TaskStore, definition: TaskDefinition, version: str | None, what: str,
                 err: BaseException) -> str:
    if isinstance(err, NOT_ONE_TASKS):
        raise err
    problem = f"{what}: {type(err).__name__}: {err}"
    log.warning("task %s: %s", definition.name, problem)
    try:
        tasks.note_problem(definition, version, problem)
    except StoreLocked:  # the note is for the user; the work goes on without it
        log.warning("task %s: could not record the problem (the store is locked)", definition.name)
    return problem


# ------------------------------------------------------------------ the forgetting gate
@dataclass
class GateResult:
    evaluation: dict[str, Any]  # the candidate's manifest `evaluation`: scores per task and the gate
    probes: list[Fitted]  # fitted on the candidate, published with it
    rejected: list[endtask.GateDecision]

    @property
    def reason(self) -> str:
        return "; ".join(d.reason for d in self.rejected)


@dataclass
class _Backbones:
    """The candidate and the parent, each loaded on first use."""

    candidate_folder: Path
    parent_folder: Callable[[], Path]
    device: str

    @cached_property
    def candidate(self) -> Backbone:
        return Backbone.load(self.candidate_folder, self.device)

    @cached_property
    def parent(self) -> Backbone:
        return Backbone.load(self.parent_folder(), self.device)


def gate_candidate(store: ModelStore, candidate_folder: Path, parent: str, work: Path, *, max_drop: float,
                   device: str = "cpu", force: bool = False) -> GateResult:
    """Fit every probe task on the candidate; score each task with an eval set against `parent`.

    A task's drop counts only when it exceeds `max_drop` points of macro-F1 and the sampling noise
    of the eval set (paired bootstrap over its examples); `force` records the decision but never rejects.
    A task that cannot be scored (its definition, data or fit fails) is never skipped in silence: it is
    listed under the gate's `unscored`, with why, and recorded on the task; the others decide.
    """
    tasks = TaskStore(store)
    registered, unreadable = tasks.scan()
    definitions = [d for d in registered if d.kind == "probe" or d.eval is not None]
    unscored = [{"task": name, "problem": why} for name, why in unreadable.items()]
    if not definitions and not unscored:
        return GateResult({}, [], [])
    backbones = _Backbones(candidate_folder, lambda: store.model_dir(parent), device)
    probes, decisions, scores = [], [], {}
    for definition in definitions:
        try:
            fitted, decision = _gate_task(tasks, definition, backbones, work, max_drop)
        except ONE_TASK_PROBLEMS as err:
            problem = _task_failed(tasks, definition, None, f"the forgetting gate could not score it on a "
                                                            f"candidate built from {parent}", err)
            unscored.append({"task": definition.name, "problem": problem})
            continue
        if definition.kind == "probe":
            probes.append(fitted)
        if decision is not None:
            scores[definition.name] = {**fitted.scores, "kind": "probe", "generation": definition.generation}
            decisions.append(decision)
    rejected = [] if force else [d for d in decisions if d.rejected]
    gate = {"max_drop": max_drop, "forced": force, "rejected": bool(rejected), "against": parent,
            "decisions": [dataclasses.asdict(d) for d in decisions], "unscored": unscored}
    return GateResult({"tasks": scores, "gate": gate}, probes, rejected)


def _gate_task(tasks: TaskStore, definition: TaskDefinition, backbones: _Backbones, work: Path,
               max_drop: float) -> tuple[Fitted, endtask.GateDecision | None]:
    """One task's probe on the candidate and, with an eval set, its gate decision against the parent."""
    train, evals = read_sets(tasks, definition)
    # finetune tasks are gated by a probe of their data: they are re-tuned in the background
    probe_def = definition if definition.kind == "probe" else dataclasses.replace(definition, kind="probe")
    fitted = fit_probe_on(backbones.candidate, probe_def, train, evals, work / definition.name)
    if evals is None:
        return fitted, None
    before = fit_probe_on(backbones.parent, probe_def, train, evals, work / f"{definition.name}-active")
    decision = endtask.gate(definition.name, label_ids(evals.labels, definition.labels), before.predictions,
                            fitted.predictions, len(definition.labels), max_drop, samples=BOOTSTRAP_SAMPLES)
    return fitted, decision


def publish_probes(store: ModelStore, version: str, probes: list[Fitted]) -> None:
    tasks = TaskStore(store)
    for fitted in probes:
        try:
            publish_fitted(store, tasks, version, fitted)
        except ONE_TASK_PROBLEMS as err:
            _task_failed(tasks, fitted.definition, version, f"its probe could not be published on {version}", err)


# ------------------------------------------------------------------ the fit job
def run_fit_job(job: Job, ctx: WorkerContext, reporter: ProgressReporter) -> str:
    """The `fit` kind of job: fit task `job.task` on version `job.parent` (fixed when it started).

    It stops at its next step when cancelled (or at a shutdown: JobStopped), and ends `cancelled` as Superseded
    when the task was deleted or registered again meanwhile (the new registration has its own job)."""
    try:
        definition = TaskStore(ctx.store).definition(job.task)
    except TaskNotFound:
        raise Superseded(f"task {job.task!r} was deleted while this job waited") from None
    if definition.generation != job.generation:
        raise Superseded(f"task {definition.name!r} was registered again while this job waited; "
                         "its new registration has its own job")
    if reporter.should_stop():
        raise JobStopped("stopped before the fit began")

    def on_step(step: int, total: int, loss: float) -> None:
        reporter(Progress(phase="train", step=step, total=total, losses={"loss": loss}))
        if reporter.should_stop():
            raise JobStopped(f"stopped at step {step} of {total}")

    fit_task_model(ctx.store, definition, job.parent, device=ctx.device, on_step=on_step)
    return job.parent
