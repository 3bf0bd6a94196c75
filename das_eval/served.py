"""`das eval --served`: the evaluation's domains arriving at the service, one upload at a time, as a user lives it.

For each trained method and seed, a store of its own starts from the base model. Then, for each domain in order:

1. its training documents are uploaded and adapted by the service's own path (`pipeline.adaptation.adapt_version`:
   replay and merge_auto over the lineage, the forgetting gate against every registered task's best, the swap);
2. its end task is registered as a service task (a probe; the train split cut into the task's train and eval
   sets, so the gate never sees the test split) and fitted on the active version, before the next domain arrives;
3. every registered task is answered as the service answers it (the active version's pooled features through the
   task's published probe) on its test split, and the candidate's held-out LM loss is taken on every domain (MLM
   for a masked base, next-token for a causal one: `loss_kind`; the records keep it under `mlm_loss`).

What it reports: which uploads the gate refused, each registered task's served macro-F1 along the lineage against
its best, and the new-domain gain of the uploads accepted (held-out loss on the parent the upload adapted minus
on the new version).

The evaluation's domains, held-out slices and plan, with the pipeline's own workflows (`pipeline`): no HTTP, queue
or job record is involved, and the adaptations are the ones a job runs.

Layout of OUT (its own kind of folder: `served.json` settings, never mixed with a probe evaluation):

    served-run.json                                 settings, commands
    base-mlm.json                                   the base model's held-out loss per domain (MLM or next-token)
    served/METHOD/seed-S/store/                     the lineage's store (versions, corpora, tasks)
    served/METHOD/seed-S/stage-T-DOMAIN.json        one upload's record; written last: the stage is done
    served.json, served.md, served.png
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_eval.files import LOSS_KINDS, LOSS_NAMES, LossKind, loss_kind, now, read_json, write_json
from das_eval.methods import EvalError, Method
from das_eval.metrics import mean_std
from das_eval.plan import EvalPlan
from das_eval.scoring import PreparedDomain, prepare_domain
from das_formats.task_data import LabeledSet, TaskSettings

RUN_FILE = "served-run.json"
BASE_FILE = "base-mlm.json"
RESULTS_FILE = "served.json"
EVAL_SALT = "das-served-eval"


@dataclass(frozen=True)
class ServedSettings:
    gate_max_drop: float  # points of macro-F1 a registered task may lose against its best (das_settings)
    eval_fraction: float = 0.2  # share of each task's train split registered as its eval set (the gate's evidence)

    def __post_init__(self) -> None:
        if not 0 <= self.gate_max_drop <= 100:
            raise EvalError(f"gate_max_drop must be within 0..100 points, got {self.gate_max_drop}")
        if not 0 < self.eval_fraction < 1:
            raise EvalError(f"the eval fraction must be in (0, 1), got {self.eval_fraction}")


def run_served_view(plan: EvalPlan, out: Path, served: ServedSettings, *, command: list[str] | None = None,
                    on_event: Callable[[str], None] | None = None,
                    on_train: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run (or resume) every trained method's lineage through the service path; write and return served.json.

    `on_event` hears a line per upload started and done; `on_train` the trainer's progress
    (das_engine.run_state.Progress)."""
    say = on_event or (lambda _: None)
    if plan.scoring.finetune:
        raise EvalError("--served registers probe tasks (the gate's kind) and cannot be combined with --finetune")
    methods = [m for m in plan.methods if m.trains]
    if not methods:
        raise EvalError("--served needs a trained method (e.g. --methods default); `base` never uploads")
    out = Path(out)
    domains = [prepare_domain(folder, plan.scoring) for folder in plan.domains]
    _check_folder(out, plan, domains, served, command)
    base_losses = _base_losses(plan, domains, out, say)
    for seed in plan.seeds:
        for method in methods:
            for index in range(1, len(domains) + 1):
                stage_file = _stage_file(out, method, seed, index, domains[index - 1].name)
                if stage_file.is_file():
                    continue
                label = f"{method.spec}, seed {seed}, upload {index} ({domains[index - 1].name})"
                say(f"{label}: started")
                started = time.perf_counter()
                record = run_upload(plan, served, method, seed, domains, index, out, on_train)
                record["seconds"] = round(time.perf_counter() - started, 1)
                write_json(stage_file, record)
                say(f"{label}: {record['status']} as {record['version']} in {record['seconds']:.0f} s")
    results = collect_served(plan, served, domains, base_losses, out)
    write_json(out / RESULTS_FILE, results)
    (out / "served.md").write_text(served_markdown(results), encoding="utf-8")
    plot_served(results, out / "served.png")
    return results


