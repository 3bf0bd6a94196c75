"""Metrics: pure functions of a score matrix a[T][j] (row T = after T domains, T = 0 the base model;
column j = the j-th domain's task, in learning order), as SPEC-DAS defines them: final average,
forgetting rate, plasticity; the held-out MLM-loss rise; mean and sample std over seeds.

Domain indices are 0-based: domain j is learned in stage j + 1, so the spec's a[i, i] (1-based) is
`a[j + 1][j]`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

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
