"""`das eval`: the metrics by hand, method names, the held-out slice, and whole runs on two tiny real domains
(complete matrix and reports, reuse of finished stages, resume after an interruption, refusal of other settings)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import typer
from task_sets import eval_domains
from typer.testing import CliRunner

import das_eval
from das import eval_cli
from das.eval_cli import eval_command
from das_data.domain_folder import Example
from das_data.splits import cap_balanced
from das_eval import (
    EvalError,
    final_average,
    forgetting_rate,
    loss_rise,
    make_plan,
    mean_std,
    parse_method,
    plasticity,
    run_evaluation,
    step_costs,
)
from das_eval import (
    runner as eval_runner,
)

METHODS = "base,ncl,das"
# a high learning rate, so that three steps move the scores (and the checks below are not 0 == 0)
CLI_SMALL = ["--steps", "3", "--batch-size", "4", "--max-length", "32", "--importance-samples", "4", "--lr", "5e-3",
             "--set", "importance_batch_size=4"]
PLAN_TRAIN = {"steps": 3, "batch_size": 4, "max_length": 32, "importance_samples": 4, "lr": 5e-3,
              "importance_batch_size": 4}

app = typer.Typer()
app.command("eval")(eval_command)
app.command("noop")(lambda: None)  # two commands: `eval` stays a subcommand, as under `das`
cli_runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# metrics, by hand

# 3 domains; row T = after T domains (row 0 = the base model), column j = domain j's task
A = [[50.0, 40.0, 30.0],
     [70.0, 42.0, 31.0],
     [60.0, 65.0, 29.0],
     [55.0, 61.0, 80.0]]


def test_forgetting_rate_final_average_and_plasticity_by_hand():
    # FR after 3 stages: domains 1 and 2 (1-based) learned earlier: ((70 - 55) + (65 - 61)) / 2 = 9.5
    assert forgetting_rate(A) == pytest.approx(9.5)
    assert forgetting_rate(A, stage=2) == pytest.approx(70 - 60)  # only domain 1 before stage 2
    assert forgetting_rate(A, stage=1) is None and forgetting_rate(A, stage=0) is None
    assert final_average(A) == pytest.approx((55 + 61 + 80) / 3)
    assert plasticity(A) == pytest.approx([70 - 50, 65 - 42, 80 - 29])
    # an LM that never moves: no forgetting, no gain
    flat = [A[0]] * 4
    assert forgetting_rate(flat) == 0 and plasticity(flat) == [0, 0, 0]
    # improving on earlier tasks is negative forgetting (backward transfer)
    assert forgetting_rate([[0, 0], [10, 0], [20, 5]]) == pytest.approx(-10)
    with pytest.raises(ValueError, match="N \\+ 1 rows"):
        forgetting_rate([[1.0, 2.0], [3.0, 4.0]])


def test_loss_rise_and_statistics_by_hand():
    losses = [[4.0, 5.0, 6.0], [2.0, 5.5, 6.1], [2.6, 3.0, 6.2], [2.9, 3.4, 3.1]]
    assert loss_rise(losses) == pytest.approx([2.9 - 2.0, 3.4 - 3.0])  # the last domain has nothing after it
    assert loss_rise([[1.0], [0.5]]) == []
    stat = mean_std([1.0, 2.0, None, 4.0])
    assert stat["mean"] == pytest.approx(7 / 3) and stat["n"] == 3
    assert stat["std"] == pytest.approx((((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5)
    assert mean_std([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1} and mean_std([None])["mean"] is None
    costs = step_costs({"ncl": [0.1, 0.3, 0.2], "das": [0.5, 0.4, 0.9, 0.6]})
    assert costs["ncl"]["median_step_s"] == pytest.approx(0.2)
    assert costs["das"]["ratio_to_ncl"] == pytest.approx(0.55 / 0.2)
    assert step_costs({"das": [1.0]})["das"]["ratio_to_ncl"] is None


def test_method_names_settings_and_folders():
    grad = parse_method("das:mask_mode=grad,contrastive_weight=0,max_grad_norm=none")
    assert grad.kind == "das" and grad.overrides == {"mask_mode": "grad", "contrastive_weight": 0.0,
                                                     "max_grad_norm": None}
    assert grad.folder == "das+mask_mode-grad+contrastive_weight-0+max_grad_norm-none"
    assert parse_method("base").trains is False and parse_method("das").overrides == {}
    assert das_eval.split_methods("base,das:mask_mode=grad,negative_rule=abs,ncl") == [
        "base", "das:mask_mode=grad,negative_rule=abs", "ncl"]
    for bad, message in (("bert", "unknown kind"), ("das:nope=1", "not a DASConfig field"),
                         ("das:mask_mode=sideways", "must be one of grad, update"),
                         ("das:lr=7", "lr must be in"), ("das:steps=many", "not a valid int"),
                         ("base:lr=1e-3", "takes no settings"), ("das:seed=3", "set by --seeds")):
        with pytest.raises(EvalError, match=message):
            parse_method(bad)


def test_ncl_is_plain_mlm_and_checked_by_dasconfig():
    assert parse_method("ncl").overrides == {"softmask": False}
    # settings that only DAS reads are accepted and ignored by plain MLM (DASConfig's rule)
    ncl = make_plan([Path("a")], "ncl:protect_embeddings=true", 1, base="b").methods[0]
    assert ncl.overrides == {"softmask": False, "protect_embeddings": True}


def test_heldout_slice_and_caps_are_fixed_and_disjoint():
    docs = [f"document number {i}" for i in range(100)] + ["document number 3"]  # one text twice
    held, train = das_eval.heldout_split(docs, 0.05, 200)
    assert len(held) == 5 and not set(held) & set(train) and len(held) + len(train) <= len(docs)
    assert das_eval.heldout_split(list(reversed(docs)), 0.05, 200)[0] == sorted(held, key=docs.index)[::-1]
    assert len(das_eval.heldout_split(docs, 0.5, 7)[0]) == 7
    examples = [Example(f"text {i}", "a" if i < 90 else "b") for i in range(100)]
    capped = cap_balanced(examples, 20, 0, "das-eval-cap")
    assert len(capped) == 20 and sum(e.label == "b" for e in capped) == 10  # balanced while labels last


# ---------------------------------------------------------------------------------------------
# whole runs on two tiny real domains


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> list[Path]:
    return eval_domains(tmp_path_factory.mktemp("domains"))


def _cli(domains: list[Path], out: Path, *extra: str, methods: str = METHODS, seeds: int = 2):
    return cli_runner.invoke(app, ["eval", *map(str, domains), "--out", str(out), "--methods", methods,
                               "--seeds", str(seeds), *CLI_SMALL, *extra])


class Interrupted(Exception):
    pass


@dataclasses.dataclass
class Finished:
    out: Path
    first: object  # the interrupted invocation's CliRunner result
    done_when_interrupted: list[str]  # stage folders (relative to out) with scores after the interruption
    resumed: list[str]  # stage labels the second invocation computed


@pytest.fixture(scope="module")
def finished(tmp_path_factory, domains, bert_dir) -> Finished:
    """One run through the CLI, interrupted by its progress hook after the first trained stage, then resumed
    by the same command."""
    out = tmp_path_factory.mktemp("eval") / "out"
    real_print = eval_cli._print_stage

    def interrupt_after_stage_1(event):
        real_print(event)
        if event.phase == "done" and event.stage.index == 1:
            raise Interrupted

    resumed: list[str] = []

    def record(event):
        real_print(event)
        if event.phase == "done":
            resumed.append(event.stage.label())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_cli, "_print_stage", interrupt_after_stage_1)
        first = _cli(domains, out, "--base", str(bert_dir))
        done = sorted(str(p.parent.relative_to(out)) for p in out.glob("runs/*/*/*/scores.json"))
        patch.setattr(eval_cli, "_print_stage", record)
        second = _cli(domains, out, "--base", str(bert_dir))
    assert second.exit_code == 0, second.output
    return Finished(out, first, done, resumed)


def test_a_run_writes_a_complete_matrix_and_its_reports(finished, domains, bert_dir):
    finished = finished.out
    results = json.loads((finished / "results.json").read_text())
    methods = das_eval.split_methods(METHODS)
    assert list(results["methods"]) == methods and results["seeds"] == [0, 1]
    assert results["domains"] == ["code", "legal"]
    for method in methods:
        for seed in ("0", "1"):
            entry = results["scores"][method][seed]
            for family in ("probe/macro_f1", "probe/accuracy", "mlm_loss"):
                matrix = entry[family]
                assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)  # stages 0..2 x 2 domains
                assert all(isinstance(v, float) and v == v for row in matrix for v in row)
            a = entry["probe/macro_f1"]
            fr = a[1][0] - a[2][0]  # FR after 2 stages: the first domain, right after its stage minus at the end
            assert results["summary"][method]["probe/macro_f1"]["per_seed"][int(seed)]["forgetting_rate"] \
                == pytest.approx(fr)
            if method == "base":
                assert a[0] == a[1] == a[2]
            else:
                assert entry["mlm_loss"][0] != entry["mlm_loss"][1] != entry["mlm_loss"][2]  # trained: it moved
    moved = [results["scores"][m][s]["probe/macro_f1"] for m in methods[1:] for s in ("0", "1")]
    assert any(a[1][0] != a[2][0] for a in moved)  # some FR is not 0, so the check above has teeth
    # the mean over seeds, as results.json reports it, from its own matrices
    das = results["summary"]["das"]["probe/macro_f1"]["forgetting_rate"]
    frs = [results["scores"]["das"][s]["probe/macro_f1"][1][0] - results["scores"]["das"][s]["probe/macro_f1"][2][0]
           for s in ("0", "1")]
    assert das["mean"] == pytest.approx(sum(frs) / 2)
    assert das["std"] == pytest.approx(abs(frs[0] - frs[1]) / 2 ** 0.5)
    # every stage folder holds a model and its scores; stage 0 is the base model, scored per seed
    for seed in (0, 1):
        assert (finished / "runs" / "base" / f"seed-{seed}" / "stage-0-base" / "scores.json").is_file()
        for method in methods[1:]:
            for stage in ("stage-1-code", "stage-2-legal"):
                folder = finished / "runs" / das_eval.method_folder(method) / f"seed-{seed}" / stage
                assert (folder / "scores.json").is_file() and (folder / "model.safetensors").is_file()
    seed1_base = json.loads((finished / "runs" / "base" / "seed-1" / "stage-0-base" / "scores.json").read_text())
    assert seed1_base["copied_from"] == "runs/base/seed-0/stage-0-base/scores.json"  # the probe draws nothing random
    # the second stage trained from the first one's model and importance
    stage2 = json.loads((finished / "runs" / "das" / "seed-0" / "stage-2-legal" / "scores.json").read_text())
    assert stage2["train"]["prev_importance"].endswith("stage-1-code/importance.safetensors")
    assert stage2["train"]["settings"]["steps"] == 3 and stage2["train"]["settings"]["batch_size"] == 4
    # cost: every trained method has a median step time and its ratio to ncl's (the reference when present)
    reference = "ratio_to_ncl"
    for method in methods[1:]:
        cost = results["cost"][method]
        assert cost["median_step_s"] > 0
        assert cost[reference] == pytest.approx(cost["median_step_s"] / results["cost"]["ncl"]["median_step_s"])
    assert "base" not in results["cost"]
    # reports
    text = (finished / "results.md").read_text()
    assert "forgetting rate" in text.lower() and "| `das` |" in text and "Held-out MLM loss" in text
    pngs = sorted(p.name for p in finished.glob("*.png"))
    assert "summary-probe-macro_f1.png" in pngs and "heatmap-probe-macro_f1-das.png" in pngs
    assert all((finished / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    argv = results["commands"][0]["argv"]
    assert argv[:4] == ["das", "eval", *map(str, domains)]
    recorded = dict(zip(argv[4::2], argv[5::2], strict=True))  # each option with its value (as parsed: 5e-3 is 0.005)
    given = {"--out": str(finished), "--methods": METHODS, "--seeds": "2", "--base": str(bert_dir),
             **dict(zip(CLI_SMALL[::2], CLI_SMALL[1::2], strict=True))}
    assert recorded.keys() == given.keys()  # the options given, none left at its default
    assert all(recorded[k] == v or float(recorded[k]) == float(v) for k, v in given.items())
    assert results["machine"]["torch"] and results["settings"]["train"]["steps"] == 3


def test_heldout_documents_are_never_trained_on(finished, domains):
    finished = finished.out
    plan_domain = das_eval.prepare_domain(domains[0], das_eval.ScoringSettings())
    assert plan_domain.heldout_documents and not set(plan_domain.heldout_documents) & set(
        plan_domain.training_documents)
    metrics = json.loads((finished / "runs" / "das" / "seed-0" / "stage-1-code" / "train_metrics.json").read_text())
    assert metrics["corpus"]["documents"] == len(plan_domain.training_documents)


def _copy(finished: Finished, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    return out


def test_a_rerun_recomputes_only_the_stage_whose_scores_are_gone(finished, domains, bert_dir, tmp_path,
                                                                 monkeypatch):
    out = _copy(finished, tmp_path)
    stage = out / "runs" / "das" / "seed-1" / "stage-1-code"
    (stage / "scores.json").unlink()
    trained_at = (stage / "train_metrics.json").stat().st_mtime_ns
    scored: list[str] = []
    real = eval_runner.score_model

    def counting(folder, *args, **kwargs):
        scored.append(str(Path(folder).relative_to(out)) if str(folder).startswith(str(out)) else str(folder))
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(eval_runner, "score_model", counting)
    result = _cli(domains, out, "--base", str(bert_dir))
    assert result.exit_code == 0, result.output
    assert scored == ["runs/das/seed-1/stage-1-code"]
    assert (stage / "train_metrics.json").stat().st_mtime_ns == trained_at  # the trainer did not train again
    assert json.loads((stage / "scores.json").read_text())["train"]["step_time_source"] == "train_time_s / steps"
    assert len(json.loads((out / "run.json").read_text())["commands"]) == 3


def test_an_interrupted_run_resumes_where_it_stopped(finished):
    assert isinstance(finished.first.exception, Interrupted)
    first_method = das_eval.method_folder(das_eval.split_methods(METHODS)[1])
    assert finished.done_when_interrupted == ["runs/base/seed-0/stage-0-base", "runs/base/seed-1/stage-0-base",
                                              f"runs/{first_method}/seed-0/stage-1-code"]
    # the rerun computed every other stage, once, and none of those already done
    methods = das_eval.split_methods(METHODS)[1:]
    expected = [f"{m}, seed {s}, stage {t} ({d})" for s in (0, 1) for m in methods  # seed-major
                for t, d in ((1, "code"), (2, "legal"))]
    expected.remove(f"{methods[0]}, seed 0, stage 1 (code)")
    assert finished.resumed == expected
    commands = json.loads((finished.out / "run.json").read_text())["commands"]
    assert len(commands) == 2 and commands[0]["argv"] == commands[1]["argv"]


def test_the_runner_stops_when_its_hook_raises(domains, bert_dir, tmp_path):
    plan = make_plan(domains[:1], "base", 1, base=str(bert_dir), train=PLAN_TRAIN)

    def stop(event):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_evaluation(plan, tmp_path / "out", on_stage=stop)
    assert not (tmp_path / "out" / "runs" / "base" / "seed-0" / "stage-0-base" / "scores.json").exists()
    results = run_evaluation(plan, tmp_path / "out")
    assert results["scores"]["base"]["0"]["probe/macro_f1"][0] == results["scores"]["base"]["0"]["probe/macro_f1"][1]
    assert results["summary"]["base"]["probe/macro_f1"]["forgetting_rate"]["mean"] is None  # one domain: no FR


def test_other_settings_into_the_same_folder_are_refused(finished, domains, bert_dir, tmp_path):
    out = _copy(finished, tmp_path)
    before = (out / "run.json").read_text()
    for extra, what in ((["--steps", "4"], "train.steps: 3 -> 4"), (["--max-train", "30"], "scoring.max_train"),
                        (["--set", "negative_rule=abs"], "train.negative_rule")):
        args = [a for a in CLI_SMALL if a not in ("--steps", "3")] if extra[0] == "--steps" else CLI_SMALL
        result = cli_runner.invoke(app, ["eval", *map(str, domains), "--out", str(out), "--methods", METHODS,
                                     "--seeds", "2", *args, *extra, "--base", str(bert_dir)])
        assert result.exit_code == 2 and "other settings" in result.output and what in result.output, result.output
    reversed_order = _cli(list(reversed(domains)), out, "--base", str(bert_dir))
    assert reversed_order.exit_code == 2 and "domains" in reversed_order.output
    assert (out / "run.json").read_text() == before  # nothing recorded, nothing run


def test_clear_errors(domains, bert_dir, tmp_path):
    result = _cli(domains, tmp_path / "o1", "--base", str(bert_dir), methods="base,das:mask_mode=sideways")
    assert result.exit_code == 2 and "mask_mode must be one of" in result.output
    result = _cli([domains[0], domains[0]], tmp_path / "o2", "--base", str(bert_dir))
    assert result.exit_code == 2 and "distinct" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    result = _cli(domains, tmp_path / "full", "--base", str(bert_dir))
    assert result.exit_code == 2 and "not an evaluation folder" in result.output
    result = _cli([tmp_path / "nowhere"], tmp_path / "o3", "--base", str(bert_dir))
    assert result.exit_code == 2 and "no such domain folder" in result.output


def test_a_pruned_stage_cannot_be_trained_from_and_says_so(finished, domains, bert_dir, tmp_path):
    out = _copy(finished, tmp_path)
    stage1, stage2 = (out / "runs" / "das" / "seed-0" / name for name in ("stage-1-code", "stage-2-legal"))
    eval_runner.prune_model(stage1)
    assert not (stage1 / "model.safetensors").exists() and (stage1 / "importance.safetensors").is_file()
    assert _cli(domains, out, "--base", str(bert_dir)).exit_code == 0  # every stage is scored: nothing to train
    (stage2 / "scores.json").unlink()
    result = _cli(domains, out, "--base", str(bert_dir))
    assert result.exit_code == 2 and "pruned" in result.output and "stage-1-code" in result.output


def test_fine_tuning_scores_every_stage_per_seed(domains, bert_dir, tmp_path):
    scoring = das_eval.ScoringSettings(finetune=True, finetune_epochs=1, finetune_batch_size=8, max_length=32)
    plan = make_plan(domains[:1], "base", 2, base=str(bert_dir), train=PLAN_TRAIN, scoring=scoring)
    results = run_evaluation(plan, tmp_path / "out")
    assert results["families"] == ["probe/macro_f1", "probe/accuracy", "finetune/macro_f1", "finetune/accuracy"]
    for seed in ("0", "1"):
        a = results["scores"]["base"][seed]["finetune/macro_f1"]
        assert len(a) == 2 and 0 <= a[0][0] <= 100
    stage0 = tmp_path / "out" / "runs" / "base" / "seed-1" / "stage-0-base" / "scores.json"
    assert "copied_from" not in json.loads(stage0.read_text())  # fine-tuning is seeded: each seed scored
    assert (tmp_path / "out" / "heatmap-finetune-macro_f1-base.png").is_file()
    assert "fine-tuned: macro-F1" in (tmp_path / "out" / "results.md").read_text()


def test_a_folder_written_before_a_new_setting_existed_still_resumes(finished, domains, bert_dir, tmp_path):
    """A DASConfig field added later defaults to the old behaviour: a run.json without it is the same settings."""
    out = _copy(finished, tmp_path)
    run = json.loads((out / "run.json").read_text())
    del run["settings"]["train"]["contrastive_samples"]  # as written before the field existed
    (out / "run.json").write_text(json.dumps(run))
    result = _cli(domains, out, "--base", str(bert_dir))
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "run.json").read_text())["commands"]) == 3
    run["settings"]["train"]["lr"] = 1e-3  # a recorded value that differs is still refused
    (out / "run.json").write_text(json.dumps(run))
    result = _cli(domains, out, "--base", str(bert_dir))
    assert result.exit_code == 2 and "train.lr: 0.001 -> 0.005" in result.output, result.output


def _only(results: dict, specs: list[str]) -> dict:
    """results.json's content as a run of only these methods would have written it."""
    part = json.loads(json.dumps(results))
    for key in ("methods", "scores", "summary"):
        part[key] = {s: part[key][s] for s in specs}
    part["cost"] = {s: c for s, c in part["cost"].items() if s in specs}
    return part