# ------------------------------------------------------------------ one upload, as the service takes it
def run_upload(plan: EvalPlan, served: ServedSettings, method: Method, seed: int, domains: list[PreparedDomain],
               index: int, out: Path, on_train: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Upload domain `index` (1-based) to the lineage's store, register its task, and score what is served."""
    from model_store.store import ModelStore
    from pipeline.adaptation import adapt_version
    from pipeline.outcomes import GateRejected

    lineage = out / "served" / method.folder / f"seed-{seed}"
    store = ModelStore.open(lineage / "store")
    if not store.versions():
        store.init_base(Path(plan.base), plan.base_spec)
    domain = domains[index - 1]
    request_id = f"served-{index}-{domain.name}"
    manifest = store.find_by_request(request_id)  # a stage published before a crash is not trained again
    if manifest is None:
        corpus_file = lineage / f"corpus-{domain.name}.jsonl"
        corpus_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in domain.training_documents),
                               encoding="utf-8")
        corpus = store.blobs.put_corpus(corpus_file, len(domain.training_documents), filename=corpus_file.name)
        parent = store.active_id()
        try:
            manifest = adapt_version(store, parent, corpus, domain.name, plan.config(method, seed),
                                     work_dir=lineage / "work", documents=domain.training_documents,
                                     device=plan.device, gate_max_drop=served.gate_max_drop, request_id=request_id,
                                     on_progress=on_train)
        except GateRejected as err:
            manifest = store.manifest(err.version)
    register_task(store, domain, served, plan.device)
    active = store.active_id()
    return {"stage": index, "domain": domain.name, "method": method.spec, "seed": seed, "version": manifest.id,
            "parent": manifest.parent, "status": manifest.status, "accepted": manifest.status == "active",
            "active": active, "gate": manifest.evaluation.get("gate"), "merge": manifest.metrics.get("merge"),
            "mlm_loss": heldout_losses(store.model_dir(manifest.id), domains, plan),
            "loss_kind": base_loss_kind(plan),
            "served": served_scores(store, active, domains[:index], plan.device), "date": now()}


def register_task(store: Any, domain: PreparedDomain, served: ServedSettings, device: str) -> None:
    """Register the domain's end task (as `das task add` does) and fit it on the active version."""
    from model_store.tasks import TaskStore
    from pipeline.endtasks import fit_task_model
    from pipeline.task_intake import store_task_data

    tasks = TaskStore(store)
    if not tasks.exists(domain.name):
        train, evals = split_for_eval(domain.train, served.eval_fraction)
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for name, data in (("train", train), ("eval", evals)):
                path = Path(tmp) / f"{domain.name}-{name}.jsonl"
                path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                        for t, y in zip(data.texts, data.labels, strict=True)), encoding="utf-8")
                files.append((path, data, path.name))
            definition = store_task_data(store, domain.name, "probe", TaskSettings(), files[0], files[1])
            tasks.put_definition(definition)
    fit_task_model(store, tasks.definition(domain.name), store.active_id(), device=device)


def split_for_eval(data: LabeledSet, fraction: float) -> tuple[LabeledSet, LabeledSet]:
    """(train, eval): per label, the `fraction` of its examples whose hashed text sorts first go to eval (at least
    one, and at least one stays), so every label is in both and the split is the same on every machine."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_label.setdefault(label, []).append(i)
    held: set[int] = set()
    for rows in by_label.values():
        if len(rows) < 2:
            raise EvalError(f"label of {len(rows)} example cannot be split into train and eval; raise --max-train")
        rows = sorted(rows, key=lambda i: hashlib.sha256(f"{EVAL_SALT}\0{data.texts[i]}".encode()).hexdigest())
        held.update(rows[:min(len(rows) - 1, max(1, round(len(rows) * fraction)))])

    def pick(keep: bool) -> LabeledSet:
        rows = [i for i in range(len(data)) if (i in held) != keep]
        return LabeledSet(tuple(data.texts[i] for i in rows), tuple(data.labels[i] for i in rows))

    return pick(True), pick(False)


def served_scores(store: Any, version: str, domains: list[PreparedDomain], device: str) -> dict[str, Any]:
    """Each registered task's answers on its test split, as the service gives them on `version`: the version's pooled
    features (truncated as served) through the task's published probe. Macro-F1 and accuracy in points, and the
    eval-set macro-F1 the store recorded when it was fitted."""
    from das_engine import task_scores
    from das_engine.served_tasks import load_task_model
    from model_store.tasks import TaskStore
    from pipeline.endtasks import Backbone

    tasks = TaskStore(store)
    backbone = Backbone.load(store.model_dir(version), device)
    scores = {}
    for domain in domains:
        definition = tasks.definition(domain.name)
        model = tasks.sound_model(version, definition.name, definition.generation)
        if model is None:
            raise EvalError(f"task {domain.name} has no model on {version}: the service would not serve it")
        head = load_task_model(tasks.model_dir(model), "probe")
        features = backbone.features(f"{domain.name}/test", domain.test.texts)
        predicted = head(features).argmax(-1).tolist()
        truth = [model.labels.index(label) for label in domain.test.labels]
        result = task_scores.score(truth, predicted, len(model.labels))
        scores[domain.name] = {"macro_f1": round(result.macro_f1, 3), "accuracy": round(result.accuracy, 3),
                               "n": result.n, "eval_macro_f1": model.scores.get("macro_f1"), "model_of": model.version}
    return scores


def heldout_losses(folder: Path, domains: list[PreparedDomain], plan: EvalPlan) -> dict[str, float]:
    """The model's held-out LM loss on every domain (`base_loss_kind`: MLM or next-token), as `das eval` scores it."""
    from das_engine.loading import load_lm
    from das_engine.mlm_head import heldout_loss

    model, tokenizer, _ = load_lm(folder)
    model.to(plan.device)
    length = plan.shared_config()["max_length"]
    return {d.name: heldout_loss(model, tokenizer, d.heldout_documents, max_length=length,
                                 batch_size=plan.scoring.heldout_batch_size, seed=0) for d in domains}


