"""`das eval` judged at equal learning: the held-out MLM gain (what a method learned) beside the rise (what it
forgot), the probe's per-example flips, the Pareto front of (gain, rise), and their place in results.json (checked,
older files without them still read) and the reports (the "Equal learning" table and the Pareto plots).

No model runs here: results come from hand-written stage files through collect_results."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from das_data.domain_folder import Domain
from das_eval import EvalError, make_plan, merge_results
from das_eval.files import FORMAT, FORMAT_VERSION, RUN_FILE, SCORES_FILE, write_json
from das_eval.metrics import CORRECT, flips, mean_std, mlm_gain, pareto_front
from das_eval.plan import Stage
from das_eval.reports import PARETO_MLM_PNG, PARETO_PROBE_PNG, pareto_mlm_png, results_markdown, write_reports
from das_eval.results import collect_results
from das_eval.results_check import check_results
from das_eval.scoring import PreparedDomain
from das_formats.task_data import LabeledSet

REAL = Path(__file__).resolve().parent.parent / "bench" / "results" / "eval-embedded-results.json"
PNG = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------------
# metrics, by hand


def test_mlm_gain_is_each_domains_own_loss_drop_when_learned():
    losses = [[4.0, 5.0, 6.0],
              [2.0, 5.5, 6.1],
              [2.6, 3.0, 6.2],
              [2.9, 3.4, 3.1]]
    assert mlm_gain(losses) == pytest.approx([4.0 - 2.0, 5.5 - 3.0, 6.2 - 3.1])
    assert mlm_gain([[1.0], [1.5]]) == pytest.approx([-0.5])  # learning that raised the loss: negative gain
    assert mlm_gain([[3.0, 3.0]] * 3) == [0.0, 0.0]  # the base model: learns nothing
    with pytest.raises(ValueError, match="N \\+ 1 rows"):
        mlm_gain([[1.0, 2.0], [3.0, 4.0]])


def test_flips_count_examples_right_then_wrong_and_wrong_then_right():
    # 3 domains; only domains 0 and 1 were learned before the last. Row T: after stage T
    correct = [["0000000000", "0000", "00"],
               ["1111100000", "0000", "00"],  # domain 0 just learned: examples 0-4 right
               ["1111100000", "1100", "00"],  # domain 1 just learned: examples 0-1 right
               ["1100011000", "0110", "11"]]  # the end
    result = flips(correct)
    # domain 0: examples 2, 3, 4 right then wrong (3 of 10), 5 and 6 wrong then right (2 of 10)
    # domain 1: example 0 right then wrong (1 of 4), example 2 wrong then right (1 of 4)
    assert result["right_to_wrong"] == pytest.approx([30.0, 25.0])
    assert result["wrong_to_right"] == pytest.approx([20.0, 25.0])
    assert result["right_to_wrong_mean"] == pytest.approx(27.5)
    assert result["wrong_to_right_mean"] == pytest.approx(22.5)
    # stage 0 and the stages between do not count: only just after learning against the end
    changed = [row[:] for row in correct]
    changed[0][0] = "1111111111"
    changed[2][0] = "0000000000"
    assert flips(changed) == result


def test_flips_are_none_where_strings_are_missing():
    correct = [["00", "0", "0"], ["11", "1", "0"], ["10", None, "0"], ["01", "0", "1"]]
    result = flips(correct)  # domain 1's string just after it was learned is missing
    assert result["right_to_wrong"] == [50.0, None] and result["wrong_to_right"] == [0.0, None]
    assert result["right_to_wrong_mean"] is None and result["wrong_to_right_mean"] is None
    one = flips([["0"], ["1"]])  # one domain: nothing learned before the last
    assert one == {"right_to_wrong": [], "wrong_to_right": [], "right_to_wrong_mean": None,
                   "wrong_to_right_mean": None}
    with pytest.raises(ValueError, match="domain 0"):
        flips([["00", "0"], ["111", "0"], ["00", "0"]])  # another number of examples at the end


def test_mean_std_skips_values_that_are_not_finite():
    stat = mean_std([1.0, math.nan, 3.0, None, math.inf])
    assert stat == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert mean_std([math.nan, math.nan]) == {"mean": None, "std": None, "n": 0}
    assert mean_std([math.nan, 5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both():
    # x: gain (higher is better), y: rise (lower is better)
    points = [(1.0, 0.5),   # 0: front (lowest rise)
              (2.0, 0.9),   # 1: front (highest gain)
              (1.5, 0.6),   # 2: front
              (1.4, 0.7),   # 3: dominated by 2
              (1.0, 0.8),   # 4: dominated by 0 (same gain, more rise)
              (2.0, 0.95)]  # 5: dominated by 1 (same gain, more rise)
    assert pareto_front(points) == [0, 2, 1]  # in increasing gain: the line's order
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points: neither beats the other
    assert pareto_front([]) == [] and pareto_front([(3.0, -1.0)]) == [0]


# ---------------------------------------------------------------------------------------------
# results.json from hand-written stage files

NAMES = ["a", "b"]
TEST = {"a": 10, "b": 4}  # test examples per domain


def _loss(method: str, seed: int, t: int) -> list[float]:
    """Held-out loss per domain after stage t: learning a domain lowers its loss, the next one raises it again."""
    if method == "base" or t == 0:
        return [4.0, 5.0]
    return [[2.0 + 0.1 * seed, 4.8], [2.5, 3.0]][t - 1] if method == "ncl" else [[2.5, 4.9], [2.6, 3.5]][t - 1]


def _correct(method: str, t: int) -> dict[str, str]:
    if method == "base" or t == 0:
        return {"a": "0000000000", "b": "0000"}
    # domain a: right just after stage 1 on 0-4; at the end (stage 2) ncl lost 2, 3, 4 and gained 5, 6
    end = "1100011000" if method == "ncl" else "1111000000"
    return {"a": "1111100000" if t == 1 else end, "b": "1100"}


def _write_stage(out: Path, method, seed: int, t: int, *, correct: bool = True) -> None:
    strings = _correct(method.spec, t)
    scores = {d: {"probe": {"macro_f1": 50.0 + 10 * t * (d == "a"), "accuracy": 60.0, "n": TEST[d],
                            **({"correct": strings[d]} if correct else {})},
                  "mlm_loss": _loss(method.spec, seed, t)[j]} for j, d in enumerate(NAMES)}
    train = None if t == 0 else {"step_times_s": [0.1 if method.spec == "ncl" else 0.2] * 3, "wall_time_s": 1.0}
    write_json(Stage(method, seed, t, "base" if t == 0 else NAMES[t - 1]).folder(out) / SCORES_FILE,
               {"stage": t, "seed": seed, "scores": scores, "train": train})


def _domain(name: str) -> PreparedDomain:
    labels = ["no", "yes"]
    test = LabeledSet(tuple(f"{name} {i}" for i in range(TEST[name])), ("no",) * TEST[name])
    domain = Domain(name, Path(name), Path(name) / "corpus.txt", [], [], labels, {}, 0)
    return PreparedDomain(name, domain, ["doc"], ["held"], test, test, f"fingerprint of {name}")


def _evaluate(out: Path, *, old_stages: tuple = (), strings: bool = True) -> dict:
    """collect_results over hand-written stage files of base, ncl and das (2 domains, 2 seeds); the stages in
    `old_stages` ((method, seed, t); stage 0 is "base"'s), or all without `strings`, are written as before
    per-example strings were recorded."""
    return collect_results(*_write_evaluation(out, old_stages=old_stages, strings=strings), out)


def _write_evaluation(out: Path, *, old_stages: tuple, strings: bool) -> tuple:
    plan = make_plan([Path(d) for d in NAMES], "base,ncl,das", 2, base="bert", train={"steps": 3})
    domains = [_domain(d) for d in NAMES]
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "domains": [{"name": d.name, "fingerprint": d.fingerprint} for d in domains],
                "base_fingerprint": "base", "train": plan.shared_config(), "scoring": plan.scoring.compared()}
    write_json(out / RUN_FILE, {"settings": settings, "base": "bert",
                                "commands": [{"argv": ["das", "eval"], "date": "today"}]})
    for method in plan.methods:
        for seed in plan.seeds:
            for t in range(1, len(NAMES) + 1) if method.trains else [0]:
                _write_stage(out, method, seed, t, correct=strings and (method.spec, seed, t) not in old_stages)
    return plan, domains


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return _evaluate(tmp_path_factory.mktemp("equal") / "out")


def test_results_json_holds_the_gain_and_the_flips(results):
    ncl = results["summary"]["ncl"]
    # gain per seed: (4.0 - (2.0 + 0.1 s)) for a, (4.8 - 3.0) for b; means 1.9 and 1.85
    assert [s["gain"] for s in ncl["mlm_loss"]["per_seed"]] == [pytest.approx([2.0, 1.8]), pytest.approx([1.9, 1.8])]
    assert ncl["mlm_loss"]["gain"] == {"mean": pytest.approx(1.875), "std": pytest.approx(0.05 / 2 ** 0.5), "n": 2}
    assert ncl["mlm_loss"]["gain_per_domain"][1] == {"mean": pytest.approx(1.8), "std": pytest.approx(0), "n": 2}
    assert ncl["mlm_loss"]["rise"]["mean"] == pytest.approx((0.5 + 0.4) / 2)
    assert ncl["flips"]["right_to_wrong"] == {"mean": pytest.approx(30.0), "std": 0.0, "n": 2}
    assert ncl["flips"]["wrong_to_right"]["mean"] == pytest.approx(20.0)
    assert results["summary"]["das"]["flips"]["right_to_wrong"]["mean"] == pytest.approx(10.0)
    assert results["summary"]["base"]["mlm_loss"]["gain"]["mean"] == 0
    assert results["summary"]["base"]["flips"]["right_to_wrong"]["mean"] == 0
    assert results["scores"]["ncl"]["1"][CORRECT][2] == ["1100011000", "1100"]
    check_results(json.loads(json.dumps(results)), "results.json")  # as written: accepted


def test_flips_are_left_out_where_a_stage_lacks_its_strings(tmp_path):
    mixed = _evaluate(tmp_path / "out", old_stages=(("das", 1, 2),))  # a stage scored by an older `das eval`
    assert mixed["scores"]["das"]["1"][CORRECT][2] == [None, None]
    assert "flips" not in mixed["summary"]["das"] and "flips" in mixed["summary"]["ncl"]
    check_results(mixed, "mixed")
    old = _evaluate(tmp_path / "old", strings=False)
    assert all(CORRECT not in by_seed["0"] and "flips" not in old["summary"][spec]
               for spec, by_seed in old["scores"].items())
    check_results(old, "old")


def test_a_stage_file_with_a_bad_string_is_named_with_what_to_do(tmp_path):
    out = tmp_path / "out"
    plan, domains = _write_evaluation(out, old_stages=(), strings=True)
    path = out / "runs" / "ncl" / "seed-1" / "stage-2-b" / SCORES_FILE
    record = json.loads(path.read_text())
    record["scores"]["b"]["probe"]["correct"] = "1x01"
    path.write_text(json.dumps(record))
    says = f"{path}: scores.b.probe.correct is \"1x01\", expected a non-empty string of '0' and '1'"
    with pytest.raises(EvalError, match=f"^{re.escape(says)}.*remove the stage folder {re.escape(str(path.parent))}"):
        collect_results(plan, domains, out)


def _copy(document: dict) -> dict:
    return json.loads(json.dumps(document))


def _old_losses_with_a_number_for_per_seed(results: dict) -> None:
    losses = results["summary"]["ncl"]["mlm_loss"]
    del losses["gain"], losses["gain_per_domain"]
    losses["per_seed"] = 5


def test_check_results_reads_older_files_and_refuses_edits(results):
    real = json.loads(REAL.read_text(encoding="utf-8"))  # written before the gain and the flips existed
    assert "gain" not in real["summary"]["das"]["mlm_loss"]
    check_results(real, "old.json")
    assert merge_results([real])["summary"] == real["summary"]
    old_style = _copy(results)  # the gain fields left out, all of them: as an older `das eval` wrote it
    for spec, summary in old_style["summary"].items():
        for key in ("gain", "gain_per_domain"):
            del summary["mlm_loss"][key]
        for seed in summary["mlm_loss"]["per_seed"]:
            del seed["gain"]
        del old_style["scores"][spec]["0"][CORRECT], old_style["scores"][spec]["1"][CORRECT], summary["flips"]
    check_results(old_style, "old-style")
    edits = [("summary.ncl.mlm_loss.gain.mean", lambda r: r["summary"]["ncl"]["mlm_loss"]["gain"].update(mean=9.0)),
             ("summary.ncl.mlm_loss.gain is missing", lambda r: r["summary"]["ncl"]["mlm_loss"].pop("gain")),
             ("summary.ncl.mlm_loss.per_seed.1.gain is missing",
              lambda r: r["summary"]["ncl"]["mlm_loss"]["per_seed"][1].pop("gain")),
             ("summary.ncl.flips.right_to_wrong.mean", lambda r: r["summary"]["ncl"]["flips"]["right_to_wrong"]
              .update(mean=1.0)),
             ("summary.ncl.flips is missing", lambda r: r["summary"]["ncl"].pop("flips")),  # its strings are there
             ("summary.ncl.mlm_loss.per_seed is the number 5", _old_losses_with_a_number_for_per_seed),
             ("the summary does not match", lambda r: r["scores"]["ncl"]["0"][CORRECT][2].__setitem__(0, "1" * 10)),
             (f"scores.ncl.0.{CORRECT} row 1 value 0 is \"12\"",
              lambda r: r["scores"]["ncl"]["0"][CORRECT][1].__setitem__(0, "12")),
             ("strings of lengths [9, 10] for domain 0",
              lambda r: r["scores"]["ncl"]["0"][CORRECT][1].__setitem__(0, "1" * 9)),
             (f"scores.base.0.{CORRECT} has rows that differ",
              lambda r: r["scores"]["base"]["0"][CORRECT][1].__setitem__(0, "1" * 10))]
    for says, edit in edits:
        edited = _copy(results)
        edit(edited)
        with pytest.raises(EvalError, match=f"^edited: .*{says.replace('[', '.').replace(']', '.')}"):
            check_results(edited, "edited")


def test_the_reports_judge_at_equal_learning(results, tmp_path):
    write_reports(results, tmp_path)
    for name in (PARETO_MLM_PNG, PARETO_PROBE_PNG, "summary-probe-macro_f1.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    table = text[text.index("## Equal learning"):text.index("## Cost")]
    assert "rise / gain" in table and f"({PARETO_MLM_PNG})" in table and f"({PARETO_PROBE_PNG})" in table
    row = next(line for line in table.splitlines() if line.startswith("| `ncl` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # gain, probe gain, rise, rise / gain, FR, right→wrong, final probe average, × ncl step
    # probe macro-F1 of a: 50, 60, 70 after stages 0, 1, 2; of b: 50 throughout. Plasticity (10 + 0) / 2,
    # FR 60 - 70 (a improved after it was learned), final average (70 + 50) / 2
    assert cells[1:] == ["1.875 ± 0.035", "5.00 ± 0.00", "0.450 ± 0.071", f"{0.45 / 1.875:.2f}", "-10.00 ± 0.00",
                         "30.00 ± 0.00", "60.00 ± 0.00", "1.00"]
    das = next(line for line in table.splitlines() if line.startswith("| `das` |"))
    assert das.rstrip(" |").endswith("2.00")  # the step cost ratio to ncl
    base = next(line for line in table.splitlines() if line.startswith("| `base` |"))
    assert "| n/a |" in base  # learned nothing: no rise per gain


def test_the_reports_of_an_older_results_json(tmp_path):
    real = json.loads(REAL.read_text(encoding="utf-8"))
    table = results_markdown(real).split("## Equal learning")[1].split("## Cost")[0]
    das = next(line for line in table.splitlines() if line.startswith("| `das` |"))
    assert das.count("n/a") == 3  # no gain, hence no rise per gain, and no flips; the rest is there
    assert pareto_mlm_png(real, tmp_path / "p.png").read_bytes()[:8] == PNG  # no point to draw: still a plot


def _drawn(monkeypatch) -> list[tuple]:
    """Every Axes.plot call's (args, kwargs) from now on (the calls still draw)."""
    from matplotlib.axes import Axes

    drawn: list[tuple] = []
    real_plot = Axes.plot

    def plot(self, *args, **kwargs):
        drawn.append((args, kwargs))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    return drawn


def test_the_pareto_plot_draws_the_trained_methods_and_joins_the_front(results, tmp_path, monkeypatch):
    from das_eval import reports

    drawn = _drawn(monkeypatch)
    reports.pareto_mlm_png(results, tmp_path / "p.png")
    points = {kw["label"]: (args[0], args[1], kw["fillstyle"]) for args, kw in drawn if kw["label"] != "Pareto front"}
    # ncl: gain 1.875, rise 0.45; das: gain (1.5 + 1.4) / 2 = 1.45, rise 0.1: neither beats the other; base: not
    # trained, not drawn
    assert points == {"ncl": (pytest.approx(1.875), pytest.approx(0.45), "full"),
                      "das": (pytest.approx(1.45), pytest.approx(0.1), "full")}
    front = next(args for args, kw in drawn if kw["label"] == "Pareto front")
    assert front[0] == pytest.approx([1.45, 1.875]) and front[1] == pytest.approx([0.1, 0.45])

    drawn.clear()
    stat = lambda mean: {"mean": mean, "std": 0.1, "n": 3}  # noqa: E731
    reports.pareto_png([("x", stat(1.0), stat(0.5)), ("y", stat(0.9), stat(0.6)), ("z", stat(2.0), stat(0.9))],
                       tmp_path / "q.png", title="t", xlabel="x", ylabel="y")
    assert {kw["label"]: kw.get("fillstyle") for _, kw in drawn} == {"x": "full", "y": "none", "z": "full",
                                                                     "Pareto front": None}  # y: beaten by x
    assert (tmp_path / "q.png").read_bytes()[:8] == PNG