def test_eval_merge_joins_runs_of_one_evaluation(finished, tmp_path):
    results = json.loads((finished.out / "results.json").read_text())
    specs = das_eval.split_methods(METHODS)
    first, second = _only(results, specs[:2]), _only(results, ["base", *specs[2:]])
    del second["settings"]["train"]["contrastive_samples"]  # an older run: the field's default is filled in
    for part, path in ((first, tmp_path / "a.json"), (second, tmp_path / "b.json")):
        path.write_text(json.dumps(part))
    merge_app = typer.Typer()
    merge_app.command("eval-merge")(eval_cli.merge_command)
    merge_app.command("noop")(lambda: None)
    result = cli_runner.invoke(merge_app, ["eval-merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                       "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert list(merged["methods"]) == specs
    for key in ("scores", "summary", "cost"):
        assert merged[key] == results[key]
    assert merged["settings"] == results["settings"]
    report = (tmp_path / "merged" / "results.md").read_text()
    assert all(f"| `{s}` |" in report for s in specs)
    assert (tmp_path / "merged" / f"heatmap-probe-macro_f1-{das_eval.method_folder(specs[-1])}.png").is_file()

    # --seeds K: every run cut to seeds 0..K-1 and summarised again over them
    result = cli_runner.invoke(merge_app, ["eval-merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                       "--seeds", "1", "--out", str(tmp_path / "seed0")])
    assert result.exit_code == 0, result.output
    seed0 = json.loads((tmp_path / "seed0" / "results.json").read_text())
    assert seed0["seeds"] == [0] and all(list(by_seed) == ["0"] for by_seed in seed0["scores"].values())
    for spec in specs:
        full, cut = results["summary"][spec]["probe/macro_f1"], seed0["summary"][spec]["probe/macro_f1"]
        assert cut["final_average"] == {"mean": full["per_seed"][0]["final_average"], "std": 0.0, "n": 1}
        assert cut["per_seed"] == full["per_seed"][:1]
        assert seed0["summary"][spec]["mean_matrix"]["mlm_loss"] == results["scores"][spec]["0"]["mlm_loss"]
    with pytest.raises(EvalError, match=r"results 1 has seeds \[0, 1\]; it lacks \[2\]"):
        das_eval.merge_results([first, second], seeds=[0, 2])

    second["settings"]["train"]["lr"] = 1e-3
    second["seeds"] = [0]
    with pytest.raises(EvalError, match=r"results 2 .*seeds.*train\.lr: 0\.005 -> 0\.001"):
        das_eval.merge_results([first, second])
    (tmp_path / "b.json").write_text(json.dumps(second))
    (tmp_path / "c.json").write_text("{not json")
    for bad, says in ((tmp_path / "b.json", "other settings"), (tmp_path / "c.json", "not a results.json"),
                      (tmp_path / "missing.json", "is not a file")):
        result = cli_runner.invoke(merge_app, ["eval-merge", str(tmp_path / "a.json"), str(bad),
                                           "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "bad").exists()