def base_loss_kind(plan: EvalPlan) -> LossKind:
    """The held-out loss every version of the plan's lineages is scored on: its base's kind (a lineage keeps it)."""
    from das_engine.loading import lm_kind

    return LOSS_KINDS[lm_kind(plan.base)]


def _base_losses(plan: EvalPlan, domains: list[PreparedDomain], out: Path, say: Callable[[str], None]
                 ) -> dict[str, float]:
    path = out / BASE_FILE
    if path.is_file():
        return read_json(path, what="the base model's held-out losses", fix=f"remove {path} and rerun the same "
                         "command to measure them again")
    say(f"base model: held-out {LOSS_NAMES[base_loss_kind(plan)]}")
    losses = heldout_losses(Path(plan.base), domains, plan)
    write_json(path, losses)
    return losses


def _stage_file(out: Path, method: Method, seed: int, index: int, domain: str) -> Path:
    return out / "served" / method.folder / f"seed-{seed}" / f"stage-{index}-{domain}.json"


def _check_folder(out: Path, plan: EvalPlan, domains: list[PreparedDomain], served: ServedSettings,
                  command: list[str] | None) -> None:
    """Write served-run.json for a new folder; refuse an existing one made with other settings (or another kind)."""
    from das_eval.runner import open_run_folder
    from das_formats.fingerprint import base_fingerprint

    settings = {"domains": [{"name": d.name, "fingerprint": d.fingerprint} for d in domains],
                "base_fingerprint": base_fingerprint(plan.base), "train": plan.shared_config(),
                "scoring": plan.scoring.compared(), "gate_max_drop": served.gate_max_drop,
                "eval_fraction": served.eval_fraction}
    entry = {"argv": command, "date": now(), "methods": [m.spec for m in plan.methods], "seeds": plan.seeds}
    open_run_folder(out, RUN_FILE, settings, entry, plan.base_spec, what="a served view")


# ------------------------------------------------------------------ results
def collect_served(plan: EvalPlan, served: ServedSettings, domains: list[PreparedDomain],
                   base_losses: dict[str, float], out: Path) -> dict[str, Any]:
    """Every finished lineage's records, and per method and seed: uploads accepted, each task's final served score
    against its best along the lineage, and the gain of the accepted uploads."""
    names = [d.name for d in domains]
    lineages: dict[str, dict[str, Any]] = {}
    for method in (m for m in plan.methods if m.trains):
        per_seed = {}
        for seed in plan.seeds:
            files = [_stage_file(out, method, seed, i, n) for i, n in enumerate(names, start=1)]
            if not all(f.is_file() for f in files):
                continue
            stages = [read_json(f, what="a served stage's record", fix=f"remove {f} and rerun the same command to "
                                "record that upload again (its published version is found, not trained again)")
                      for f in files]
            per_seed[str(seed)] = {"stages": stages, "summary": summarise_lineage(stages, names, base_losses)}
        if per_seed:
            lineages[method.spec] = {"seeds": per_seed, "summary": _over_seeds(per_seed)}
    return {"format": "das-served-view", "date": now(), "domains": names, "base": plan.base_spec,
            "gate_max_drop": served.gate_max_drop, "eval_fraction": served.eval_fraction,
            "base_mlm_loss": base_losses, "loss_kind": base_loss_kind(plan), "methods": lineages}


