"""`das eval`: continual pre-training of several methods over a sequence of domains, scored after every stage.

Read top to bottom:

1. **Methods**: `base` (the original model, never trained), `ncl` (plain continual MLM: no soft-mask,
   no importance, no contrastive term), `das` (the defaults) and variants named by their settings,
   `das:mask_mode=grad,negative_rule=abs`. `parse_method` turns a name into DASConfig overrides.
2. **The plan** (`EvalPlan`): domain folders in order, methods, seeds, the base model, the training
   settings every method shares and how stages are scored (`ScoringSettings`).
3. **Prepared domains**: each domain's corpus minus a fixed held-out slice (kept out of training,
   scored by MLM loss), and its end task capped for speed.
4. **Metrics**: pure functions of a score matrix a[T, i] (row T = after T domains, column i = the
   i-th domain's task): final average, forgetting rate (SPEC-DAS), plasticity, MLM-loss rise, and
   mean/std over seeds.
5. **The runner** (`run_evaluation`): check or write OUT/run.json, score stage 0 (the base model),
   train and score every stage of every method and seed (reusing the finished ones), then collect
   the results and write results.json, results.md and the plots.

Layout of OUT:

    run.json                                        settings the folder was made with, commands
    runs/base/seed-S/stage-0-base/scores.json       the base model's scores (stage 0 of every method)
    runs/METHOD/seed-S/stage-T-DOMAIN/              the model after T domains (das_engine.trainer.adapt)
    runs/METHOD/seed-S/stage-T-DOMAIN/scores.json   its scores on every domain; written last: the stage is done
    results.json, results.md, *.png

Domain indices here are 0-based: domain j (the (j+1)-th of the sequence) is learned in stage j + 1,
so the spec's a[i, i] (1-based) is `a[j + 1][j]`.

This module imports no torch at import time (the CLI starts fast); the scoring and training
functions import the engine when they run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from das_engine.config import DASConfig, setting_fields
from das_engine.corpus import read_corpus

from .domains import Domain, Example, read_domain

FORMAT = "das-eval"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
SCORES_FILE = "scores.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
IMPORTANCE_FILE = "importance.safetensors"
HELDOUT_SALT = "das-eval-heldout"
CAP_SALT = "das-eval-cap"
KINDS = ("probe", "finetune")  # end-task scoring: frozen features + logistic regression; full fine-tuning
SCORE_METRICS = ("macro_f1", "accuracy")


class EvalError(ValueError):
    """An evaluation cannot be planned or resumed; the message says what to change."""


# --------------------------------------------------------------------------------------------
# 1. methods


METHOD_KINDS: dict[str, dict[str, Any]] = {
    "base": {},  # never trained: a[T, i] = a[0, i]
    "ncl": {"softmask": False},  # plain continual MLM: no soft-mask, no importance, no contrastive term
    "das": {},  # DAS with DASConfig's defaults
}


@dataclass(frozen=True)
class Method:
    spec: str  # as given, e.g. "das:mask_mode=grad"
    kind: Literal["base", "ncl", "das"]
    overrides: dict[str, Any]  # DASConfig fields this method sets (the kind's own and the spec's)

    @property
    def trains(self) -> bool:
        return self.kind != "base"

    @property
    def folder(self) -> str:
        return method_folder(self.spec)


def method_folder(spec: str) -> str:
    """A folder name for a method: ':' and ',' become '+', '=' becomes '-', anything odd '_'.

    das:mask_mode=grad,negative_rule=abs -> das+mask_mode-grad+negative_rule-abs
    """
    name = spec.replace(":", "+").replace(",", "+").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def parse_method(spec: str) -> Method:
    """`base`, `ncl`, `das`, or `KIND:key=value,key=value` (DASConfig fields) for `ncl`/`das`.

    Values are read by the field's type (bool: true/false, an optional number: none); the result is
    validated by DASConfig, and any problem is an EvalError naming the method.
    """
    spec = spec.strip()
    kind, _, settings = spec.partition(":")
    if kind not in METHOD_KINDS:
        raise EvalError(f"method {spec!r}: unknown kind {kind!r}; a method is one of {', '.join(METHOD_KINDS)}, "
                        "optionally followed by ':key=value,...' (DASConfig fields), e.g. das:mask_mode=grad")
    if kind == "base" and settings:
        raise EvalError(f"method {spec!r}: 'base' is the untrained model and takes no settings")
    if ":" in spec and not settings.strip():
        raise EvalError(f"method {spec!r}: nothing after ':'; give key=value pairs or drop the ':'")
    overrides = dict(METHOD_KINDS[kind])
    overrides.update(parse_settings(settings, what=f"method {spec!r}"))
    if kind != "base":
        check_overrides(overrides, what=f"method {spec!r}")
    return Method(spec, kind, overrides)  # type: ignore[arg-type]


def parse_settings(text: str, *, what: str) -> dict[str, Any]:
    """'key=value,key=value' -> {field: typed value} for DASConfig fields (empty text: {})."""
    fields = {f.name: f for f in setting_fields(DASConfig)}
    values: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise EvalError(f"{what}: {item!r} is not key=value")
        if key == "seed":
            raise EvalError(f"{what}: the seed is set by --seeds (seeds 0..K-1), not per method")
        if key not in fields:
            raise EvalError(f"{what}: {key!r} is not a DASConfig field; known: {', '.join(sorted(fields))}")
        values[key] = _typed(fields[key], raw, what)
    return values


def _typed(f, raw: str, what: str) -> Any:
    """A setting's text value as the field's type."""
    low = raw.lower()
    if f.optional and low in ("none", "off", "null"):
        return None
    try:
        if f.type is bool:
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if f.type is int:
            return int(raw)
        if f.type is float:
            return float(raw)
    except ValueError:
        raise EvalError(f"{what}: {f.name}={raw!r} is not a valid {f.type.__name__}") from None
    if f.choices and raw not in f.choices:
        raise EvalError(f"{what}: {f.name} must be one of {', '.join(f.choices)}, got {raw!r}")
    return raw


def check_overrides(overrides: dict[str, Any], *, what: str) -> DASConfig:
    """The DASConfig these overrides make (seed 0), or an EvalError that names `what` and the problem."""
    try:
        return DASConfig.from_dict(overrides)
    except ValueError as err:
        missing = sorted(set(overrides) - {f.name for f in dataclasses.fields(DASConfig)})
        if missing:
            raise EvalError(f"{what}: this engine's DASConfig has no field(s) {missing} "
                            "(the method needs a newer das_engine)") from None
        raise EvalError(f"{what}: {err}") from None


# --------------------------------------------------------------------------------------------
# 2. the plan


@dataclass(frozen=True)
class ScoringSettings:
    """How every stage is scored: end tasks (probe always, fine-tuning on request) and held-out MLM loss."""

    max_train: int = 2000  # end-task train examples per domain (balanced across labels, seeded)
    max_test: int = 1000
    max_length: int = 128  # tokens per end-task text
    probe_l2: float = 1e-3
    probe_max_iter: int = 200
    finetune: bool = False  # also fine-tune every parameter on each task (the paper's protocol; slow)
    finetune_epochs: int = 3
    finetune_lr: float = 3e-5
    finetune_batch_size: int = 16
    heldout_fraction: float = 0.05  # share of each corpus kept out of training for the MLM loss ...
    heldout_max_documents: int = 200  # ... at most this many documents
    heldout_batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_train", "max_test", "probe_max_iter", "finetune_epochs", "finetune_batch_size",
                     "heldout_max_documents", "heldout_batch_size"):
            if getattr(self, name) < 1:
                raise EvalError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 4096:
            raise EvalError(f"the end-task max_length must be within 8..4096, got {self.max_length}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise EvalError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise EvalError(f"finetune_lr must be a number > 0, got {self.finetune_lr}")
        if not (math.isfinite(self.probe_l2) and self.probe_l2 >= 0):
            raise EvalError(f"probe_l2 must be a number >= 0, got {self.probe_l2}")

    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.finetune else ("probe",)

    def compared(self) -> dict[str, Any]:
        """What decides the scores (the fine-tuning settings only when fine-tuning is on)."""
        values = dataclasses.asdict(self)
        if not self.finetune:
            values = {k: v for k, v in values.items() if not k.startswith("finetune_")}
        return values


@dataclass
class EvalPlan:
    domains: list[Path]  # domain folders, in the order they are learned
    methods: list[Method]
    seeds: list[int]
    base: str  # a model folder (resolved); `base_spec` is what the user named
    train: dict[str, Any] = field(default_factory=dict)  # DASConfig overrides every method shares (steps, lr, ...)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    base_spec: str = ""
    device: str = "cpu"
    prune_models: bool = False  # delete a stage's weights once the next stage is scored (saves disk)

    def __post_init__(self) -> None:
        if not self.domains:
            raise EvalError("give at least one domain folder")
        if not self.methods:
            raise EvalError("give at least one method")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EvalError(f"seeds must be distinct and at least one, got {self.seeds}")
        folders = [m.folder for m in self.methods]
        clash = sorted({f for f in folders if folders.count(f) > 1})
        if clash:
            raise EvalError(f"methods {[m.spec for m in self.methods if m.folder in clash]} share the folder "
                            f"name(s) {clash}; give each method once")
        if "seed" in self.train:
            raise EvalError("the seed is set by --seeds, not by the shared settings")
        check_overrides(self.train, what="the shared training settings")
        for method in self.methods:
            if method.trains:
                self.config(method, self.seeds[0])

    def config(self, method: Method, seed: int) -> DASConfig:
        """The DASConfig of one method and seed: shared settings, then the method's own, then the seed."""
        return check_overrides({**self.train, **method.overrides, "seed": seed}, what=f"method {method.spec!r}")

    def shared_config(self) -> dict[str, Any]:
        """DASConfig of the shared settings, seed left out: what run.json compares."""
        values = check_overrides(self.train, what="the shared training settings").to_dict()
        values.pop("seed")
        return values


