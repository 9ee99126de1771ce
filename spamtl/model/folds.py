"""Splitting labelled rows into training and held-out parts (numpy only, plus scikit-learn's splitter).

Three splitters, one shape: each takes the rows' tasks and labels (and what else it splits by) as arrays and
returns ``(train, test)`` pairs of sorted row-index arrays, every row in at most one test part.

- :func:`stratified_folds`: K folds stratified on (task, label), for model selection and ``spamtl evaluate``;
- :func:`grouped_folds`: K folds that keep the rows of one message together, for nightly cross-fitting;
- :func:`chronological_split`: the newest part of each task's ham and spam held out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_folds", "grouped_folds", "chronological_split"]

Split = tuple[np.ndarray, np.ndarray]


def _strata(tasks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's (task, label) stratum as an index."""
    keys = np.char.add(np.char.add(np.asarray(tasks).astype(str), "\x00"), np.asarray(y).astype(str))
    return np.unique(keys, return_inverse=True)[1]


def stratified_folds(tasks: np.ndarray, y: np.ndarray, n_splits: int, seed: int) -> list[Split]:
    """``n_splits`` shuffled folds stratified on (task, label), so every fold holds a share of every task's
    ham and spam; strata with fewer than ``n_splits`` rows are pooled into one (scikit-learn's
    ``StratifiedKFold``, ``random_state=seed``).

    Examples
    --------
    >>> tasks = np.repeat(["ann", "bob"], 6); y = np.tile([0, 1], 6)
    >>> [len(test) for _, test in stratified_folds(tasks, y, 3, seed=0)]
    [4, 4, 4]
    """
    from sklearn.model_selection import StratifiedKFold

    strata = _strata(tasks, y)
    counts = np.bincount(strata)
    strata = np.where(counts[strata] >= n_splits, strata, -1)
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(strata)), strata))


def grouped_folds(tasks: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[Split]:
    """``n_splits`` folds, every row in exactly one test fold, all rows of a group (a message) together.

    Grouping by message matters: a spam campaign labelled by five users must not be scored for one of them by
    a fit that saw it labelled by the other four.  Within that constraint each (task, label) is spread evenly
    over the folds: the messages are visited in a seeded random order, each going to the fold with the fewest
    rows of its first row's stratum (then the fewest rows, then the lowest number).  Empty when a class has
    fewer than ``n_splits`` rows, or a fold would lack a class or a test row (nothing to cross-fit).
    """
    n = len(y)
    if n_splits < 2 or min(int((y == 0).sum()), int((y == 1).sum())) < n_splits:
        return []
    strata = _strata(tasks, y)
    per_stratum = np.zeros((strata.max() + 1, n_splits), dtype=np.int64)
    total = np.zeros(n_splits, dtype=np.int64)
    fold_of_group: dict[int, int] = {}
    fold = np.empty(n, dtype=np.int64)
    rows_of: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        rows_of.setdefault(g, []).append(i)
    for i in np.random.default_rng(seed).permutation(n):
        g = int(groups[i])
        if g not in fold_of_group:
            f = int(np.lexsort((np.arange(n_splits), total, per_stratum[strata[i]]))[0])
            fold_of_group[g] = f
            for j in rows_of[g]:
                per_stratum[strata[j], f] += 1
                total[f] += 1
        fold[i] = fold_of_group[g]
    folds = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_splits)]
    if any(len(np.unique(y[tr])) < 2 or len(te) == 0 for tr, te in folds):
        return []
    return folds


def chronological_split(tasks: np.ndarray, y: np.ndarray, recency: np.ndarray, fraction: float,
                        minimum: int) -> Split:
    """The most recent ``fraction`` of each task's ham and of its spam held out (at least ``minimum`` each).

    Ham and spam are cut separately so the held-out part has both classes even where one class is all newer
    than the other.  A (task, label) with fewer than 2 * minimum rows stays entirely in training.
    """
    train: list[int] = []
    test: list[int] = []
    for task in np.unique(tasks):
        for label in (0, 1):
            idx = np.flatnonzero((tasks == task) & (y == label))
            idx = idx[np.argsort(recency[idx], kind="stable")]
            k = max(minimum, int(round(fraction * len(idx)))) if len(idx) >= 2 * minimum else 0
            train.extend(idx[:len(idx) - k])
            test.extend(idx[len(idx) - k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))
