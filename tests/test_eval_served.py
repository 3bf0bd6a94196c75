"""`das eval --served`: each domain uploaded to a store of its own through the service's path (gate, merge, swap),
its end task registered before the next arrives, and what the service answers scored along the lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from task_sets import eval_domains
from typer.testing import CliRunner

from das.eval_cli import eval_command
from das_engine import task_scores
from das_engine.served_tasks import load_task_model
from das_eval import EvalError, prepare_domain
from das_eval.plan import ScoringSettings
from das_eval.served import split_for_eval, summarise_lineage
from das_formats.task_data import LabeledSet
from model_store.store import ModelStore
from model_store.tasks import TaskStore
from pipeline.endtasks import Backbone, read_sets

SMALL = ["--steps", "3", "--batch-size", "4", "--max-length", "32", "--importance-samples", "4", "--lr", "5e-3",
         "--set", "importance_batch_size=4", "--seeds", "1"]

app = typer.Typer()
app.command("eval")(eval_command)
app.command("noop")(lambda: None)
runner = CliRunner()


def _served(domains: list[Path], out: Path, *extra: str):
    return runner.invoke(app, ["eval", *map(str, domains), "--out", str(out), "--served", *SMALL, *extra])


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> list[Path]:
    return eval_domains(tmp_path_factory.mktemp("domains"))


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, domains, bert_dir) -> Path:
    out = tmp_path_factory.mktemp("served") / "out"
    result = _served(domains, out, "--methods", "default", "--base", str(bert_dir))
    assert result.exit_code == 0, result.output
    assert "train 3/3" in result.output and "upload 2 (legal): started" in result.output  # progress as it runs
    return out


def test_each_upload_goes_through_the_service_path_and_registers_its_task_before_the_next(served_run, domains):
    results = json.loads((served_run / "served.json").read_text())
    assert results["domains"] == ["code", "legal"]
    lineage = results["methods"]["default"]["seeds"]["0"]
    first, second = lineage["stages"]
    # the code task was registered after the first upload and is served (and gated) from then on
    assert set(first["served"]) == {"code"} and set(second["served"]) == {"code", "legal"}
    assert second["parent"] == first["active"]  # the second upload adapted what was active then
    assert [d["task"] for d in second["gate"]["decisions"]] == ["code"]  # the gate judged the registered task
    assert first["gate"] in (None, {})  # nothing registered yet: nothing to judge
    store = ModelStore.open(served_run / "served" / "default" / "seed-0" / "store")
    versions = {m.id: m for m in store.versions()}
    for stage in (first, second):
        manifest = versions[stage["version"]]
        assert manifest.domain == stage["domain"]
        assert manifest.request_id == f"served-{stage['stage']}-{stage['domain']}"
        assert manifest.settings["softmask"] is True  # `default` is what an upload gets: it soft-masks
    accepted = [s["version"] for s in (first, second) if s["accepted"]]
    assert store.active_id() == (accepted[-1] if accepted else "v0001") == second["active"]
    # each task's eval set (the gate's evidence) comes from its train split, never from the test split
    tasks = TaskStore(store)
    for folder in domains:
        domain = prepare_domain(folder, ScoringSettings())
        train, evals = read_sets(tasks, tasks.definition(domain.name))
        assert not set(evals.texts) & set(domain.test.texts) and not set(evals.texts) & set(train.texts)
        assert len(train) + len(evals) == len(domain.train)


def test_served_scores_are_what_the_active_version_answers(served_run, domains):
    lineage = json.loads((served_run / "served.json").read_text())["methods"]["default"]["seeds"]["0"]
    last = lineage["stages"][-1]
    store = ModelStore.open(served_run / "served" / "default" / "seed-0" / "store")
    assert store.active_id() == last["active"]
    tasks = TaskStore(store)
    backbone = Backbone.load(store.model_dir(last["active"]))
    for folder in domains:
        domain = prepare_domain(folder, ScoringSettings())
        definition = tasks.definition(domain.name)
        model = tasks.sound_model(last["active"], domain.name, definition.generation)
        head = load_task_model(tasks.model_dir(model), "probe")
        predicted = head(backbone.features(f"{domain.name}/test", domain.test.texts)).argmax(-1).tolist()
        truth = [model.labels.index(y) for y in domain.test.labels]
        assert last["served"][domain.name]["macro_f1"] == pytest.approx(
            task_scores.score(truth, predicted, len(model.labels)).macro_f1, abs=1e-3)
        assert last["served"][domain.name]["model_of"] == last["active"]


def test_a_rerun_resumes_and_other_settings_are_refused(served_run, domains, bert_dir):
    stage_file = served_run / "served" / "default" / "seed-0" / "stage-2-legal.json"
    before = stage_file.read_bytes()
    stage_file.unlink()  # the second upload's record lost after it was published: not trained again
    result = _served(domains, served_run, "--methods", "default", "--base", str(bert_dir))
    assert result.exit_code == 0, result.output
    again = json.loads(stage_file.read_text())
    assert again["version"] == json.loads(before)["version"]
    store = ModelStore.open(served_run / "served" / "default" / "seed-0" / "store")
    assert len(store.versions()) == 3  # base + two uploads: the rerun published nothing new
    refused = _served(domains, served_run, "--methods", "default", "--base", str(bert_dir), "--gate-max-drop", "5")
    assert refused.exit_code != 0 and "gate_max_drop" in refused.output


def test_served_view_refuses_what_it_cannot_do(domains, bert_dir, tmp_path):
    for extra, message in ((["--methods", "base"], "needs a trained method"),
                           (["--methods", "default", "--finetune"], "cannot be combined with --finetune")):
        result = _served(domains, tmp_path / "x", *extra, "--base", str(bert_dir))
        assert result.exit_code != 0 and message in result.output
    plain = runner.invoke(app, ["eval", *map(str, domains), "--out", str(tmp_path / "y"), "--gate-max-drop", "2"])
    assert plain.exit_code != 0 and "add --served" in plain.output


def test_a_lineage_summary_counts_refusals_drops_and_the_gain_of_accepted_uploads():
    def stage(i, name, accepted, parent, served, losses):
        return {"stage": i, "domain": name, "accepted": accepted, "version": f"v{i + 1}", "parent": parent,
                "served": served, "mlm_loss": dict(zip("abc", losses, strict=True))}

    stages = [stage(1, "a", True, "v1", {"a": {"macro_f1": 80.0}}, [2.0, 3.5, 2.4]),
              stage(2, "b", False, "v2", {"a": {"macro_f1": 80.0}, "b": {"macro_f1": 60.0}}, [2.6, 1.9, 2.6]),
              stage(3, "c", True, "v2", {"a": {"macro_f1": 77.5}, "b": {"macro_f1": 65.0}, "c": {"macro_f1": 50.0}},
                    [2.1, 3.3, 1.0])]
    summary = summarise_lineage(stages, ["a", "b", "c"], {"a": 3.0, "b": 4.0, "c": 2.5})
    assert summary["accepted"] == 2 and summary["refused"] == ["b"]
    # the gain is against the parent each upload adapted: the base for the first, v2 (not the refused v3) for c
    assert summary["gain"] == {"a": pytest.approx(3.0 - 2.0), "c": pytest.approx(2.4 - 1.0)}
    assert summary["tasks"]["a"]["drop"] == pytest.approx(2.5) and summary["tasks"]["b"]["drop"] == 0
    assert summary["max_drop"] == pytest.approx(2.5)
    assert summary["final_average"] == pytest.approx((77.5 + 65 + 50) / 3)


def test_the_eval_split_keeps_every_label_on_both_sides_and_is_stable():
    data = LabeledSet(tuple(f"text {i}" for i in range(23)), tuple("x" if i < 20 else "y" for i in range(23)))
    train, evals = split_for_eval(data, 0.2)
    assert sorted(set(train.labels)) == sorted(set(evals.labels)) == ["x", "y"]
    assert sum(y == "x" for y in evals.labels) == 4 and sum(y == "y" for y in evals.labels) == 1
    assert split_for_eval(data, 0.2) == (train, evals) and not set(train.texts) & set(evals.texts)
    with pytest.raises(EvalError, match="cannot be split"):
        split_for_eval(LabeledSet(("a", "b", "c"), ("x", "x", "y")), 0.2)


def test_a_damaged_record_of_the_served_view_is_refused_naming_it(served_run, domains, bert_dir):
    for name in ("base-mlm.json", "served/default/seed-0/stage-1-code.json"):
        damaged = served_run / name
        kept = damaged.read_bytes()
        damaged.write_text("{broken", encoding="utf-8")
        try:
            result = _served(domains, served_run, "--methods", "default", "--base", str(bert_dir))
        finally:
            damaged.write_bytes(kept)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{damaged} is not" in said and "not valid JSON" in said, result.output
        assert f"remove {damaged} and rerun the same command" in said and "Traceback" not in said
