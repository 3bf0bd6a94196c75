"""Scores of one version's predictions on an end task (macro-F1 and accuracy, in points) and the forgetting gate:
whether a candidate's drop against a reference is both over the limit and beyond the eval set's sampling noise
(a paired bootstrap over the examples). numpy only: no model is involved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class TaskScores:
    macro_f1: float  # points, 0-100
    accuracy: float  # points, 0-100
    n: int
    predictions: list[int]  # kept so the gate can pair two versions' predictions example by example


@dataclass
class BootstrapResult:
    drop: float  # macro-F1 of the old predictions minus the new ones, on the whole eval set (points)
    low: float  # 2.5th percentile of the drop over paired bootstrap resamples
    high: float  # 97.5th percentile
    samples: int


@dataclass
class GateDecision:
    """Whether a candidate version is refused for forgetting one task.

    noise = drop - low: how far the 95% bootstrap interval of the drop reaches below the observed
    drop. The drop is significant when it exceeds its noise (low > 0). A candidate is rejected only
    when drop > max_drop and the drop is significant.
    """

    task: str
    reference_f1: float  # macro-F1, points, of the reference version's predictions
    candidate_f1: float
    drop: float  # reference_f1 - candidate_f1
    noise: float
    low: float  # the 95% interval of the drop
    high: float
    max_drop: float
    rejected: bool
    reason: str


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> float:
    """Macro-F1 in points (0-100), averaged over the labels present in y_true or y_pred (as sklearn)."""
    true, pred = _label_arrays(y_true, y_pred, n_labels)
    return float(_macro_f1_rows(true[None], pred[None], n_labels)[0])


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of exact matches, in points (0-100)."""
    true, pred = _label_arrays(y_true, y_pred, None)
    return float((true == pred).mean() * 100)


def score(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> TaskScores:
    """Macro-F1 and accuracy of one version's predictions, which are kept for the gate."""
    return TaskScores(macro_f1(y_true, y_pred, n_labels), accuracy(y_true, y_pred), len(y_true),
                      [int(p) for p in y_pred])


def paired_bootstrap_drop(y_true: Sequence[int], pred_old: Sequence[int], pred_new: Sequence[int], n_labels: int,
                          *, samples: int = 1000, seed: int = 0) -> BootstrapResult:
    """The macro-F1 drop from pred_old to pred_new, with a 95% percentile interval over resamples
    of the eval examples (both systems scored on the same resample each time)."""
    true, old = _label_arrays(y_true, pred_old, n_labels)
    _, new = _label_arrays(y_true, pred_new, n_labels)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    drops = []
    chunk = max(1, 2_000_000 // len(true))  # resamples per chunk: bounded memory for large eval sets
    for start in range(0, samples, chunk):
        index = rng.integers(0, len(true), size=(min(chunk, samples - start), len(true)))  # (S, N)
        drops.append(_macro_f1_rows(true[index], old[index], n_labels)
                     - _macro_f1_rows(true[index], new[index], n_labels))
    low, high = np.percentile(np.concatenate(drops), [2.5, 97.5])
    drop = macro_f1(true, old, n_labels) - macro_f1(true, new, n_labels)
    return BootstrapResult(drop, float(low), float(high), samples)


def gate(task: str, y_true: Sequence[int], pred_reference: Sequence[int], pred_candidate: Sequence[int],
         n_labels: int, max_drop: float, *, samples: int = 1000, seed: int = 0) -> GateDecision:
    """Refuse the candidate when its macro-F1 on `task` fell below the reference's by more than max_drop points and
    by more than sampling noise (the bootstrap interval of the drop lies above 0)."""
    boot = paired_bootstrap_drop(y_true, pred_reference, pred_candidate, n_labels, samples=samples, seed=seed)
    true, reference = _label_arrays(y_true, pred_reference, n_labels)
    reference_f1 = macro_f1(true, reference, n_labels)
    candidate_f1 = reference_f1 - boot.drop
    significant = boot.low > 0
    rejected = boot.drop > max_drop and significant
    figures = (f"task {task!r}: macro-F1 {reference_f1:.2f} (reference) -> {candidate_f1:.2f}"
               f", a drop of {boot.drop:.2f} points "
               f"(95% interval {boot.low:.2f} to {boot.high:.2f}; at most {max_drop:.2f} allowed)")
    if rejected:
        reason = f"{figures}: rejected, the drop exceeds the limit and the noise"
    elif boot.drop > max_drop:
        reason = f"{figures}: kept, the drop exceeds the limit but is within sampling noise"
    else:
        reason = f"{figures}: kept, the drop is within the limit"
    return GateDecision(task, reference_f1, candidate_f1, boot.drop, boot.drop - boot.low, boot.low, boot.high,
                        max_drop, rejected, reason)


def _label_arrays(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Both as int64 arrays (N,), checked: same non-zero length, ids within [0, n_labels)."""
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if true.ndim != 1 or true.shape != pred.shape or len(true) == 0:
        raise ValueError(f"need two equally long, non-empty lists of label ids; got {len(true)} and {len(pred)}")
    if n_labels is not None:
        for what, ids in (("y_true", true), ("y_pred", pred)):
            if ids.min() < 0 or ids.max() >= n_labels:
                raise ValueError(f"{what} holds label ids outside 0..{n_labels - 1}")
    return true, pred


def _macro_f1_rows(true: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro-F1 (points) of each row: true, pred (S, N) -> (S,).

    Per label F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (#true + #pred), averaged over the labels with
    #true + #pred > 0 (a label only predicted counts as 0, as in sklearn).
    """
    rows = np.arange(true.shape[0])[:, None] * n_labels  # (S, 1): each row's own block of counts
    size = true.shape[0] * n_labels

    def counts(ids: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights.ravel()
        return np.bincount((rows + ids).ravel(), weights=w, minlength=size).reshape(-1, n_labels)  # (S, L)

    tp = counts(true, (true == pred).astype(np.float64))
    support = counts(true) + counts(pred)  # 2 TP + FP + FN
    present = support > 0
    f1 = np.divide(2 * tp, support, out=np.zeros_like(tp), where=present)
    return f1.sum(1) / present.sum(1) * 100
