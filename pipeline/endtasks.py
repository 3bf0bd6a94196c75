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

from das_engine import endtask, task_scores
from das_engine.loading import load_lm
from das_engine.run_state import Progress
from das_formats.task_data import LabeledSet, TaskDataError, TaskSettings, label_ids, read_labeled_jsonl
from model_store.locks import StoreLocked
from model_store.manifest import Manifest
from model_store.store import ModelStore, StoreError, VersionFolder
from model_store.tasks import TaskDefinition, TaskModel, TaskStore

log = logging.getLogger(__name__)
BOOTSTRAP_SAMPLES = 1000
Report = Callable[[Progress], None]  # where a phase's progress goes (a job's record, a CLI's line)


def _unreported(progress: Progress) -> None:
    """No one listens."""


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
        model, tokenizer, _ = load_lm(folder)  # masked or causal: probes read pooled last hidden states
        return cls(Path(folder), model.eval().to(device), tokenizer, device)

    def features(self, key: str, texts: tuple[str, ...], on_batch: Callable[[int, int], None] | None = None):
        """Pooled features truncated as the service truncates them (a probe serves on exactly these);
        `on_batch(texts done, texts)` while they are computed."""
        max_length = endtask.served_max_tokens(self.model.config)
        if (key, max_length) not in self.cache:
            self.cache[(key, max_length)] = endtask.pooled_features(self.model, self.tokenizer, texts,
                                                                    max_length=max_length, on_batch=on_batch)
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
                 evals: LabeledSet | None, out: Path, report: Report | None = None) -> Fitted:
    """Fit a probe on `backbone`'s frozen features; save it into `out`; score it on the eval set. `report`: the
    phases `features` (train and eval texts encoded, of all) and `fit`."""
    report = report or _unreported
    config = endtask.ProbeConfig.of(TaskSettings.from_dict(definition.settings))
    texts = len(train.texts) + (len(evals.texts) if evals is not None else 0)
    report(Progress("features", 0, texts))
    started = time.perf_counter()
    train_x = backbone.features(f"{definition.name}/train", train.texts,
                                lambda done, _: report(Progress("features", done, texts, detail="train set")))
    features_seconds = time.perf_counter() - started
    eval_x = backbone.features(
        f"{definition.name}/eval", evals.texts,
        lambda done, _: report(Progress("features", len(train.texts) + done, texts, detail="eval set"))) \
        if evals is not None else None
    report(Progress("fit", 0, 1))
    fit = endtask.probe_task(train_x, train, definition.labels, config, eval_x, evals)
    report(Progress("fit", 1, 1))
    fit.head.save(out)
    return _fitted(definition, out, fit.scores, features_seconds + fit.fit_seconds)


def fit_finetune_on(folder: Path, definition: TaskDefinition, train: LabeledSet,
                    evals: LabeledSet | None, out: Path, device: str = "cpu", report: Report | None = None) -> Fitted:
    """Fine-tune all parameters of the backbone in `folder` for the task; save the model into `out`. `report`: the
    phase `fit`, step by step, with the loss."""
    report = report or _unreported
    config = endtask.FinetuneConfig.of(TaskSettings.from_dict(definition.settings))
    fit = endtask.finetune_task(folder, train, config, evals, device=device,
                                on_step=lambda step, total, loss: report(Progress("fit", step, total, {"loss": loss})))
    fit.model.save_pretrained(out)
    fit.tokenizer.save_pretrained(out)
    return _fitted(definition, out, fit.scores, fit.fit_seconds)


def _fitted(definition: TaskDefinition, out: Path, scores: task_scores.TaskScores | None, seconds: float) -> Fitted:
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
    score = fitted.scores.get("macro_f1")
    log.info("fitted task %s (%s) on %s in %.1f s: macro-F1 %s", definition.name, definition.kind, version,
             fitted.fit_seconds, score if score is not None else "- (no eval set)",
             extra={"event": "fit", "task": definition.name, "task_kind": definition.kind, "version": version,
                    "seconds": round(fitted.fit_seconds, 3), "macro_f1": score})
    return record


FIT_PHASES = ("load", "features", "fit", "publish")  # a fit job's phases, in order (a finetune task has no features)


def fit_task_model(store: ModelStore, definition: TaskDefinition, version: str, *, device: str = "cpu",
                   report: Report | None = None) -> TaskModel:
    """Fit a registered task on one version of the store and publish it (idempotent per generation). `report`
    hears each of FIT_PHASES: the version loaded, its features of the texts (a probe), the fit (a finetune
    task: step by step), the publication; a caller may raise from it to stop the fit."""
    report = report or _unreported
    tasks = TaskStore(store)
    existing = tasks.sound_model(version, definition.name, definition.generation)
    if existing is not None:
        return existing
    report(Progress("load", 0, 1))
    train, evals = read_sets(tasks, definition)
    folder = store.model_dir(version)
    with tempfile.TemporaryDirectory() as tmp:
        if definition.kind == "probe":
            fitted = fit_probe_on(Backbone.load(folder, device), definition, train, evals, Path(tmp), report)
        else:
            fitted = fit_finetune_on(folder, definition, train, evals, Path(tmp), device, report)
        report(Progress("publish", 0, 1))
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
    rejected: list[task_scores.GateDecision]

    @property
    def reason(self) -> str:
        return "; ".join(d.reason for d in self.rejected)


