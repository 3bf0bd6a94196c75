"""Matched gain (das_eval/matched_gain.py): curves over merge_alpha, read at a share of ncl's gain, seed by seed.
No model runs here: the results are written by hand, with the numbers worked out in the comments."""

from __future__ import annotations

import pytest

from das_eval.matched_gain import curve_label, curves, matched_gain, read_at
from das_eval.metrics import mean_std
from das_eval.reports import MATCHED_GAIN_PNG, matched_gain_lines, matched_gain_png


def _results(methods: dict[str, list[tuple[float, float, float]]]) -> dict:
    """A results.json cut down to what matched gain reads: per method, per seed (gain, rise, final probe average);
    each seed's gain and rise are spread over two domains so that their means are the given values."""
    results = {"seeds": [0, 1], "families": ["probe/macro_f1"], "methods": {"base": {"kind": "base"}}, "summary": {}}
    for spec, seeds in methods.items():
        results["methods"][spec] = {"kind": spec.partition(":")[0]}
        losses = [{"gain": [g - 0.1, g + 0.1], "rise": [] if r is None else [r]} for g, r, _ in seeds]
        probe = [{"final_average": p, "forgetting_rate": -p / 100} for _, _, p in seeds]
        results["summary"][spec] = {
            "mlm_loss": {"per_seed": losses, "rise": mean_std([r for _, r, _ in seeds])},
            "probe/macro_f1": {"per_seed": probe, "final_average": mean_std([p for _, _, p in seeds])}}
    return results


def test_a_curve_is_the_spec_without_its_merge_share():
    assert curve_label("ncl:replay_fraction=0.25,merge_alpha=0.85") == ("ncl:replay_fraction=0.25", 0.85)
    assert curve_label("das:merge_alpha=0.5,contrastive_weight=0") == ("das:contrastive_weight=0", 0.5)
    assert curve_label("das") == ("das", 1.0)
    assert curve_label("ncl:replay_fraction=0.25") == ("ncl:replay_fraction=0.25", 1.0)
    assert curve_label("ncl:merge_auto=true") == ("ncl:merge_auto=true", 1.0)


def test_read_at_interpolates_between_the_bracketing_gains():
    points = [{"gain": 2.0, "rise": 0.5, "final_average": 60.0, "forgetting_rate": 1.0, "right_to_wrong": None},
              {"gain": 1.0, "rise": 0.1, "final_average": 70.0, "forgetting_rate": 0.0, "right_to_wrong": 3.0},
              {"gain": 3.0, "rise": 0.9, "final_average": 50.0, "forgetting_rate": 2.0, "right_to_wrong": 5.0}]
    at = read_at(points, 1.5)  # between gains 1.0 and 2.0, given out of order
    assert at["rise"] == pytest.approx(0.3) and at["final_average"] == pytest.approx(65.0)
    assert at["forgetting_rate"] == pytest.approx(0.5) and at["right_to_wrong"] is None  # missing at one end
    assert read_at(points, 2.5)["rise"] == pytest.approx(0.7)
    assert read_at(points, 3.5) is None and read_at(points, 0.5) is None  # no extrapolation
    assert read_at(points[:1], 2.0)["rise"] == 0.5 and read_at(points[:1], 1.9) is None  # one point: its own gain


def test_each_curve_is_read_at_ninety_percent_of_its_seeds_ncl_gain():
    results = _results({
        "ncl": [(2.0, 0.6, 60.0), (2.2, 0.7, 61.0)],
        "ncl:replay_fraction=0.25,merge_alpha=0.75": [(1.6, 0.0, 64.0), (1.7, 0.1, 63.0)],
        "ncl:replay_fraction=0.25": [(2.0, 0.4, 62.0), (2.1, 0.5, 61.0)],
        "das:merge_alpha=0.9": [(1.5, 0.0, 66.0), (1.6, 0.0, 66.0)],  # never reaches the target
    })
    assert [(c.label, c.points) for c in curves(results)] == [
        ("ncl", [(1.0, "ncl")]),
        ("ncl:replay_fraction=0.25", [(0.75, "ncl:replay_fraction=0.25,merge_alpha=0.75"),
                                      (1.0, "ncl:replay_fraction=0.25")]),
        ("das", [(0.9, "das:merge_alpha=0.9")])]
    ncl, replay, das = matched_gain(results, 0.9)
    assert ncl.target == {"mean": pytest.approx(1.89), "std": pytest.approx(0.18 / 2 ** 0.5), "n": 2}
    assert ncl.reached == 0 and das.reached == 0 and das.values["rise"]["mean"] is None
    # seed 0: target 1.8, halfway from gain 1.6 to 2.0: rise 0.2, probe 63; seed 1: target 1.98, (1.98 - 1.7) / 0.4
    # = 0.7 of the way: rise 0.1 + 0.7 * 0.4 = 0.38, probe 63 - 0.7 * 2 = 61.6
    assert replay.reached == 2 and replay.seeds == 2
    assert replay.values["rise"]["mean"] == pytest.approx((0.2 + 0.38) / 2)
    assert replay.values["final_average"]["mean"] == pytest.approx((63.0 + 61.6) / 2)
    assert replay.values["forgetting_rate"]["mean"] == pytest.approx(-(63.0 + 61.6) / 200)
    assert [g["mean"] for g in replay.gains] == pytest.approx([1.65, 2.05])
    assert matched_gain(results, 1.0)[0].reached == 2  # ncl at its own gain
    assert matched_gain({**results, "summary": {k: v for k, v in results["summary"].items() if k != "ncl"}}) == []
    with pytest.raises(ValueError, match="share"):
        matched_gain(results, 0.0)


def test_the_report_has_the_table_and_the_plot(tmp_path):
    results = _results({"ncl": [(2.0, 0.6, 60.0), (2.2, 0.7, 61.0)],
                        "ncl:replay_fraction=0.25,merge_alpha=0.75": [(1.6, 0.0, 64.0), (1.7, 0.1, 63.0)],
                        "ncl:replay_fraction=0.25": [(2.0, 0.4, 62.0), (2.1, 0.5, 61.0)]})
    lines = matched_gain_lines(results)
    row = next(line for line in lines if line.startswith("| `ncl:replay_fraction=0.25` |"))
    assert [c.strip() for c in row.strip("|").split("|")][1:4] == ["0.75: 1.650, 1: 2.050", "2 of 2", "0.290 ± 0.127"]
    assert f"({MATCHED_GAIN_PNG})" in lines[-1]
    assert matched_gain_png(results, tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_of_one_domain_reports_without_a_rise(tmp_path):
    """One domain: nothing learned before the last, so no rise; the table says n/a and the plot still draws."""
    results = _results({"ncl": [(2.0, None, 60.0), (2.2, None, 61.0)],
                        "ncl:merge_alpha=0.5": [(1.0, None, 62.0), (1.2, None, 61.0)]})
    row = next(line for line in matched_gain_lines(results) if line.startswith("| `ncl` |"))
    assert "n/a" in row
    assert matched_gain_png(results, tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