def make_plan(domains: Sequence[str | Path], methods: str | Sequence[str], seeds: int, *, base: str,
              base_spec: str = "", train: dict[str, Any] | None = None, scoring: ScoringSettings | None = None,
              device: str = "cpu", prune_models: bool = False) -> EvalPlan:
    """An EvalPlan from the CLI's values: methods as 'base,ncl,das' (a comma inside a method's settings
    belongs to it: 'das:mask_mode=grad,negative_rule=abs,ncl' is two methods), seeds as a count."""
    if seeds < 1:
        raise EvalError(f"--seeds must be >= 1, got {seeds}")
    specs = split_methods(methods) if isinstance(methods, str) else list(methods)
    return EvalPlan(domains=[Path(d) for d in domains], methods=[parse_method(s) for s in specs],
                    seeds=list(range(seeds)), base=base, base_spec=base_spec or base, train=dict(train or {}),
                    scoring=scoring or ScoringSettings(), device=device, prune_models=prune_models)


def split_methods(text: str) -> list[str]:
    """'base,ncl,das:a=1,b=2' -> ['base', 'ncl', 'das:a=1,b=2']: a part with '=' and no ':' continues the method
    before it."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and specs and ":" in specs[-1]:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


# --------------------------------------------------------------------------------------------
# 3. prepared domains: corpus minus the held-out slice, capped end task


@dataclass
class PreparedDomain:
    name: str
    domain: Domain
    training_documents: list[str]  # what the trainer sees
    heldout_documents: list[str]  # never trained on; scored by MLM loss after every stage
    train: list[Example]  # the end task, capped
    test: list[Example]
    fingerprint: str  # sha256 over the folder's four files


def prepare_domain(folder: Path, scoring: ScoringSettings) -> PreparedDomain:
    domain = read_domain(folder)
    documents = read_corpus(domain.corpus)
    heldout, training = heldout_split(documents, scoring.heldout_fraction, scoring.heldout_max_documents)
    if not training:
        raise EvalError(f"{folder}: the corpus has {len(documents)} document(s); holding out {len(heldout)} "
                        "leaves none to train on")
    train, test = cap_examples(domain.train, scoring.max_train), cap_examples(domain.test, scoring.max_test)
    missing = sorted({e.label for e in test} - {e.label for e in train})
    if missing:
        raise EvalError(f"{folder}: after capping the train set to {scoring.max_train}, label(s) {missing} of "
                        "the test set have no train example; raise --max-train")
    return PreparedDomain(domain.name, domain, training, heldout, train, test, folder_fingerprint(folder))


def heldout_split(documents: list[str], fraction: float, max_documents: int) -> tuple[list[str], list[str]]:
    """(held-out, training): the held-out documents are the first ceil(fraction * distinct) distinct texts
    (at most max_documents, at least 1) in sha256 order, a choice that does not depend on the corpus' order;
    every copy of a held-out text leaves the training side. Both keep the corpus' order."""
    distinct = list(dict.fromkeys(documents))
    n = max(1, min(max_documents, math.ceil(fraction * len(distinct))))
    chosen = set(sorted(distinct, key=lambda d: _rank(HELDOUT_SALT, d))[:n])
    heldout = [d for d in distinct if d in chosen]
    return heldout, [d for d in documents if d not in chosen]