def task_reference(definition: TaskDefinition, lineage: list[Manifest]) -> tuple[str, float | None]:
    """A task's reference: the version of `lineage` (the candidate's parent first, then its ancestors) where the task
    scored best under its current generation (since it was registered, or registered again), and that score. With no
    score recorded on the lineage, the parent, scored now."""
    best: tuple[str, float | None] = (lineage[0].id, None)
    for manifest in lineage:
        entry = manifest.evaluation.get("tasks", {}).get(definition.name)
        if not isinstance(entry, dict) or entry.get("generation") != definition.generation:
            continue
        score = entry.get("macro_f1")
        if isinstance(score, int | float) and (best[1] is None or score > best[1]):
            best = (manifest.id, float(score))
    return best


@dataclass
class Reference:
    version: str
    recorded_f1: float | None  # the score the version's manifest holds (None: the parent, never scored)
    predictions: list[int]


class TaskReferences:
    """The gated tasks of a store and, for each, its reference version's predictions on the eval set (each
    reference version is loaded and each probe fitted once, however many candidates are judged against them)."""

    def __init__(self, store: ModelStore, parent: VersionFolder, work: Path, device: str = "cpu") -> None:
        self.tasks = TaskStore(store)
        self.store, self.work, self.device = store, work, device
        self.parent = parent  # opened and checked by the caller: a reference on the parent loads it as it is
        self.lineage = store.lineage(parent.id)
        registered, self.unreadable = self.tasks.scan()
        self.definitions = [d for d in registered if d.kind == "probe" or d.eval is not None]
        self._sets: dict[str, tuple[LabeledSet, LabeledSet | None]] = {}
        self._backbones: dict[str, Backbone] = {}
        self._references: dict[str, Reference] = {}

    def sets(self, definition: TaskDefinition) -> tuple[LabeledSet, LabeledSet | None]:
        if definition.name not in self._sets:
            self._sets[definition.name] = read_sets(self.tasks, definition)
        return self._sets[definition.name]

    def reference(self, definition: TaskDefinition) -> Reference:
        if definition.name not in self._references:
            version, recorded = task_reference(definition, self.lineage)
            if version not in self._backbones:
                folder = self.parent.folder if version == self.parent.id else self.store.model_dir(version)
                self._backbones[version] = Backbone.load(folder, self.device)
            train, evals = self.sets(definition)
            fitted = fit_probe_on(self._backbones[version], as_probe(definition), train, evals,
                                  self.work / f"{definition.name}-reference")
            self._references[definition.name] = Reference(version, recorded, fitted.predictions)
        return self._references[definition.name]

    def judge(self, candidate: Backbone, definition: TaskDefinition, out: Path,
              max_drop: float) -> tuple[Fitted, dict[str, Any] | None, task_scores.GateDecision | None]:
        """The task's probe fitted on `candidate` and, with an eval set, its gate decision against the reference
        (and the record the manifest keeps: the decision, the reference and where it came from)."""
        train, evals = self.sets(definition)
        fitted = fit_probe_on(candidate, as_probe(definition), train, evals, out)
        if evals is None:
            return fitted, None, None
        reference = self.reference(definition)
        decision = task_scores.gate(definition.name, label_ids(evals.labels, definition.labels), reference.predictions,
                                fitted.predictions, len(definition.labels), max_drop, samples=BOOTSTRAP_SAMPLES)
        where = (f"the best macro-F1 of this registration on the active lineage ({reference.version})"
                 if reference.recorded_f1 is not None else f"the parent {reference.version} (no score recorded)")
        record = dataclasses.asdict(decision) | {"reference": {"version": reference.version,
                                                              "recorded_f1": reference.recorded_f1, "source": where}}
        return fitted, record, decision


def as_probe(definition: TaskDefinition) -> TaskDefinition:
    """Finetune tasks are gated by a probe of their data: they are re-tuned in the background."""
    return definition if definition.kind == "probe" else dataclasses.replace(definition, kind="probe")


