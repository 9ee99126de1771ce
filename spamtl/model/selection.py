"""Choosing alpha and mu: K-fold cross-validation over a grid, and the one-standard-error rule.

The folds are independent plain functions (:func:`fit_fold`, :func:`cross_fit_fold`) that an executor runs
side by side (:mod:`spamtl.parallel`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.utils.validation import check_array

from spamtl.metrics import macro_auc_error, macro_weights, paired_gap
from spamtl.model.estimator import MultiTaskLogisticRegression
from spamtl.model.folds import stratified_folds
from spamtl.model.loss import ConvergenceWarning
from spamtl.model.refit import DUAL_MAX_ROWS, score_refitted_tasks
from spamtl.parallel import SerialExecutor, one_blas_thread, release, resolve, return_free_memory, share
from spamtl.rowfiles import release_pages

__all__ = ["HyperparameterSearch", "select_hyperparameters", "most_shared_within_one_se", "fit_fold",
           "cross_fit_fold", "SELECTION_RULES"]

Grid = list[tuple[float, float]]
FoldResult = tuple[Any, list[np.ndarray], list[MultiTaskLogisticRegression]]


@dataclass
class HyperparameterSearch:
    """Result of :func:`select_hyperparameters`."""

    alpha: float
    mu: float
    score: float
    """Mean over folds of the selection criterion (see ``scoring``) of the chosen setting; lower is better."""
    table: list[dict[str, float]] = field(default_factory=list)
    best_alpha: float = float("nan")
    best_mu: float = float("nan")
    """The setting with the lowest score (the choice under ``rule='min'``)."""
    oof_scores: np.ndarray | None = None
    """Out-of-fold decision scores of the chosen setting: each sample scored by the fit of the fold
    that held it out (NaN for samples no fold held out); what nightly training's gate and cutoffs use."""
    fold_models: dict[tuple[float, float], list[Any]] = field(default_factory=dict)
    """With ``keep_fold_models=True``: each (alpha, mu)'s fit of each fold, in the order of the splits,
    without the tasks' parts (:meth:`MultiTaskLogisticRegression.without_tasks`).  Nightly training refits
    every user's part from them instead of fitting the folds again, and starts its first final fit from
    their mean."""


SELECTION_RULES = ("one_se", "min")


def most_shared_within_one_se(table: list[dict[str, float]], se: str = "gap_se") -> dict[str, float]:
    """The row of a search ``table`` with the most sharing (largest mu, then the strongest regularisation, the
    largest alpha) whose log loss is within one standard error (column ``se``) of the best one's."""
    return max((r for r in table if r["gap_to_best"] <= r[se]), key=lambda r: (r["mu"], r["alpha"]))


