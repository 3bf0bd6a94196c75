"""Matched gain: each method's forgetting read off its curve over the merge share a, at one new-domain gain.

A method forgets less only at equal learning. Methods whose settings differ only in `merge_alpha` form one
curve: a lower a keeps the candidate nearer its parent, so it learns less of the new domain and forgets less
of the earlier ones. Every curve is read at the same gain, a share of `ncl`'s (90% by default), by linear
interpolation between the two points of the curve whose gains bracket it. The reading is made seed by seed
(each seed's own `ncl` gain sets its target), then summarised as mean ± std over the seeds that reach it.

A curve of one point (`ncl` alone, `merge_auto`, where a is chosen per stage) has nothing to interpolate: it
is read only if its gain is the target (to 1e-9), and otherwise listed with its own gain so a reader sees
where it stands. The gain is the held-out MLM gain (`das_eval.metrics.mlm_gain`, mean over the domains);
what is read at it: the MLM-loss rise (forgetting), the probe's final average and FR, and the right→wrong
flips where recorded.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .methods import parse_settings
from .metrics import mean_std, probe_family

MERGE = "merge_alpha"
READ = ("rise", "final_average", "forgetting_rate", "right_to_wrong")


@dataclass
class Curve:
    """The methods of one curve: `label` is their spec without merge_alpha; `points` are (a, spec), a ascending."""
    label: str
    points: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Reading:
    """One curve read at the target gain: per read value its mean ± std over the seeds that reach the target
    (`reached` of `seeds`); `gains` is each point's own gain (mean ± std), in the order of `curve.points`."""
    curve: Curve
    target: dict[str, Any]
    values: dict[str, dict[str, Any]]
    reached: int
    seeds: int
    gains: list[dict[str, Any]]


def curve_label(spec: str) -> tuple[str, float]:
    """(the spec without its merge share, that share): 'ncl:replay_fraction=0.25,merge_alpha=0.85' gives
    ('ncl:replay_fraction=0.25', 0.85); a spec without merge_alpha has a = 1. The other settings keep their
    text and order."""
    kind, _, settings = spec.partition(":")
    share = float(parse_settings(settings, what=spec).get(MERGE, 1.0)) if settings else 1.0
    rest = ",".join(item for item in settings.split(",") if item.partition("=")[0].strip() != MERGE)
    return (f"{kind}:{rest}" if rest else kind), share


def curves(results: dict[str, Any]) -> list[Curve]:
    """Every trained method of a results.json, grouped into curves over merge_alpha, in first-seen order."""
    found: dict[str, Curve] = {}
    for spec, method in results["methods"].items():
        if method["kind"] == "base":
            continue
        label, share = curve_label(spec)
        found.setdefault(label, Curve(label)).points.append((share, spec))
    for curve in found.values():
        curve.points.sort()
    return list(found.values())


def seed_values(results: dict[str, Any], spec: str, index: int) -> dict[str, float | None]:
    """One seed's gain and read values of one method (by the seed's index in results["seeds"]); None where not
    recorded."""
    summary = results["summary"][spec]
    losses, probe = summary["mlm_loss"]["per_seed"][index], summary[probe_family(results)]["per_seed"][index]
    flips = summary.get("flips")
    return {"gain": statistics.fmean(losses["gain"]) if losses.get("gain") else None,  # older files lack it
            "rise": statistics.fmean(losses["rise"]) if losses["rise"] else None,
            "final_average": probe["final_average"], "forgetting_rate": probe["forgetting_rate"],
            "right_to_wrong": flips["per_seed"][index]["right_to_wrong_mean"] if flips else None}


def read_at(points: Sequence[dict[str, float | None]], target: float) -> dict[str, float | None] | None:
    """Each value of READ at gain `target`, linearly interpolated between the two points (each a dict with
    "gain") whose gains bracket it, the points taken in order of gain; None when no two points bracket it
    (one point: only if its gain is the target). A value missing at either end is None."""
    ordered = sorted((p for p in points if p["gain"] is not None), key=lambda p: p["gain"])
    for low, high in zip(ordered, ordered[1:], strict=False):
        if low["gain"] <= target <= high["gain"]:
            span = high["gain"] - low["gain"]
            w = 0.0 if span == 0 else (target - low["gain"]) / span
            return {k: None if low[k] is None or high[k] is None else low[k] + w * (high[k] - low[k]) for k in READ}
    if len(ordered) == 1 and abs(ordered[0]["gain"] - target) <= 1e-9:
        return {k: ordered[0][k] for k in READ}
    return None


def matched_gain(results: dict[str, Any], share: float = 0.9, reference: str = "ncl") -> list[Reading]:
    """Every curve read at `share` of the reference method's gain (per seed). Empty without the reference, or
    where its gain was not recorded (results.json files written before the gain was)."""
    if not 0 < share <= 1.5:
        raise ValueError(f"share must be within (0, 1.5], got {share}")
    if reference not in results["summary"]:
        return []
    seeds = range(len(results["seeds"]))
    reference_gains = [seed_values(results, reference, i)["gain"] for i in seeds]
    if None in reference_gains:
        return []
    targets = [share * gain for gain in reference_gains]
    readings = []
    for curve in curves(results):
        per_seed = [read_at([seed_values(results, spec, i) for _, spec in curve.points], targets[i]) for i in seeds]
        reached = [r for r in per_seed if r is not None]
        values = {k: mean_std([r[k] for r in reached]) for k in READ}
        gains = [mean_std([seed_values(results, spec, i)["gain"] for i in seeds]) for _, spec in curve.points]
        readings.append(Reading(curve, mean_std(targets), values, len(reached), len(targets), gains))
    return readings