def gate_candidate(store: ModelStore, candidate_folder: Path, parent: VersionFolder, work: Path, *, max_drop: float,
                   device: str = "cpu", force: bool = False, report: Report | None = None) -> GateResult:
    """Fit every probe task on the candidate; score each task with an eval set against its reference: the best score
    it reached on the active lineage (`task_reference`), so a task cannot lose a little with every version.

    A task's drop counts only when it exceeds `max_drop` points of macro-F1 and the sampling noise
    of the eval set (paired bootstrap over its examples); `force` records the decision but never rejects.
    A task that cannot be scored (its definition, data or fit fails) is never skipped in silence: it is
    listed under the gate's `unscored`, with why, and recorded on the task; the others decide.
    `report` hears the phase `gate`: tasks done of the tasks, with the one being scored.
    """
    report = report or _unreported
    references = TaskReferences(store, parent, work, device)
    unscored = [{"task": name, "problem": why} for name, why in references.unreadable.items()]
    if not references.definitions and not unscored:
        report(Progress("gate", 0, 0, detail="no end tasks registered"))
        return GateResult({}, [], [])
    candidate: Backbone | None = None
    probes, decisions, records, scores = [], [], [], {}
    count = len(references.definitions)
    for done, definition in enumerate(references.definitions):
        report(Progress("gate", done, count, detail=f"task {definition.name}"))
        try:
            candidate = candidate or Backbone.load(candidate_folder, device)
            fitted, record, decision = references.judge(candidate, definition, work / definition.name, max_drop)
        except ONE_TASK_PROBLEMS as err:
            problem = _task_failed(references.tasks, definition, None, f"the forgetting gate could not score it on "
                                                                       f"a candidate built from {parent.id}", err)
            unscored.append({"task": definition.name, "problem": problem})
            continue
        if definition.kind == "probe":
            probes.append(fitted)
        if decision is not None:
            scores[definition.name] = {**fitted.scores, "kind": "probe", "generation": definition.generation}
            decisions.append(decision)
            records.append(record)
            _log_decision(parent.id, decision, record["reference"]["version"], force)
    report(Progress("gate", count, count))
    rejected = [] if force else [d for d in decisions if d.rejected]
    gate = {"max_drop": max_drop, "forced": force, "rejected": bool(rejected), "against": "best on the lineage",
            "parent": parent.id, "decisions": records, "unscored": unscored}
    log.info("forgetting gate on a candidate from %s: %s (%d tasks scored, %d unscored%s)", parent.id,
             "rejected" if rejected else "accepted", len(decisions), len(unscored), ", forced" if force else "",
             extra={"event": "gate", "parent": parent.id, "rejected": bool(rejected), "forced": force,
                    "scored": len(decisions), "unscored": len(unscored)})
    return GateResult({"tasks": scores, "gate": gate}, probes, rejected)


def _log_decision(parent: str, decision: task_scores.GateDecision, reference: str, force: bool) -> None:
    """One task's gate decision, with the scores that made it (macro-F1 in points)."""
    outcome = "rejected" if decision.rejected else "accepted"
    log.info("forgetting gate on a candidate from %s: task %s %s%s: macro-F1 %.1f on the candidate, %.1f on the "
             "reference %s (drop %.1f, noise %.1f, limit %.1f)", parent, decision.task, outcome,
             " (overridden by force)" if force and decision.rejected else "", decision.candidate_f1,
             decision.reference_f1, reference, decision.drop, decision.noise, decision.max_drop,
             extra={"event": "gate_decision", "parent": parent, "task": decision.task, "decision": outcome,
                    "forced": force, "reference": reference, "reference_f1": round(decision.reference_f1, 3),
                    "candidate_f1": round(decision.candidate_f1, 3), "drop": round(decision.drop, 3),
                    "noise": round(decision.noise, 3), "max_drop": decision.max_drop})


class CandidateJudge:
    """merge_auto's judge (das_engine.merge.TaskJudge): which registered tasks a candidate held in memory drops
    beyond the gate's limit and noise, against the same references as the gate."""

    def __init__(self, store: ModelStore, parent: VersionFolder, work: Path, *, max_drop: float,
                 device: str = "cpu") -> None:
        self.references = TaskReferences(store, parent, work, device)
        self.work, self.max_drop, self.device = work, max_drop, device

    def __call__(self, model: Any, tokenizer: Any) -> tuple[dict[str, bool], dict[str, Any]]:
        model.eval()
        candidate = Backbone(self.work / "candidate", model, tokenizer, self.device)  # features cached per share
        drops, details = {}, {}
        for definition in self.references.definitions:
            try:
                fitted, record, decision = self.references.judge(candidate, definition, self.work / definition.name,
                                                                 self.max_drop)
            except ONE_TASK_PROBLEMS as err:  # the gate records it on the task; the choice goes on without it
                details[definition.name] = {"problem": f"{type(err).__name__}: {err}"}
                continue
            if decision is not None:
                drops[definition.name] = decision.rejected
                details[definition.name] = {"macro_f1": fitted.scores["macro_f1"],
                                            "reference_f1": decision.reference_f1, "drop": decision.drop,
                                            "noise": decision.noise}
        return drops, details


def publish_probes(store: ModelStore, version: str, probes: list[Fitted]) -> None:
    tasks = TaskStore(store)
    for fitted in probes:
        try:
            publish_fitted(store, tasks, version, fitted)
        except ONE_TASK_PROBLEMS as err:
            _task_failed(tasks, fitted.definition, version, f"its probe could not be published on {version}", err)
