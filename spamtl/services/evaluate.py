"""Compare the multi-task model with the two single-task baselines on the store's labels.

Systems, fitted on identical training splits and scored on identical test splits:

- ``mtl``: MultiTaskLogisticRegression (mu chosen as nightly training does);
- ``pooled``: one logistic regression for everyone;
- ``per_user``: one logistic regression per user.

Splits are task-stratified K-fold (every fold holds part of each user's ham
and spam), or chronological (each user's older mail trains, the newest 30 %
of their ham and of their spam tests).  The active model is never touched.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Engine

from spamtl.errors import UsageError
from spamtl.features import IdfWeights
from spamtl.metrics import binary_metrics, roc_curve_points
from spamtl.model.folds import chronological_split, stratified_folds
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.services.dataset import TrainingData, load_training_data
from spamtl.services.training import base_params, choose_params, fit_model, min_df_mask
from spamtl.settings import Settings
from spamtl.store.engine import check_schema

__all__ = ["SYSTEMS", "Evaluation", "evaluate"]

SYSTEMS = ("mtl", "pooled", "per_user")
CHRONOLOGICAL_TEST_FRACTION = 0.3


@dataclass
class Evaluation:
    users: dict[str, dict[str, Any]]
    macro: dict[str, dict[str, float]]
    splits: str
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"users": self.users, "macro": self.macro, "splits": self.splits}


def _splits(data: TrainingData, folds: int, chronological: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if chronological:
        return [chronological_split(data.users, data.y, data.recency, CHRONOLOGICAL_TEST_FRACTION, 1)]
    return stratified_folds(data.users, data.y, folds, seed)


def _logistic(alpha: float, X: sp.csr_matrix, y: np.ndarray, X_test: sp.csr_matrix, idf: bool) -> np.ndarray:
    """Scores of X_test by a single-task L2 logistic regression on the same features as the MTL model."""
    from sklearn.linear_model import LogisticRegression

    weighting = IdfWeights.fit(X) if idf else None
    if weighting is not None:
        X, X_test = weighting.transform(X), weighting.transform(X_test)
    return np.asarray(LogisticRegression(C=1.0 / alpha, max_iter=2000).fit(X, y).decision_function(X_test))


def _fit_baselines(train: TrainingData, test: TrainingData, alpha: float, idf: bool) -> dict[str, np.ndarray]:
    X = min_df_mask(train.X)
    out = {"pooled": _logistic(alpha, X, train.y, test.X, idf)}
    per_user = np.zeros(len(test.y))
    for user in np.unique(test.users):
        rows, test_rows = train.users == user, test.users == user
        labels = np.unique(train.y[rows])
        if len(labels) < 2:  # one class only: all a per-user model can say is that class
            per_user[test_rows] = 10.0 if len(labels) and labels[0] == 1 else -10.0
            continue
        per_user[test_rows] = _logistic(alpha, X[rows], train.y[rows], test.X[test_rows], idf)
    out["per_user"] = per_user
    return out


def evaluate(engine: Engine, settings: Settings, *, users: Sequence[str] | None = None, folds: int = 3,
             chronological: bool = False, progress: Progress = NO_PROGRESS,
             with_curves: bool = False) -> Evaluation:
    """Per-user and macro-averaged metrics of the three systems on the same splits.

    ``progress`` hears the stages: load (messages), folds (each fits the three systems).
    """
    if folds < 2:
        raise UsageError("--folds must be at least 2")
    check_schema(engine)
    progress.stage("load", unit="messages")
    data = load_training_data(engine, settings.features, progress=progress)
    if len(data.y) == 0:
        raise UsageError("no labelled mail yet; add some with `spamtl import USER PATH --label spam|ham`")
    known = set(data.users.tolist())
    wanted = list(users) if users else sorted(known)
    unknown = [u for u in wanted if u not in known]
    if unknown:
        raise UsageError(f"no labelled mail for user {unknown[0]!r}; see `spamtl users`")
    if len(np.unique(data.y)) < 2:
        raise UsageError("evaluation needs both spam and ham labels")
    scores = {s: np.full(len(data.y), np.nan) for s in SYSTEMS}
    n_train = {u: 0 for u in wanted}
    splits = _splits(data, folds, chronological, settings.seed)
    base = base_params(settings)
    progress.stage("folds", len(splits), unit="folds", labels=len(data.y), users=data.n_users)
    for train_idx, test_idx in splits:
        train, test = data.subset(train_idx), data.subset(test_idx)
        if len(np.unique(train.y)) < 2:
            progress.advance(1)
            continue
        for u in wanted:
            n_train[u] += int((train.users == u).sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = choose_params(train, settings, base)
            model = fit_model(train, params)
            groups = test.groups if any(g is not None for g in test.groups) else None
            scores["mtl"][test_idx] = model.decision_function(test.X, tasks=test.users, groups=groups)
            for name, s in _fit_baselines(train, test, params["alpha"], settings.idf).items():
                scores[name][test_idx] = s
        progress.advance(1)
    n_train = {u: round(n / len(splits)) for u, n in n_train.items()}
    report, macro, curves = _report(data, wanted, scores, n_train, settings, with_curves)
    how = "chronological (newest 30 % of each user's ham and spam tested)" if chronological else f"{folds}-fold"
    return Evaluation(users=report, macro=macro, splits=how, curves=curves)


def _report(data: TrainingData, wanted: list[str], scores: dict[str, np.ndarray], n_train: dict[str, int],
            settings: Settings, with_curves: bool) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]],
                                                            dict[str, dict[str, tuple[list[float], list[float]]]]]:
    """Per-user metrics of every system, their macro means, and (``with_curves``) ROC curves."""
    cutoff = float(np.log(settings.spam_cutoff / (1 - settings.spam_cutoff)))  # probability -> log-odds
    report: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for user in wanted:
        rows = (data.users == user) & ~np.isnan(scores["mtl"])
        y = data.y[rows] == 1
        entry: dict[str, Any] = {"n_train": n_train[user], "n_test": int(rows.sum())}
        if y.all() or not y.any():
            entry["note"] = f"only {'spam' if y.any() else 'ham'} labels: AUC and false-positive rate undefined"
        for system in SYSTEMS:
            entry[system] = binary_metrics(y, scores[system][rows], cutoff)
            if with_curves and 0 < y.sum() < len(y):
                fpr, tpr = roc_curve_points(y, scores[system][rows])
                curves.setdefault(user, {})[system] = (fpr.tolist(), tpr.tolist())
        report[user] = entry
    macro = {system: {metric: _nanmean([report[u][system][metric] for u in wanted])
                      for metric in ("roc_auc", "auc_error_pct", "precision", "recall", "f1", "ham_fpr",
                                     "spam_at_0.1pct_fpr")} for system in SYSTEMS}
    return report, macro, curves


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
