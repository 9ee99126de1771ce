"""Per-user quality metrics (pure numpy).

Spam is the positive class.  All functions take boolean ``is_spam`` truth and
real-valued scores (probabilities or log-odds: only their order matters for
AUC, while verdict metrics need a ``threshold`` on the same scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["roc_auc", "task_auc_errors", "macro_auc_error", "macro_weights", "macro_log_loss", "paired_gap", "rows_by_task", "roc_curve_points",
           "spam_caught_at_fpr", "binary_metrics"]


def roc_auc(is_spam: Any, scores: Any) -> float:
    """Area under the ROC curve, ties counted half; NaN unless both classes occur.

    Parameters
    ----------
    is_spam : array-like of bool, shape (n,)
    scores : array-like of float, shape (n,)

    Returns
    -------
    float

    Examples
    --------
    >>> roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(is_spam, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average ranks over ties (Mann-Whitney U).
    ranks = np.empty(len(s))
    start = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[start[1:], len(s)]
    avg = (start + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - start)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def task_auc_errors(is_spam: Any, scores: Any, tasks: Any) -> dict[Any, float]:
    """Each task's 100 * (1 - ROC AUC) (NaN for a task with one class), tasks sorted.

    Examples
    --------
    >>> task_auc_errors([1, 0, 1, 0, 0], [0.9, 0.2, 0.1, 0.3, 0.5], ["a", "a", "b", "b", "c"])
    {'a': 0.0, 'b': 100.0, 'c': nan}
    """
    y = np.asarray(is_spam, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    return {task: 100.0 * (1.0 - roc_auc(y[rows], s[rows])) for task, rows in rows_by_task(np.asarray(tasks))}


def macro_auc_error(is_spam: Any, scores: Any, tasks: Any) -> float:
    """Mean over tasks of 100 * (1 - ROC AUC), skipping tasks with one class (NaN if none)."""
    errors = [e for e in task_auc_errors(is_spam, scores, tasks).values() if not np.isnan(e)]
    return float(np.mean(errors)) if errors else float("nan")


def macro_weights(tasks: Any) -> np.ndarray:
    """Per-row weights that make a weighted sum the mean over tasks of each task's mean.

    Examples
    --------
    >>> macro_weights(np.array(["a", "a", "b"])).tolist()
    [0.25, 0.25, 0.5]
    """
    _, index, counts = np.unique(np.asarray(tasks), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[index])


def macro_log_loss(is_spam: Any, scores: Any, tasks: Any) -> float:
    """Mean over tasks of the mean logistic loss of the task's rows (``scores`` in log-odds)."""
    losses = np.logaddexp(0.0, -np.where(np.asarray(is_spam), 1.0, -1.0) * np.asarray(scores))
    return float(macro_weights(tasks) @ losses)


def paired_gap(weights: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """The weighted mean of paired per-row differences and its standard error,
    ``sqrt(sum(w_i^2 (d_i - gap)^2))`` (the rows independent, ``weights`` summing to 1).

    Examples
    --------
    >>> paired_gap(np.full(4, 0.25), np.array([1.0, 1.0, 3.0, 3.0]))
    (2.0, 0.5)
    """
    gap = float(weights @ diff)
    return gap, float(np.sqrt(np.sum(weights**2 * (diff - gap) ** 2)))


def rows_by_task(tasks: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """Each distinct task (sorted) and the indices of its rows, in their order (one sort, not a comparison of
    every row per task).

    Examples
    --------
    >>> [(t, rows.tolist()) for t, rows in rows_by_task(["b", "a", "b"])]
    [('a', [1]), ('b', [0, 2])]
    """
    t = np.asarray(tasks)
    order = np.argsort(t, kind="stable")
    names, starts = np.unique(t[order], return_index=True)
    return zip(names.tolist(), np.split(order, starts[1:]))


def roc_curve_points(is_spam: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and true-positive rates at every distinct threshold (for plots)."""
    y = np.asarray(is_spam, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def spam_caught_at_fpr(is_spam: Any, scores: Any, max_fpr: float = 0.001) -> float:
    """Largest spam recall with a threshold whose ham false-positive rate is <= max_fpr."""
    y = np.asarray(is_spam, dtype=bool)
    if not y.any() or y.all():
        return float("nan")
    fpr, tpr = roc_curve_points(y, scores)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max())


def binary_metrics(is_spam: Any, scores: Any, threshold: float) -> dict[str, float]:
    """ROC AUC, 1-AUC %, precision, recall, F1, ham FPR, spam caught at 0.1 % FPR.

    A message is called spam when ``score > threshold``.  Undefined values
    (e.g. precision with no spam verdicts) are NaN, never an exception.
    """
    y = np.asarray(is_spam, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s > threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    auc = roc_auc(y, s)
    return {
        "roc_auc": auc,
        "auc_error_pct": 100.0 * (1.0 - auc) if not np.isnan(auc) else nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ham_fpr": fp / (fp + tn) if fp + tn else nan,
        "spam_at_0.1pct_fpr": spam_caught_at_fpr(y, s, 0.001),
        "n_ham": int((~y).sum()),
        "n_spam": int(y.sum()),
    }