def summarise_lineage(stages: list[dict[str, Any]], names: list[str], base_losses: dict[str, float]
                      ) -> dict[str, Any]:
    """One lineage: uploads accepted; per task, its best served macro-F1 on the lineage, its final one and the drop
    (best - final, points); per accepted upload, the new domain's gain: its held-out loss (MLM or next-token) on the
    parent the upload adapted minus on the new version (nats; `das_eval.metrics.mlm_gain`'s definition)."""
    accepted = [s for s in stages if s["accepted"]]
    losses = {s["version"]: s["mlm_loss"] for s in stages}  # a parent that is no upload's version is the base
    tasks = {}
    for name in names:
        along = [s["served"][name]["macro_f1"] for s in stages if name in s["served"]]
        tasks[name] = {"best": max(along), "final": along[-1], "drop": max(along) - along[-1], "along": along}
    gains = {s["domain"]: losses.get(s["parent"], base_losses)[s["domain"]] - s["mlm_loss"][s["domain"]]
             for s in accepted}
    return {"uploads": len(stages), "accepted": len(accepted),
            "refused": [s["domain"] for s in stages if not s["accepted"]], "tasks": tasks, "gain": gains,
            "max_drop": max(t["drop"] for t in tasks.values()),
            "final_average": statistics.fmean(t["final"] for t in tasks.values())}


def _over_seeds(per_seed: dict[str, Any]) -> dict[str, Any]:
    summaries = [s["summary"] for s in per_seed.values()]
    return {"seeds": len(summaries), "accepted": mean_std([s["accepted"] for s in summaries]),
            "max_drop": mean_std([s["max_drop"] for s in summaries]),
            "final_average": mean_std([s["final_average"] for s in summaries])}


def served_markdown(results: dict[str, Any]) -> str:
    names = results["domains"]
    lines = [f"# Served view: {', '.join(names)} uploaded in order to the service (base {results['base']})", "",
             f"Forgetting gate: a registered task may lose at most {results['gate_max_drop']} points of eval-set "
             f"macro-F1 (beyond the eval set's noise) against its best on the lineage; each task's eval set is "
             f"{results['eval_fraction']:.0%} of its train split. Served scores: macro-F1 on the test split, "
             f"answered as the service answers (points). Gain: the new domain's held-out "
             f"{LOSS_NAMES[loss_kind(results)]} on the version the upload adapted minus on the new one.", ""]
    for spec, entry in results["methods"].items():
        s = entry["summary"]
        lines += [f"## `{spec}` ({s['seeds']} seed(s))", "",
                  f"Uploads accepted: {s['accepted']['mean']:.2f} ± {s['accepted']['std']:.2f} of {len(names)}; "
                  f"largest drop of a task below its best: {s['max_drop']['mean']:.2f} ± {s['max_drop']['std']:.2f} "
                  f"points; final served average {s['final_average']['mean']:.2f} ± "
                  f"{s['final_average']['std']:.2f}.", ""]
        for seed, lineage in entry["seeds"].items():
            lines += [f"### seed {seed}", "",
                      "| upload | version | status | merge share | gain (nats) | "
                      + " | ".join(f"{n} served" for n in names) + " |",
                      "|---|---|---|---:|---:|" + "---:|" * len(names)]
            for st in lineage["stages"]:
                share = (st.get("merge") or {}).get("alpha")
                gain = lineage["summary"]["gain"].get(st["domain"])
                cells = [f"{st['served'][n]['macro_f1']:.2f}" if n in st["served"] else "" for n in names]
                lines.append(f"| {st['stage']} {st['domain']} | {st['version']} | {st['status']} | "
                             f"{'' if share is None else f'{share:.2f}'} | "
                             f"{'refused' if gain is None else f'{gain:.3f}'} | " + " | ".join(cells) + " |")
            drops = ", ".join(f"{n} {t['drop']:.2f}" for n, t in lineage["summary"]["tasks"].items())
            lines += ["", f"Drop below best (points): {drops}.", ""]
    return "\n".join(lines) + "\n"


def plot_served(results: dict[str, Any], path: Path) -> None:
    """Each registered task's served macro-F1 along the lineage (mean over seeds), one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    if not methods:
        return
    names = results["domains"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, (spec, entry) in zip(axes[0], methods.items(), strict=True):
        for i, name in enumerate(names):
            rows = [lineage["summary"]["tasks"][name]["along"] for lineage in entry["seeds"].values()]
            xs = list(range(i + 1, len(names) + 1))
            ax.plot(xs, [statistics.fmean(r[k] for r in rows) for k in range(len(xs))], marker="o", label=name)
        for lineage in entry["seeds"].values():
            for st in lineage["stages"]:
                if not st["accepted"]:
                    ax.axvline(st["stage"], color="grey", alpha=0.2, linestyle=":")
        ax.set_xticks(range(1, len(names) + 1), [f"{i}:{n}" for i, n in enumerate(names, start=1)])
        ax.set_title(f"{spec} (dotted: an upload refused)", fontsize=9)
        ax.set_xlabel("after upload")
        ax.set_ylabel("served macro-F1, test (points)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
