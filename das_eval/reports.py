"""Reports of a results.json: results.md (tables) and the plots (a[T, i] heatmaps, final average and FR, and the
equal-learning Pareto plots: forgetting against learning)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .files import LOSS_NAMES, RESULTS_JSON, RESULTS_MD, loss_kind, write_json
from .matched_gain import matched_gain
from .methods import method_folder
from .metrics import pareto_front, probe_family

FAMILY_TITLES = {
    "probe/macro_f1": "End tasks, probe on frozen features: macro-F1 (points)",
    "probe/accuracy": "End tasks, probe on frozen features: accuracy (points)",
    "finetune/macro_f1": "End tasks, fine-tuned: macro-F1 (points)",
    "finetune/accuracy": "End tasks, fine-tuned: accuracy (points)",
}

PARETO_MLM_PNG = "pareto.png"
PARETO_PROBE_PNG = "pareto-probe.png"
MATCHED_GAIN_PNG = "matched-gain.png"
MATCHED_SHARE = 0.9  # of ncl's new-domain gain
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
CURVE_MARKERS = tuple(m for m in MARKERS if m != "*")  # the star marks each curve's reading


def write_reports(results: dict[str, Any], out: Path) -> None:
    write_json(out / RESULTS_JSON, results)
    (out / RESULTS_MD).write_text(results_markdown(results), encoding="utf-8")
    for family in results["families"]:
        for spec in results["methods"]:
            heatmap_png(results, spec, family, out / f"heatmap-{family.replace('/', '-')}-{method_folder(spec)}.png")
        summary_png(results, family, out / f"summary-{family.replace('/', '-')}.png")
    pareto_mlm_png(results, out / PARETO_MLM_PNG)
    pareto_probe_png(results, out / PARETO_PROBE_PNG)
    matched_gain_png(results, out / MATCHED_GAIN_PNG)


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _loss_name(results: dict[str, Any]) -> str:
    """"MLM loss" or "next-token loss": the held-out loss the run's base model is scored on (`loss_kind`)."""
    return LOSS_NAMES[loss_kind(results)]


def results_markdown(results: dict[str, Any]) -> str:
    names = results["domains"]
    seeds = len(results["seeds"])
    loss = _loss_name(results)
    lines = [f"# DAS evaluation: {' → '.join(names)}", "",
             f"Base `{results['base']}`; methods {', '.join(f'`{m}`' for m in results['methods'])}; "
             f"{seeds} seed(s) ({', '.join(map(str, results['seeds']))}); "
             f"{results['settings']['train']['steps']} steps per domain; {results['date']}.",
             "Values are mean ± sample std over seeds. a[T, i]: task i scored after T domains (T = 0: base model).",
             "FR (forgetting rate): mean over earlier domains of (a[i, i] − a[N, i]), higher = more forgetting. "
             "Plasticity: a[i, i] − a[i−1, i], what learning domain i gave its own task. "
             f"Rise of the held-out {loss}: domain i's at the end minus right after stage i (nats).", ""]
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
    lines += [f"## Held-out {loss} (nats, on corpus documents never trained on)", "",
              "| method | final mean loss | rise (mean) | " + " | ".join(f"rise {d}" for d in names[:-1]) + " |",
              "|---|---:|---:|" + "---:|" * (len(names) - 1)]
    for spec, summary in results["summary"].items():
        s = summary["mlm_loss"]
        lines.append(f"| `{spec}` | {_pm(s['final_mean_loss'], 3)} | {_pm(s['rise'], 3)} | "
                     + " | ".join(_pm(r, 3) for r in s["rise_per_domain"]) + " |")
    lines += equal_learning_lines(results)
    lines += matched_gain_lines(results)
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


def _ratio(rise: dict[str, Any], gain: dict[str, Any] | None) -> str:
    """Mean rise / mean gain: nats forgotten on earlier domains per nat learned on the new one (n/a unless the
    method learned, i.e. a positive mean gain)."""
    if gain is None or gain["mean"] is None or rise["mean"] is None or gain["mean"] <= 0:
        return "n/a"
    return f"{rise['mean'] / gain['mean']:.2f}"