def cap_examples(examples: Sequence[Example], cap: int) -> list[Example]:
    """At most `cap` examples, balanced across labels: each label's examples in sha256 order, taken in turn
    (one of each label, then the next of each, ...); the result keeps the input order."""
    if len(examples) <= cap:
        return list(examples)
    by_label: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(i)
    queues = [sorted(rows, key=lambda i: _rank(CAP_SALT, examples[i].text, str(i))) for _, rows in
              sorted(by_label.items())]
    picked: list[int] = []
    depth = 0
    while len(picked) < cap:
        picked += [q[depth] for q in queues if depth < len(q)][: cap - len(picked)]
        depth += 1
    return [examples[i] for i in sorted(picked)]


def folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("corpus.txt", "train.jsonl", "test.jsonl", "domain.json"):
        digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()


def _rank(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# 4. metrics: pure functions of a[T][j] (T = 0..N stages, j = 0..N-1 domains in learning order)

Matrix = Sequence[Sequence[float]]


def _check(a: Matrix) -> int:
    """N (domains) of a well-formed (N + 1) x N matrix."""
    n = len(a) - 1
    if n < 1 or any(len(row) != n for row in a):
        raise ValueError(f"a score matrix has N + 1 rows (stages 0..N) of N values (domains); got "
                         f"{[len(row) for row in a]}")
    return n


def final_average(a: Matrix) -> float:
    """Mean over the domains of the scores after the last stage: mean_j a[N][j]."""
    n = _check(a)
    return sum(a[n]) / n


def forgetting_rate(a: Matrix, stage: int | None = None) -> float | None:
    """SPEC-DAS: FR after T stages = mean over the domains learned before the T-th of (a[i, i] - a[T, i]), i.e.
    (0-based) mean over j < T - 1 of (a[j + 1][j] - a[T][j]). None when T < 2 (nothing learned before).
    Positive: the score fell since the domain was learned."""
    n = _check(a)
    t = n if stage is None else stage
    if not 0 <= t <= n:
        raise ValueError(f"stage {t} is outside 0..{n}")
    if t < 2:
        return None
    return sum(a[j + 1][j] - a[t][j] for j in range(t - 1)) / (t - 1)


def plasticity(a: Matrix) -> list[float]:
    """Per domain j: what learning it gave its own task, a[j + 1][j] - a[j][j] (the spec's a[i, i] - a[i-1, i])."""
    n = _check(a)
    return [a[j + 1][j] - a[j][j] for j in range(n)]


def loss_rise(losses: Matrix) -> list[float]:
    """Per domain j learned before the last: held-out MLM loss at the end minus right after its stage,
    L[N][j] - L[j + 1][j] (forgetting in nats; positive = forgot)."""
    n = _check(losses)
    return [losses[n][j] - losses[j + 1][j] for j in range(n - 1)]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "std": std, "n": len(present)}