def select_hyperparameters(X: Any, y: Any, tasks: Any, groups: Any = None, *,
                           alphas: Sequence[float] = (0.3, 1.0, 3.0),
                           mus: Sequence[float] = (10.0, 3.0, 1.0, 0.3, 0.1),
                           n_splits: int = 3, random_state: int = 0,
                           estimator: MultiTaskLogisticRegression | None = None,
                           cv: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
                           scoring: str = "log_loss", rule: str = "one_se",
                           executor: Executor | None = None, keep_fold_models: bool = False,
                           threads: int = 1, progress: Callable[[int], None] | None = None) -> HyperparameterSearch:
    """Choose alpha and mu by K-fold cross-validation stratified on (task, label).

    Within a fold the grid is walked from strong to weak regularisation (large alpha, large mu first), each
    fit warm-started from the previous one with the projected solver (many users); the joint solver fits each
    setting cold.  ``cv`` may give the (train, test) index pairs instead (:mod:`spamtl.model.folds`).  The
    folds are independent (:func:`fit_fold`): on an ``executor`` (:func:`spamtl.parallel.executor`) they run
    side by side with the same results, each fold's projected fit on ``threads`` threads.  ``progress`` is
    called with 1 as each fold's result is in (in this thread, in fold order).

    ``scoring='log_loss'`` (default) ranks by the held-out logistic loss averaged per task, then over tasks;
    ``'auc'`` by macro 1 - ROC AUC.  Near perfect separation AUC differences come down to a handful of
    misranked pairs; the log loss, a proper scoring rule, uses every message's margin.  The table reports both.

    ``rule='one_se'`` (default; needs ``scoring='log_loss'``) takes the most shared setting within one standard
    error of the best (:func:`most_shared_within_one_se`); ``'min'`` takes the best.  The standard error is
    that of the paired, per-message difference to the best setting, weighted as the criterion weighs
    messages: with a few dozen messages per user, settings that let users stray often win a fold by chance
    and lose on new mail (docs, "Choosing mu").

    Returns
    -------
    HyperparameterSearch
        The chosen (alpha, mu), its score, the best setting and the full table.
    """
    if scoring not in ("log_loss", "auc"):
        raise ValueError(f"scoring must be 'log_loss' or 'auc', got {scoring!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if rule == "one_se" and scoring != "log_loss":
        raise ValueError("rule='one_se' needs scoring='log_loss' (AUC has no per-message terms)")
    X = sp.csr_matrix(check_array(X, accept_sparse="csr", dtype=np.float64))
    release_pages(X)
    y, tasks = np.asarray(y), np.asarray(tasks)
    garr = None if groups is None else np.asarray(groups, dtype=object)
    splits = list(cv) if cv is not None else stratified_folds(tasks, y, n_splits, random_state)
    grid = [(a, m) for a in sorted(alphas, reverse=True) for m in sorted(mus, reverse=True)]
    base = estimator if estimator is not None else MultiTaskLogisticRegression()
    results = _run_folds((X, y, tasks, garr), splits, base, grid, executor, keep_fold_models, threads, progress)
    table, mean, oof = _tabulate(splits, results, y, tasks, grid, scoring)
    best = min(grid, key=lambda g: (mean[g], -g[0], -g[1]))
    chosen = best
    if rule == "one_se":
        pick = most_shared_within_one_se(table)
        chosen = (pick["alpha"], pick["mu"])
    return HyperparameterSearch(alpha=chosen[0], mu=chosen[1], score=mean[chosen], table=table,
                                best_alpha=best[0], best_mu=best[1], oof_scores=oof[chosen],
                                fold_models={g: [models[k] for _, _, models in results]
                                             for k, g in enumerate(grid) if keep_fold_models})


def _run_folds(data: tuple[Any, ...], splits: list[tuple[np.ndarray, np.ndarray]], base: MultiTaskLogisticRegression,
               grid: Grid, executor: Executor | None, keep_fold_models: bool, threads: int,
               progress: Callable[[int], None] | None) -> list[FoldResult]:
    """:func:`fit_fold` of every split on ``executor``, results in split order; ``progress(1)`` per fold."""
    pool = executor if executor is not None else SerialExecutor()
    payload = share(pool, data)
    try:
        futures, reported = [], []
        for train, test in splits:
            futures.append(pool.submit(fit_fold, payload, train, test, clone(base), grid, keep_fold_models, threads))
            reported.append(progress is not None and futures[-1].done())  # in-process: it ran already
            if progress is not None and reported[-1]:
                progress(1)
        results = []
        for future, was_reported in zip(futures, reported):
            results.append(future.result())
            if progress is not None and not was_reported:
                progress(1)
        return results
    finally:
        release(payload)


def _tabulate(splits: list[tuple[np.ndarray, np.ndarray]], results: list[FoldResult], y: np.ndarray,
              tasks: np.ndarray, grid: Grid,
              scoring: str) -> tuple[list[dict[str, float]], dict[tuple[float, float], float],
                                     dict[tuple[float, float], np.ndarray]]:
    """The search table (each setting's score, 1-AUC and paired gap to the best with its standard error),
    each setting's mean score over folds, and its out-of-fold scores."""
    scores: dict[tuple[float, float], list[float]] = {g: [] for g in grid}
    aucs: dict[tuple[float, float], list[float]] = {g: [] for g in grid}
    # Per held-out message, over all folds: its weight in the criterion and its loss under each setting.
    message_weights: list[np.ndarray] = []
    message_losses: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
    oof = {g: np.full(len(y), np.nan) for g in grid}
    for (_, test), (positive_class, fold_scores, _) in zip(splits, results):
        fold_weights = macro_weights(tasks[test])
        for g, p in zip(grid, fold_scores):
            oof[g][test] = p
            positive = y[test] == positive_class
            losses = np.logaddexp(0.0, -np.where(positive, 1.0, -1.0) * p)
            message_losses[g].append(losses)
            aucs[g].append(macro_auc_error(positive, p, tasks[test]))
            scores[g].append(float(fold_weights @ losses) if scoring == "log_loss" else aucs[g][-1])
        message_weights.append(fold_weights / len(splits))
    weights = np.concatenate(message_weights) if message_weights else np.zeros(0)
    mean = {g: float(np.nanmean(v)) for g, v in scores.items()}
    best = min(grid, key=lambda g: (mean[g], -g[0], -g[1]))
    best_losses = np.concatenate(message_losses[best])
    table = []
    for g in grid:
        gap, se = paired_gap(weights, np.concatenate(message_losses[g]) - best_losses)
        table.append({"alpha": g[0], "mu": g[1], "score": mean[g], "auc_error_pct": float(np.nanmean(aucs[g])),
                      "gap_to_best": gap, "gap_se": se})
    return table, mean, oof


def fit_fold(payload: Any, train: np.ndarray, test: np.ndarray, estimator: MultiTaskLogisticRegression,
             grid: Sequence[tuple[float, float]],
             keep_models: bool = False,
             threads: int = 1) -> tuple[Any, list[np.ndarray], list[MultiTaskLogisticRegression]]:
    """One cross-validation fold: fit on ``train`` rows for each (alpha, mu) of ``grid`` in order, each
    fit warm-started from the previous one where the solver allows (the projected one; see ``warm_start``),
    and score the ``test`` rows.

    ``payload`` is ``(X, y, tasks, groups)`` (or a :func:`spamtl.parallel.share` handle to it): the folds of a
    search are independent, so :func:`select_hyperparameters` runs them on an executor.  Returns the
    positive class, the test rows' decision scores under each setting, and (``keep_models``) each setting's fit
    without its tasks' parts (:meth:`MultiTaskLogisticRegression.without_tasks`; else an empty list).
    ``threads``: see ``fit`` (the same results).
    """

    X, y, tasks, garr = resolve(payload)
    est = clone(estimator).set_params(warm_start=True)  # never a fit another fold left behind (a leak)
    Xtr, ytr, ttr = X[train], y[train], tasks[train]
    gtr = None if garr is None else garr[train]
    Xte, tte = X[test], tasks[test]
    release_pages(X)  # the fold's rows are copies
    gte = None if garr is None else garr[test]
    scores, models = [], []
    for a, m in grid:
        est.set_params(alpha=a, mu=m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(Xtr, ytr, tasks=ttr, groups=gtr, threads=threads)
        scores.append(est.decision_function(Xte, tasks=tte, groups=gte))
        if keep_models:
            models.append(est.without_tasks().set_params(warm_start=False))
    return est.classes_[1], scores, models


def cross_fit_fold(payload: Any, fit_rows: np.ndarray, train: np.ndarray, test: np.ndarray,
                   estimator: MultiTaskLogisticRegression, fitted: bool = False,
                   dual_max_rows: int = DUAL_MAX_ROWS) -> np.ndarray:
    """One cross-fitting fold for many users: ``estimator`` fitted on ``fit_rows`` (a sample of the users'
    ``train`` rows), then every user's ``test`` rows scored by :func:`score_refitted_tasks` (their personal
    part refitted on their own ``train`` rows).  ``fitted=True``: ``estimator`` already is that fit (the
    search's fold, :attr:`HyperparameterSearch.fold_models`), so only the users' parts are refitted.
    ``dual_max_rows``: see :func:`spamtl.model.refit.score_refitted_tasks`.
    ``payload`` as for :func:`fit_fold`; returns the scores of ``test`` in order."""
    X, y, tasks, garr = resolve(payload)
    with one_blas_thread():  # the refits' batched Newton steps: faster so, and the trainer's threads beside
        est = estimator
        if not fitted:
            est = clone(estimator).set_params(warm_start=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                Xfit = X[fit_rows]
                release_pages(X)
                est.fit(Xfit, y[fit_rows], tasks=tasks[fit_rows], groups=None if garr is None else garr[fit_rows])
                del Xfit
        scores = score_refitted_tasks(payload, est, train, test, dual_max_rows=dual_max_rows)
    del est
    return_free_memory()  # a worker is done long before the final fit beside it
    return scores
