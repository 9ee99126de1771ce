"""Nightly training: fit a candidate, compare it with the active model, promote atomically."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.config import Settings
from spamtl.errors import NoModelError, UsageError
from spamtl.metrics import macro_auc_error, roc_auc
from spamtl.services.dataset import TrainingData, load_training_data
from spamtl.services.models import load_weights, save_weights
from spamtl.store.db import check_schema, translate_errors

__all__ = ["TrainResult", "train", "holdout_split", "fit_model", "min_df_mask", "choose_params"]

Stage = Callable[[str, int | None], None]


@dataclass
class TrainResult:
    version: int | None
    promoted: bool
    reason: str
    users: int
    messages: int
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    pruned: dict[str, Any] = field(default_factory=dict)  # what retention removed after training

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "promoted": self.promoted, "reason": self.reason, "users": self.users,
                "messages": self.messages, "metrics": self.metrics, "seconds": round(self.seconds, 2),
                "pruned": self.pruned}


def holdout_split(data: TrainingData, fraction: float, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """The most recent ``fraction`` of each user's ham and of their spam (at least ``minimum`` each).

    Ham and spam are cut separately so the held-out set has both classes even
    where one class is all newer than the other.  A (user, label) with fewer
    than 2 * minimum messages stays entirely in training.
    """
    train: list[int] = []
    hold: list[int] = []
    for user in np.unique(data.users):
        for label in (0, 1):
            idx = np.flatnonzero((data.users == user) & (data.y == label))
            idx = idx[np.argsort(data.recency[idx], kind="stable")]
            k = max(minimum, int(round(fraction * len(idx)))) if len(idx) >= 2 * minimum else 0
            train.extend(idx[:len(idx) - k])
            hold.extend(idx[len(idx) - k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(hold, dtype=np.int64))


def min_df_mask(X: sp.csr_matrix, min_df: int = 2) -> sp.csr_matrix:
    """X with columns that occur in fewer than ``min_df`` rows removed (zeroed).

    Features seen once carry no evidence that generalises and make the model
    bigger and slower; dropping them is a data-preparation step, so the
    estimator itself stays exactly the objective of DESIGN §2.
    """
    df = np.bincount(X.indices, minlength=X.shape[1])
    X = X.copy()
    X.data[df[X.indices] < min_df] = 0.0
    X.eliminate_zeros()
    return X


def base_params(settings: Settings) -> dict[str, Any]:
    """The estimator settings that do not depend on the data (alpha and mu are chosen per fit)."""
    return {"task_weighting": settings.task_weighting, "tol": settings.tol, "max_iter": settings.max_iter,
            "idf": settings.idf}


def fit_model(data: TrainingData, params: dict[str, Any], warm: Any = None) -> Any:
    """Fit MultiTaskLogisticRegression on ``data`` (optionally warm-started from a fitted estimator)."""
    from spamtl.model import MultiTaskLogisticRegression

    est = warm if warm is not None else MultiTaskLogisticRegression()
    est.set_params(**params, warm_start=warm is not None)
    groups = data.groups if any(g is not None for g in data.groups) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.fit(min_df_mask(data.X), data.y, tasks=data.users, groups=groups)
    return est


def _scores(est: Any, data: TrainingData) -> np.ndarray:
    groups = data.groups if any(g is not None for g in data.groups) else None
    return np.asarray(est.decision_function(data.X, tasks=data.users, groups=groups))


def _per_user_auc(y: np.ndarray, scores: np.ndarray, users: np.ndarray) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for user in np.unique(users):
        m = users == user
        auc = roc_auc(y[m] == 1, scores[m])
        out[str(user)] = None if np.isnan(auc) else round(100 * (1 - auc), 4)
    return out


def choose_params(data: TrainingData, settings: Settings, base: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Choose alpha and mu on a chronological validation split of the training part."""
    from spamtl.model import select_hyperparameters

    inner_train, inner_val = holdout_split(data, settings.holdout_fraction, settings.holdout_min)
    if len(inner_val) == 0 or len(settings.alphas) * len(settings.mus) == 1:
        return {**base, "alpha": settings.alphas[0], "mu": settings.mus[0]}, []
    from spamtl.model import MultiTaskLogisticRegression

    groups = data.groups if any(g is not None for g in data.groups) else None
    search = select_hyperparameters(min_df_mask(data.X), data.y, data.users, groups, alphas=settings.alphas,
                                    mus=settings.mus, cv=[(inner_train, inner_val)],
                                    estimator=MultiTaskLogisticRegression(**base))
    return {**base, "alpha": search.alpha, "mu": search.mu}, search.table