def mean_matrix(matrices: Sequence[Matrix]) -> list[list[float]]:
    """Element-wise mean of equally shaped matrices (over seeds)."""
    return [[statistics.fmean(m[t][j] for m in matrices) for j in range(len(matrices[0][t]))]
            for t in range(len(matrices[0]))]


def step_costs(step_times: dict[str, Sequence[float]], reference: str = "ncl") -> dict[str, dict[str, Any]]:
    """Per method: the median training step time (s) over every step measured, and its ratio to the
    reference method's median (None without the reference)."""
    medians = {m: statistics.median(times) for m, times in step_times.items() if times}
    ref = medians.get(reference)
    return {m: {"median_step_s": med, f"ratio_to_{reference}": (med / ref if ref else None)}
            for m, med in medians.items()}


def summarise(a_by_seed: Sequence[Matrix]) -> dict[str, Any]:
    """One score family of one method over seeds: final average, FR, plasticity (mean and per domain)."""
    per_seed = [{"final_average": final_average(a), "forgetting_rate": forgetting_rate(a),
                 "plasticity": plasticity(a)} for a in a_by_seed]
    n = len(per_seed[0]["plasticity"])
    return {
        "final_average": mean_std([s["final_average"] for s in per_seed]),
        "forgetting_rate": mean_std([s["forgetting_rate"] for s in per_seed]),
        "plasticity": mean_std([statistics.fmean(s["plasticity"]) for s in per_seed]),
        "plasticity_per_domain": [mean_std([s["plasticity"][j] for s in per_seed]) for j in range(n)],
        "per_seed": per_seed,
    }


