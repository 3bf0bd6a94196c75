"""Importance history of a version: summaries per layer and group, differences, heatmaps.

Reads safetensors with numpy only (the store knows nothing of torch or gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from das_formats.layout import GROUPS


def load_importance(path: Path) -> dict[str, np.ndarray]:
    tensors = load_file(str(path))
    return {g: tensors[g].astype(np.float32) for g in GROUPS}


def summarise(importance: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per group: per-layer mean and share of units above 0.5, plus the overall figures."""
    return {g: {"units_per_layer": int(t.shape[1]),
                "mean": [round(float(x), 6) for x in t.mean(1)],
                "share_above_half": [round(float(x), 6) for x in (t > 0.5).mean(1)],
                "overall_mean": round(float(t.mean()), 6),
                "overall_share_above_half": round(float((t > 0.5).mean()), 6)}
            for g, t in importance.items()}


def unit_values(importance: dict[str, np.ndarray]) -> dict[str, list[list[float]]]:
    """Per group: layers x units, each value rounded to 4 decimals (JSON for drawing, not for computing)."""
    return {g: np.round(t.astype(np.float64), 4).tolist() for g, t in importance.items()}


def added(cumulative: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """What a version added to the cumulative importance: I(<=t) - I(<=t-1) (>= 0 under EMax)."""
    if previous is None:
        return cumulative
    return {g: cumulative[g] - previous[g] for g in GROUPS}


def diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """b - a per group: per-layer mean change, largest change, and units that crossed 0.5."""
    result = {}
    for g in GROUPS:
        if a[g].shape != b[g].shape:
            raise ValueError(f"importance '{g}' shapes differ: {a[g].shape} vs {b[g].shape} (other model shapes)")
        delta = b[g] - a[g]
        result[g] = {"mean_change": [round(float(x), 6) for x in delta.mean(1)],
                     "max_abs_change": round(float(np.abs(delta).max()), 6),
                     "became_important": int(((a[g] <= 0.5) & (b[g] > 0.5)).sum()),
                     "stopped_being_important": int(((a[g] > 0.5) & (b[g] <= 0.5)).sum())}
    return result


@dataclass
class VersionImportance:
    """What a version trained against, what its domain needed, and what it hands on."""

    version: str
    cumulative: dict[str, np.ndarray]  # I(<=t)
    trained_against: dict[str, np.ndarray] | None  # I(<=t-1)
    domain: dict[str, np.ndarray] | None  # I(t)

    @property
    def added(self) -> dict[str, np.ndarray]:
        return added(self.cumulative, self.trained_against)

    def report(self, units: bool = False) -> dict[str, Any]:
        """Summaries per layer; with `units`, also every unit's value under "units" (what a page draws heatmaps of)."""
        result = {"version": self.version, "cumulative": summarise(self.cumulative), "added": summarise(self.added)}
        if self.domain is not None:
            result["domain"] = summarise(self.domain)
        if units:
            kinds = {"cumulative": self.cumulative, "added": self.added}
            if self.domain is not None:
                kinds["domain"] = self.domain
            result["units"] = {kind: unit_values(imp) for kind, imp in kinds.items()}
        return result

    def heatmap(self, path: Path) -> Path:
        return heatmap_png([("cumulative", self.cumulative), ("added", self.added)], path,
                           f"importance of {self.version}")


def version_importance(store, version: str) -> VersionImportance | None:
    """The importance files of a version, or None for a version without (the base model)."""
    path = store.importance_file(version)
    if path is None:
        return None

    def optional(kind: str) -> dict[str, np.ndarray] | None:
        found = store.importance_file(version, kind)
        return load_importance(found) if found else None

    return VersionImportance(version, load_importance(path), optional("importance_in"),
                             optional("domain_importance"))


def heatmap_png(rows: list[tuple[str, dict[str, np.ndarray]]], path: Path, title: str) -> Path:
    """One heatmap (layers x units) per group and row, e.g. [("cumulative", I), ("added", dI)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(GROUPS), figsize=(15, 1.2 + 2.0 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3, 2]}, layout="constrained")
    for r, (label, imp) in enumerate(rows):
        for c, g in enumerate(GROUPS):
            ax = axes[r][c]
            image = ax.imshow(imp[g], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{label}: {g}", fontsize=10)
            ax.set_ylabel("layer")
            if r == len(rows) - 1:
                ax.set_xlabel("unit")
            ax.set_yticks(range(imp[g].shape[0]))
            if imp[g].shape[1] <= 32:
                ax.set_xticks(range(imp[g].shape[1]))
    fig.colorbar(image, ax=axes, shrink=0.8, label="importance")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
