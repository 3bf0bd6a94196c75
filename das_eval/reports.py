"""Reports of a results.json: results.md (tables) and the plots (a[T, i] heatmaps, final average and FR)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .files import RESULTS_JSON, RESULTS_MD, write_json
from .methods import method_folder

FAMILY_TITLES = {
    "probe/macro_f1": "End tasks, probe on frozen features: macro-F1 (points)",
    "probe/accuracy": "End tasks, probe on frozen features: accuracy (points)",
    "finetune/macro_f1": "End tasks, fine-tuned: macro-F1 (points)",
    "finetune/accuracy": "End tasks, fine-tuned: accuracy (points)",
}


def write_reports(results: dict[str, Any], out: Path) -> None:
    write_json(out / RESULTS_JSON, results)
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