def summarise_losses(l_by_seed: Sequence[Matrix]) -> dict[str, Any]:
    """Held-out MLM loss of one method over seeds: the final mean loss, the rise (mean and per domain)."""
    rises = [loss_rise(m) for m in l_by_seed]
    n = len(rises[0])
    return {
        "final_mean_loss": mean_std([final_average(m) for m in l_by_seed]),
        "rise": mean_std([statistics.fmean(r) if r else None for r in rises]),
        "rise_per_domain": [mean_std([r[j] for r in rises]) for j in range(n)],
        "per_seed": [{"final_mean_loss": final_average(m), "rise": r} for m, r in zip(l_by_seed, rises, strict=True)],
    }


def summarise_method(seeds: Sequence[dict[str, Matrix]], families: Sequence[str]) -> dict[str, Any]:
    """results.json's summary of one method, from its per-seed matrices (one dict of family -> a[T, i] per seed)."""
    summary: dict[str, Any] = {family: summarise([s[family] for s in seeds]) for family in families}
    summary["mlm_loss"] = summarise_losses([s["mlm_loss"] for s in seeds])
    summary["mean_matrix"] = {key: mean_matrix([s[key] for s in seeds]) for key in [*families, "mlm_loss"]}
    return summary


# --------------------------------------------------------------------------------------------
# 5. the runner