def equal_learning_lines(results: dict[str, Any]) -> list[str]:
    """results.md's "Equal learning" table: per method what it learned next to what it forgot, so that a method
    is only said to forget less at matched learning; and the two Pareto plots."""
    family = probe_family(results)
    loss = _loss_name(results)
    lines = ["", "## Equal learning", "",
             "A method forgets less only if it learned as much: compare forgetting at matched gain. "
             f"New-domain gain: held-out {loss} of domain i just before its stage minus just after it (nats, "
             "higher = learned more). Probe gain: plasticity, and FR: forgetting rate, of "
             f"{family} (points). Forgetting: the {loss} rise (nats, lower = forgot less); rise / gain: nats "
             "forgotten per nat learned. Right→wrong: % of an earlier domain's test examples the probe got right "
             "just after the domain was learned and wrong at the end (mean over those domains; n/a for runs "
             "scored before per-example results were recorded). × ncl step: the step cost ratio to `ncl`.", "",
             f"| method | new-domain gain (nats) | probe gain | forgetting: {loss} rise (nats) | rise / gain | FR | "
             "right→wrong (%) | final probe average | × ncl step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, summary in results["summary"].items():
        losses, probe = summary["mlm_loss"], summary[family]
        gain = losses.get("gain")  # absent from results.json files written before it was recorded
        flipped = summary.get("flips")
        ratio = results["cost"].get(spec, {}).get("ratio_to_ncl")
        lines.append(f"| `{spec}` | {_pm(gain, 3) if gain else 'n/a'} | {_pm(probe['plasticity'])} | "
                     f"{_pm(losses['rise'], 3)} | {_ratio(losses['rise'], gain)} | "
                     f"{_pm(probe['forgetting_rate'])} | {_pm(flipped['right_to_wrong']) if flipped else 'n/a'} | "
                     f"{_pm(probe['final_average'])} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", f"![Forgetting against learning, held-out {loss}]({PARETO_MLM_PNG}) "
                  f"![Forgetting against learning, {family}]({PARETO_PROBE_PNG})", "",
              f"Pareto plots: [{loss}]({PARETO_MLM_PNG}), [probe]({PARETO_PROBE_PNG}); one point per trained "
              "method (std over seeds as error bars); the dashed line joins the methods no other both learns more "
              "and forgets less than (filled markers)."]
    return lines


def matched_gain_lines(results: dict[str, Any]) -> list[str]:
    """results.md's "Matched gain" table: every curve over merge_alpha read at MATCHED_SHARE of ncl's gain."""
    readings = matched_gain(results, MATCHED_SHARE)
    if not readings:
        return ["", "## Matched gain", "", "No `ncl` with a recorded new-domain gain in this run: nothing to match "
                "the gain to."]
    target = readings[0].target
    lines = ["", "## Matched gain", "",
             f"Each curve (the methods that differ only in `merge_alpha`, a) read at {MATCHED_SHARE:.0%} of `ncl`'s "
             f"new-domain gain ({_pm(target, 3)} nats), by linear interpolation between the two a whose gains "
             "bracket it, seed by seed; mean ± std over the seeds that reach it. A curve of one point is read only "
             "at its own gain. das_eval/matched_gain.py.", "",
             f"| curve | a: gain (nats) | seeds reaching it | forgetting: {_loss_name(results)} rise (nats) | "
             "final probe average | "
             "FR | right→wrong (%) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in readings:
        points = ", ".join(f"{a:g}: {'n/a' if g['mean'] is None else format(g['mean'], '.3f')}"
                           for (a, _), g in zip(r.curve.points, r.gains, strict=True))
        values = [_pm(r.values[k], 3 if k == "rise" else 2) for k in ("rise", "final_average", "forgetting_rate",
                                                                       "right_to_wrong")]
        lines.append(f"| `{r.curve.label}` | {points} | {r.reached} of {r.seeds} | " + " | ".join(values) + " |")
    lines += ["", f"![Forgetting against gain along each curve]({MATCHED_GAIN_PNG})"]
    return lines


def matched_gain_png(results: dict[str, Any], path: Path) -> Path:
    """Each curve over merge_alpha as a line of (gain, MLM rise) and of (gain, final probe average), its points
    labelled with a; the target gain as a vertical line; each curve's reading there as a star."""
    from matplotlib.figure import Figure

    readings = matched_gain(results, MATCHED_SHARE)
    fig = Figure(figsize=(13.0, 5.0), layout="constrained")
    rise_ax, probe_ax = fig.subplots(1, 2)
    family = probe_family(results)
    for i, r in enumerate(readings):
        gains = [g["mean"] for g in r.gains]
        summaries = [results["summary"][spec] for _, spec in r.curve.points]
        for ax, key, ys in ((rise_ax, "rise", [s["mlm_loss"]["rise"]["mean"] for s in summaries]),
                            (probe_ax, "final_average", [s[family]["final_average"]["mean"] for s in summaries])):
            drawn = [(a, x, y) for (a, _), x, y in zip(r.curve.points, gains, ys, strict=True)
                     if x is not None and y is not None]  # one domain: no rise; older files: no gain
            if not drawn:
                continue
            ax.plot([x for _, x, _ in drawn], [y for _, _, y in drawn], "-" + CURVE_MARKERS[i % len(CURVE_MARKERS)],
                    color="black", fillstyle="none", linewidth=1, label=_label(r.curve.label, 72))
            for a, x, y in drawn:
                ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if r.values[key]["mean"] is not None:
                ax.plot(r.target["mean"], r.values[key]["mean"], "*", color="black", markersize=11)
    for ax, ylabel in ((rise_ax, f"forgetting: {_loss_name(results)} rise on earlier domains (nats; ↓ better)"),
                       (probe_ax, f"final probe average, {family} (points; ↑ better)")):
        if readings:
            ax.axvline(readings[0].target["mean"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(f"new-domain gain (nats); dashed: {MATCHED_SHARE:.0%} of ncl's", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
    if probe_ax.get_legend_handles_labels()[0]:
        probe_ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    fig.suptitle("Matched gain: each curve over the merge share a (labels), read at the dashed gain (stars)",
                 fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _pareto_points(results: dict[str, Any], x_of: Any, y_of: Any) -> list[tuple[str, dict, dict]]:
    """(spec, x stat, y stat) of every trained method whose summary has both means."""
    points = []
    for spec, summary in results["summary"].items():
        if results["methods"][spec]["kind"] == "base":
            continue
        x, y = x_of(summary), y_of(summary)
        if x is not None and y is not None and x["mean"] is not None and y["mean"] is not None:
            points.append((spec, x, y))
    return points


def pareto_mlm_png(results: dict[str, Any], path: Path) -> Path:
    """Forgetting (held-out loss rise) against learning (new-domain loss gain), one point per trained method; the
    loss is the run's (`loss_kind`: MLM or next-token)."""
    loss = _loss_name(results)
    points = _pareto_points(results, lambda s: s["mlm_loss"].get("gain"), lambda s: s["mlm_loss"]["rise"])
    return pareto_png(points, path, title=f"Equal learning, held-out {loss}",
                      xlabel=f"new-domain gain: {loss} drop when learned (nats; → higher = learned more)",
                      ylabel=f"forgetting: {loss} rise on earlier domains (nats; ↓ lower = forgot less)")


def pareto_probe_png(results: dict[str, Any], path: Path) -> Path:
    """Probe forgetting rate against probe plasticity, one point per trained method."""
    family = probe_family(results)
    points = _pareto_points(results, lambda s: s[family]["plasticity"], lambda s: s[family]["forgetting_rate"])
    return pareto_png(points, path, title=f"Equal learning, probe {family.split('/')[1]}",
                      xlabel=f"probe gain: plasticity, {family} (points; → higher = learned more)",
                      ylabel=f"forgetting: FR, {family} (points; ↓ lower = forgot less)")


def _label(spec: str, limit: int = 28) -> str:
    return spec if len(spec) <= limit else spec[:limit - 1] + "…"


def pareto_png(points: list[tuple[str, dict, dict]], path: Path, *, title: str, xlabel: str, ylabel: str) -> Path:
    """Points (spec, x stat, y stat) with std error bars, each its own marker and labelled; the Pareto front
    (higher x and lower y) filled and joined by a dashed line; readable in black and white."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.0), layout="constrained")
    ax = fig.subplots()
    front = pareto_front([(x["mean"], y["mean"]) for _, x, y in points])
    for i, (spec, x, y) in enumerate(points):
        ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="none", ecolor="grey", elinewidth=1,
                    capsize=3)
        ax.plot(x["mean"], y["mean"], MARKERS[i % len(MARKERS)], color="black", markersize=8,
                fillstyle="full" if i in front else "none", label=spec)
        ax.annotate(_label(spec), (x["mean"], y["mean"]), textcoords="offset points", fontsize=8,
                    xytext=(6, 6) if i % 2 == 0 else (6, -14))  # alternating sides: close points stay legible
    if front:
        ax.plot([points[i][1]["mean"] for i in front], [points[i][2]["mean"] for i in front], "k--",
                linewidth=1, label="Pareto front")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no trained method with both values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(f"{title} (better: right and down; filled = on the Pareto front)", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


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