def train(engine: Engine, settings: Settings, *, now: datetime, stage: Stage | None = None,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Fit on current labels, evaluate against the active model on recent held-out mail, maybe promote.

    The most recent share of each user's ham and spam is held out; neither the
    candidate nor (being an earlier candidate) the active model was trained on
    it, so the comparison is fair.  Feedback refits of a user's personal part
    use all of that user's labels, so recent corrections still count at once.

    Nothing is written until the very end, where the new version (and, if it
    wins, its promotion) is one transaction: a crash at any point leaves the
    active model as it was.

    Only one training runs at a time: a second one raises
    :class:`~spamtl.services.lock.LockBusyError` (exit code 75) at once.
    Afterwards the retention settings are applied (``spamtl prune``), in a
    transaction of their own.
    """
    from spamtl.services.lock import hold
    from spamtl.services.retention import prune

    check_schema(engine)
    with hold(engine, "train", what="train"):
        result = _train(engine, settings, now=now, stage=stage, progress=progress)
        if stage is not None:
            stage("applying retention", None)
        result.pruned = prune(engine, settings, now=now).as_dict()
        return result


def _train(engine: Engine, settings: Settings, *, now: datetime, stage: Stage | None,
           progress: Callable[[int], None] | None) -> TrainResult:
    started = time.monotonic()

    def say(text: str, total: int | None = None) -> None:
        if stage is not None:
            stage(text, total)

    say("loading labels and features")
    data = load_training_data(engine, settings.features, progress=progress)
    if len(data.y) == 0:
        raise UsageError("no labelled mail yet; add some with `spamtl import USER PATH --label spam|ham`")
    if len(np.unique(data.y)) < 2:
        raise UsageError("training needs both spam and ham labels; import some of each")

    try:
        active_version, active_key, active_weights = load_weights(engine)
    except NoModelError:
        active_version, active_key, active_weights = None, None, None
    active_est = None
    if active_weights is not None and active_key == settings.features.key:
        from spamtl.model import MultiTaskLogisticRegression

        active_est = MultiTaskLogisticRegression.from_weights(active_weights)

    train_idx, hold_idx = holdout_split(data, settings.holdout_fraction, settings.holdout_min)
    train_part, hold = data.subset(train_idx), data.subset(hold_idx)
    base = base_params(settings)
    say("choosing hyper-parameters")
    params, table = choose_params(train_part, settings, base)
    say(f"fitting candidate (alpha={params['alpha']:g}, mu={params['mu']:g})")
    warm = _copy(active_est)
    candidate = fit_model(train_part, params, warm)

    metrics: dict[str, Any] = {"holdout_messages": int(len(hold_idx)), "train_messages": int(len(train_idx)),
                               "alpha": params["alpha"], "mu": params["mu"], "search": table}
    promoted, reason = True, "first model" if active_version is None else ""
    if len(hold_idx):
        cand_scores = _scores(candidate, hold)
        cand_err = macro_auc_error(hold.y == 1, cand_scores, hold.users)
        metrics["candidate_auc_error_pct"] = cand_err
        metrics["candidate_per_user"] = _per_user_auc(hold.y, cand_scores, hold.users)
        if active_version is not None:
            if active_est is None:
                reason = "features changed since the active model; promoting the retrained model"
            else:
                act_err = macro_auc_error(hold.y == 1, _scores(active_est, hold), hold.users)
                metrics["active_version"] = active_version
                metrics["active_auc_error_pct"] = act_err
                if np.isnan(cand_err) or np.isnan(act_err) or cand_err <= act_err + settings.promote_tolerance:
                    reason = (f"candidate 1-AUC {cand_err:.4f}% is not worse than active v{active_version} "
                              f"({act_err:.4f}%) on {len(hold_idx)} recent held-out messages")
                else:
                    promoted = False
                    reason = (f"candidate 1-AUC {cand_err:.4f}% is worse than active v{active_version} "
                              f"({act_err:.4f}%) on {len(hold_idx)} recent held-out messages; keeping v{active_version}")
    elif active_version is not None:
        reason = "too little labelled mail to hold any out; promoting the model trained on everything"

    # The stored model is exactly the evaluated candidate, trained without the
    # recent held-out mail.  Refitting on everything would let tomorrow's
    # comparison score the active model on mail it has already seen.
    weights = candidate.to_weights()
    say("saving")
    with translate_errors(), Session(engine) as session, session.begin():
        version = save_weights(session=session, weights=weights, feature_key=settings.features.key,
                               status="active" if promoted else "rejected", now=now, metrics=metrics,
                               n_messages=len(data.y), note=reason)
    return TrainResult(version=version, promoted=promoted, reason=reason, users=data.n_users,
                       messages=int(len(data.y)), metrics=metrics, seconds=time.monotonic() - started)


def _copy(est: Any) -> Any:
    if est is None:
        return None
    from spamtl.model import MultiTaskLogisticRegression

    return MultiTaskLogisticRegression.from_weights(est.to_weights())