@dataclass(frozen=True)
class Stage:
    method: Method
    seed: int
    index: int  # T: domains learned; 0 = the base model
    domain: str  # the domain learned in this stage ("base" for stage 0)

    def folder(self, out: Path) -> Path:
        method = "base" if self.index == 0 else self.method.folder
        return out / "runs" / method / f"seed-{self.seed}" / f"stage-{self.index}-{self.domain}"

    def label(self) -> str:
        if self.index == 0:
            return f"base model, seed {self.seed}"
        return f"{self.method.spec}, seed {self.seed}, stage {self.index} ({self.domain})"


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
    `on_train(stage, das_engine.trainer.Progress)` hears the trainer's progress.
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
    from das_engine.fingerprint import base_fingerprint

    settings = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "domains": [{"name": d.name, "fingerprint": d.fingerprint} for d in domains],
        "base_fingerprint": base_fingerprint(plan.base),
        "train": plan.shared_config(),
        "scoring": plan.scoring.compared(),
    }
    path = out / RUN_FILE
    entry = {"argv": list(command) if command is not None else None, "date": _now(),
             "methods": [m.spec for m in plan.methods], "seeds": plan.seeds, "base": plan.base_spec,
             "device": plan.device}
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        differ = _differences(comparable_settings(recorded.get("settings", {})), settings)
        if differ:
            raise EvalError(f"{out} holds an evaluation made with other settings ({'; '.join(differ)}); "
                            "rerun with the same ones to resume, or choose another --out")
        recorded["commands"].append(entry)
        _write_json(path, recorded)
        return
    if out.exists() and not out.is_dir():
        raise EvalError(f"{out} is a file; --out names a folder")
    if out.is_dir() and any(out.iterdir()):
        raise EvalError(f"{out} is not empty and holds no {RUN_FILE}: not an evaluation folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"settings": settings, "base": plan.base_spec, "commands": [entry]})


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
        differ = _differences(made_with[0], other)
        if differ:
            raise EvalError(f"results {index} was made with other settings than results 1 ({'; '.join(differ)}); "
                            "only runs of the same evaluation can be merged")
    merged = {**parts[0], "date": _now(), "settings": made_with[0]["settings"],
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


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def run_base_stage(plan: EvalPlan, stage: Stage, domains: list[PreparedDomain], out: Path) -> None:
    """Stage 0: score the base model. Without fine-tuning the scores do not depend on the seed, so the
    first seed's are copied for the others."""
    first = Stage(stage.method, plan.seeds[0], 0, "base").folder(out) / SCORES_FILE
    if not plan.scoring.finetune and stage.seed != plan.seeds[0] and first.is_file():
        record = json.loads(first.read_text(encoding="utf-8"))
        record.update(seed=stage.seed, copied_from=str(first.relative_to(out)))
    else:
        started = time.perf_counter()
        scores = score_model(plan.base, domains, plan, stage.seed)
        record = {"stage": 0, "domain": None, "method": "base", "seed": stage.seed, "scores": scores,
                  "train": None, "scoring_s": time.perf_counter() - started, "device": plan.device, "date": _now()}
    _write_json(stage.folder(out) / SCORES_FILE, record)


def run_training_stage(plan: EvalPlan, stage: Stage, domains: list[PreparedDomain], out: Path,
                       on_train: Callable[[Stage, Any], None] | None) -> None:
    """Stage T: train from stage T-1's model (and its cumulative importance, if it wrote one) on domain T's
    training documents, then score the new model on every domain. The trainer resumes from its own
    checkpoints and returns a run it already finished without training again."""
    from das_engine.trainer import adapt

    folder = stage.folder(out)
    previous = Stage(stage.method, stage.seed, stage.index - 1, domains[stage.index - 2].name) \
        if stage.index > 1 else None
    base = previous.folder(out) if previous else Path(plan.base)
    if previous and not has_weights(base):
        raise EvalError(f"{base} holds no model (pruned or deleted) and {folder} needs it to train; "
                        f"remove {folder.parent} to recompute this method and seed from its first stage")
    prev_importance = base / IMPORTANCE_FILE if previous and (base / IMPORTANCE_FILE).is_file() else None
    domain = domains[stage.index - 1]
    config = plan.config(stage.method, stage.seed)

    reports: list[float] = []  # perf_counter at each training step's report: step times are their differences

    def progress(p) -> None:
        if p.phase == "train":
            reports.append(time.perf_counter())
        if on_train:
            on_train(stage, p)

    result = adapt(base, domain.training_documents, folder, config, prev_importance=prev_importance,
                   domain=domain.name, device=plan.device, on_progress=progress)
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
             "settings": config.to_dict(), "prev_importance": str(prev_importance) if prev_importance else None}
    started = time.perf_counter()
    scores = score_model(folder, domains, plan, stage.seed)
    record = {"stage": stage.index, "domain": domain.name, "method": stage.method.spec, "seed": stage.seed,
              "scores": scores, "train": train, "scoring_s": time.perf_counter() - started,
              "device": plan.device, "date": _now()}
    _write_json(folder / SCORES_FILE, record)
    if plan.prune_models and previous is not None:
        prune_model(previous.folder(out))


def _weight_files(folder: Path) -> list[Path]:
    """A model folder's weight files (possibly sharded), not its importance files."""
    return [p for p in folder.glob("*.safetensors") if "importance" not in p.name]


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and bool(_weight_files(folder))


def prune_model(folder: Path) -> None:
    """Delete a stage's model weights; its scores, metrics and importance files stay."""
    for path in _weight_files(folder):
        path.unlink()


def score_model(folder: str | Path, domains: list[PreparedDomain], plan: EvalPlan, seed: int) -> dict[str, Any]:
    """Every domain's end-task scores (probe; fine-tuning if asked) and held-out MLM loss, for one model."""
    from das_engine.loading import load_masked_lm
    from das_engine.mlm_head import heldout_mlm_loss

    s = plan.scoring
    mlm_length = plan.shared_config()["max_length"]  # every method's loss on the same blocks
    model, tokenizer = load_masked_lm(folder)
    model.to(plan.device)
    scores: dict[str, Any] = {}
    for d in domains:
        entry: dict[str, Any] = {"probe": probe_scores(model, tokenizer, d, s)}
        if s.finetune:
            entry["finetune"] = finetune_scores(Path(folder), d, s, seed, plan.device)
        entry["mlm_loss"] = heldout_mlm_loss(model, tokenizer, d.heldout_documents, max_length=mlm_length,
                                             batch_size=s.heldout_batch_size, seed=0)
        scores[d.name] = entry
    return scores


def probe_scores(model, tokenizer, domain: PreparedDomain, s: ScoringSettings) -> dict[str, Any]:
    """Logistic regression on the frozen model's pooled features: fit on train, score on test."""
    from das_engine.endtask import ProbeConfig, fit_probe, pooled_features, score
    from das_engine.task_data import label_ids

    labels = domain.domain.labels
    train_x = pooled_features(model, tokenizer, [e.text for e in domain.train], max_length=s.max_length)
    head = fit_probe(train_x, [e.label for e in domain.train], labels,
                     ProbeConfig(l2=s.probe_l2, max_iter=s.probe_max_iter))
    test_x = pooled_features(model, tokenizer, [e.text for e in domain.test], max_length=s.max_length)
    predictions = head(test_x).argmax(-1).tolist()
    found = score(label_ids([e.label for e in domain.test], labels), predictions, len(labels))
    return {"macro_f1": found.macro_f1, "accuracy": found.accuracy, "n": found.n}


def finetune_scores(folder: Path, domain: PreparedDomain, s: ScoringSettings, seed: int,
                    device: str) -> dict[str, Any]:
    """Fine-tune every parameter on the task's train set (seeded), score on its test set."""
    from das_engine.endtask import FinetuneConfig, classify_logits, finetune, score
    from das_engine.task_data import LabeledSet, label_ids

    train = LabeledSet(tuple(e.text for e in domain.train), tuple(e.label for e in domain.train))
    config = FinetuneConfig(lr=s.finetune_lr, epochs=s.finetune_epochs, batch_size=s.finetune_batch_size,
                            max_length=s.max_length, seed=seed)
    started = time.perf_counter()
    model, tokenizer = finetune(folder, train, config, device=device)
    logits = classify_logits(model, tokenizer, [e.text for e in domain.test], max_length=s.max_length)
    names = train.label_names
    found = score(label_ids([e.label for e in domain.test], names), logits.argmax(-1).tolist(), len(names))
    return {"macro_f1": found.macro_f1, "accuracy": found.accuracy, "n": found.n,
            "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------
# collecting results


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
        "format": FORMAT, "format_version": FORMAT_VERSION, "date": _now(),
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


# --------------------------------------------------------------------------------------------
# reports: results.json, results.md, plots

FAMILY_TITLES = {
    "probe/macro_f1": "End tasks, probe on frozen features: macro-F1 (points)",
    "probe/accuracy": "End tasks, probe on frozen features: accuracy (points)",
    "finetune/macro_f1": "End tasks, fine-tuned: macro-F1 (points)",
    "finetune/accuracy": "End tasks, fine-tuned: accuracy (points)",
}


def write_reports(results: dict[str, Any], out: Path) -> None:
    _write_json(out / RESULTS_JSON, results)
    (out / RESULTS_MD).write_text(results_markdown(results), encoding="utf-8")
    for family in results["families"]:
        for spec in results["methods"]:
            heatmap_png(results, spec, family, out / f"heatmap-{family.replace('/', '-')}-{method_folder(spec)}.png")
        summary_png(results, family, out / f"summary-{family.replace('/', '-')}.png")


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    names = results["domains"]
    seeds = len(results["seeds"])
    lines = [f"# DAS evaluation: {' → '.join(names)}", "",
             f"Base `{results['base']}`; methods {', '.join(f'`{m}`' for m in results['methods'])}; "
             f"{seeds} seed(s) ({', '.join(map(str, results['seeds']))}); "
             f"{results['settings']['train']['steps']} steps per domain; {results['date']}.",
             "Values are mean ± sample std over seeds. a[T, i]: task i scored after T domains (T = 0: base model).",
             "FR (forgetting rate): mean over earlier domains of (a[i, i] − a[N, i]), higher = more forgetting. "
             "Plasticity: a[i, i] − a[i−1, i], what learning domain i gave its own task. "
             "MLM-loss rise: held-out loss of domain i at the end minus right after stage i (nats).", ""]
    for family in results["families"]:
        lines += [f"## {FAMILY_TITLES[family]}", "",
                  "| method | final average | FR | plasticity (mean) | " + " | ".join(
                      f"gain {d}" for d in names) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(names)]
        for spec, summary in results["summary"].items():
            s = summary[family]
            lines.append(f"| `{spec}` | {_pm(s['final_average'])} | {_pm(s['forgetting_rate'])} | "
                         f"{_pm(s['plasticity'])} | " + " | ".join(_pm(p) for p in s["plasticity_per_domain"]) + " |")
        lines.append("")
    lines += ["## Held-out MLM loss (nats, on corpus documents never trained on)", "",
              "| method | final mean loss | rise (mean) | " + " | ".join(f"rise {d}" for d in names[:-1]) + " |",
              "|---|---:|---:|" + "---:|" * (len(names) - 1)]
    for spec, summary in results["summary"].items():
        s = summary["mlm_loss"]
        lines.append(f"| `{spec}` | {_pm(s['final_mean_loss'], 3)} | {_pm(s['rise'], 3)} | "
                     + " | ".join(_pm(r, 3) for r in s["rise_per_domain"]) + " |")
    lines += ["", "## Cost", "", "| method | median step (s) | × ncl step | stage wall time (s) |",
              "|---|---:|---:|---:|"]
    for spec, cost in results["cost"].items():
        ratio = cost["ratio_to_ncl"]
        lines.append(f"| `{spec}` | {cost['median_step_s']:.4f} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
                     f"{_pm(cost['stage_wall_time_s'], 1)} |")
    first = results["families"][0]
    lines += ["", f"## a[T, i] per method ({FAMILY_TITLES[first]}, mean over seeds)", ""]
    for spec, summary in results["summary"].items():
        matrix = summary["mean_matrix"][first]
        lines += [f"### `{spec}`", "", "| after stage | " + " | ".join(names) + " | mean |",
                  "|---|" + "---:|" * (len(names) + 1)]
        for t, row in enumerate(matrix):
            label = "0 (base)" if t == 0 else f"{t} ({names[t - 1]})"
            lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row) + f" | {statistics.fmean(row):.2f} |")
        lines.append("")
    lines += ["## Commands", ""] + [f"- `{' '.join(c['argv'])}` ({c['date']})" for c in results["commands"]
                                    if c.get("argv")]
    return "\n".join(lines) + "\n"


