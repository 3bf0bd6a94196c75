"""Metrics: pure functions of a score matrix a[T][j] (row T = after T domains, T = 0 the base model;
column j = the j-th domain's task, in learning order), as SPEC-DAS defines them: final average,
forgetting rate, plasticity; the held-out MLM-loss rise (forgetting) and gain (learning); per-example
flips of the probe between stages; mean and sample std over seeds; the Pareto front of (learning, forgetting).

Domain indices are 0-based: domain j is learned in stage j + 1, so the spec's a[i, i] (1-based) is
`a[j + 1][j]`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]
CorrectMatrix = Sequence[Sequence[str | None]]  # per stage T, per domain j: '1'/'0' per test example, or None
CORRECT = "probe/correct"  # the key of a seed's CorrectMatrix beside its score matrices (optional: older runs lack it)


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


def mlm_gain(losses: Matrix) -> list[float]:
    """Per domain j: how much learning it lowered its own held-out MLM loss, L[j][j] - L[j + 1][j] (nats;
    positive = the new domain was learned, higher = learned more). The loss counterpart of `plasticity`, and
    the yardstick `loss_rise` (forgetting) is judged against: forgetting less only counts at equal gain."""
    n = _check(losses)
    return [losses[j][j] - losses[j + 1][j] for j in range(n)]


def flips(correct: CorrectMatrix) -> dict[str, Any]:
    """Per-example changes of the probe on the domains learned before the last, for one seed.

    `correct[T][j]`: after stage T, domain j's test examples as '1' (predicted right) or '0' (wrong), or None
    where not recorded. For each domain j < N - 1, in % of its test examples:
    "right_to_wrong": right just after it was learned (stage j + 1) and wrong at the end (stage N), i.e.
    forgotten examples; "wrong_to_right": wrong then, right at the end. An item is None where either string is
    missing; each "_mean" is the mean over those domains, None unless every domain has a value (N < 2: none).
    """
    n = len(correct) - 1
    if n < 1 or any(len(row) != n for row in correct):
        raise ValueError(f"a correct matrix has N + 1 rows (stages 0..N) of N strings (domains); got "
                         f"{[len(row) for row in correct]}")
    result: dict[str, Any] = {"right_to_wrong": [], "wrong_to_right": []}
    for j in range(n - 1):
        learned, final = correct[j + 1][j], correct[n][j]
        if learned is None or final is None:
            result["right_to_wrong"].append(None)
            result["wrong_to_right"].append(None)
            continue
        if len(learned) != len(final) or not learned:
            raise ValueError(f"domain {j}: {len(learned)} example(s) after stage {j + 1}, {len(final)} at the end")
        pairs = list(zip(learned, final, strict=True))
        result["right_to_wrong"].append(100 * pairs.count(("1", "0")) / len(pairs))
        result["wrong_to_right"].append(100 * pairs.count(("0", "1")) / len(pairs))
    for key in ("right_to_wrong", "wrong_to_right"):
        values = result[key]
        result[f"{key}_mean"] = statistics.fmean(values) if values and None not in values else None
    return result


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (x = learning, higher is better; y = forgetting, lower is better) that no other
    point dominates (at least as high an x and as low a y, and better in one), in increasing x (then y) order.
    Equal points are all on the front."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(ox >= x and oy <= y and (ox, oy) != (x, y) for ox, oy in points)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the finite values: None, NaN and
    infinities are skipped, and "n" is the count of values used (mean and std are None when it is 0)."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
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
    """Held-out MLM loss of one method over seeds (nats): the final mean loss; the rise (forgetting, mean over
    the domains learned before the last, then over seeds; and per domain); the gain (learning: each domain's
    loss drop when it was learned, mean over the domains, then over seeds; and per domain)."""
    rises = [loss_rise(m) for m in l_by_seed]
    gains = [mlm_gain(m) for m in l_by_seed]
    return {
        "final_mean_loss": mean_std([final_average(m) for m in l_by_seed]),
        "rise": mean_std([statistics.fmean(r) if r else None for r in rises]),
        "rise_per_domain": [mean_std([r[j] for r in rises]) for j in range(len(rises[0]))],
        "gain": mean_std([statistics.fmean(g) for g in gains]),
        "gain_per_domain": [mean_std([g[j] for g in gains]) for j in range(len(gains[0]))],
        "per_seed": [{"final_mean_loss": final_average(m), "rise": r, "gain": g}
                     for m, r, g in zip(l_by_seed, rises, gains, strict=True)],
    }


def summarise_flips(correct_by_seed: Sequence[CorrectMatrix]) -> dict[str, Any]:
    """The probe's per-example flips of one method over seeds (`flips`): right then wrong (forgotten examples)
    and wrong then right, in % of a domain's test examples, each the mean over the domains learned before the
    last, then mean and std over seeds; per domain too; and each seed's `flips`."""
    per_seed = [flips(c) for c in correct_by_seed]
    n = len(per_seed[0]["right_to_wrong"])
    summary: dict[str, Any] = {}
    for key in ("right_to_wrong", "wrong_to_right"):
        summary[key] = mean_std([s[f"{key}_mean"] for s in per_seed])
        summary[f"{key}_per_domain"] = [mean_std([s[key][j] for s in per_seed]) for j in range(n)]
    summary["per_seed"] = per_seed
    return summary


def complete_correct(seeds: Sequence[dict[str, Any]]) -> bool:
    """Whether every seed has its per-example strings (CORRECT) at every stage for every domain."""
    return all(isinstance(s.get(CORRECT), list) and all(v is not None for row in s[CORRECT] for v in row)
               for s in seeds)


def summarise_method(seeds: Sequence[dict[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    """results.json's summary of one method, from its per-seed matrices (one dict of family -> a[T, i] per seed,
    and "mlm_loss"). "flips" (`summarise_flips`) only where every seed has the probe's per-example strings at
    every stage (CORRECT; runs scored before they were recorded lack them)."""
    summary: dict[str, Any] = {family: summarise([s[family] for s in seeds]) for family in families}
    summary["mlm_loss"] = summarise_losses([s["mlm_loss"] for s in seeds])
    if complete_correct(seeds):
        summary["flips"] = summarise_flips([s[CORRECT] for s in seeds])
    summary["mean_matrix"] = {key: mean_matrix([s[key] for s in seeds]) for key in [*families, "mlm_loss"]}
    return summary


def probe_family(results: dict[str, Any]) -> str:
    """The probe score family a results.json is judged by: macro-F1 where it was scored, else the first family."""
    return "probe/macro_f1" if "probe/macro_f1" in results["families"] else results["families"][0]