def heatmap_png(results: dict[str, Any], spec: str, family: str, path: Path) -> Path:
    """a[T, i] of one method (mean over seeds) as a heatmap with the values written in."""
    from matplotlib.figure import Figure

    matrix = results["summary"][spec]["mean_matrix"][family]
    names = results["domains"]
    fig = Figure(figsize=(1.6 + 1.3 * len(names), 1.4 + 0.6 * len(matrix)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0, vmax=100)
    for t, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, t, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black",
                    fontsize=9)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(matrix)), ["0 base", *(f"{t + 1} {d}" for t, d in enumerate(names))])
    ax.set_xlabel("end task i")
    ax.set_ylabel("after stage T")
    ax.set_title(f"{spec}: {family} (mean of {len(results['seeds'])} seed(s))", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=110)
    return path


def summary_png(results: dict[str, Any], family: str, path: Path) -> Path:
    """Final average and forgetting rate per method, with the std over seeds as error bars."""
    from matplotlib.figure import Figure

    specs = list(results["methods"])
    fig = Figure(figsize=(2.5 + 1.6 * len(specs), 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "final_average", "final average"), (axes[1], "forgetting_rate", "FR")):
        stats = [results["summary"][s][family][key] for s in specs]
        means = [st["mean"] if st["mean"] is not None else 0.0 for st in stats]
        stds = [st["std"] if st["std"] is not None else 0.0 for st in stats]
        ax.bar(range(len(specs)), means, yerr=stds, capsize=4, color="tab:blue" if key == "final_average" else
               "tab:red")
        ax.set_xticks(range(len(specs)), specs, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title} ({family})", fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    """Write by rename: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "EvalError", "EvalPlan", "Method", "PreparedDomain", "ScoringSettings", "Stage", "StageEvent",
    "cap_examples", "collect_results", "final_average", "forgetting_rate", "heldout_split", "loss_rise",
    "make_plan", "mean_matrix", "mean_std", "merge_results", "method_folder", "parse_method", "plasticity",
    "prepare_domain", "run_evaluation", "split_methods", "step_costs", "summarise", "summarise_losses",
    "summarise_method", "write_reports",
]
