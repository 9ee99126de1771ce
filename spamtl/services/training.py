"""Nightly training: labels -> features -> choose mu (cross-fitting) -> fit on all labels -> gate -> cutoffs
-> promote, each step a function a test (or a replay) can call.

The gate compares the candidate's cross-fitted scores with the active model's logged scores of the same
mail before it was labelled, as a non-inferiority test (docs/training.md); cutoffs come from the same
out-of-sample scores.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Engine

from spamtl import parallel
from spamtl.errors import DamagedModelError, NoModelError, UsageError
from spamtl.metrics import macro_auc_error, macro_weights, paired_gap, task_auc_errors
from spamtl.model.folds import chronological_split, grouped_folds
from spamtl.parallel import SerialExecutor, release, return_free_memory, share
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.rowfiles import column_counts, map_rows, remove_rows, scratch_directory
from spamtl.services.cutoffs import Cutoff, choose_cutoffs
from spamtl.services.dataset import TrainingData, load_training_data
from spamtl.services.models import load_weights, save_weights, version_info
from spamtl.settings import Settings
from spamtl.store import queries
from spamtl.store.engine import check_schema, transaction

__all__ = ["TrainResult", "ActiveModel", "Choice", "GateDecision", "train", "load_labels",
           "prepare_features", "cross_fit_folds", "choose_mu", "search_sample", "reused_choice",
           "one_se_for_all_users", "cross_fit_and_fit", "mean_shared_part", "choose_and_fit", "fit_candidate",
           "load_active", "active_scores", "gate", "save_version", "fit_model", "min_df_mask",
           "choose_params", "base_params", "EXIT_REFUSED"]

EXIT_REFUSED = 3
"""`spamtl train` exit code when the gate refuses the candidate (the active model stays), for cron alerts."""
_PROB_CLIP = 1e-6  # log loss of a logged probability of exactly 0 or 1 would be infinite
_TIE = 1e-9  # nats: differences this small are rounding (probability <-> log-odds), i.e. a tie


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


# ------------------------------------------------------------------ step 1: labels
def load_labels(engine: Engine, settings: Settings, progress: Progress = NO_PROGRESS, *,
                now: datetime | None = None, directory: str | None = None,
                batch_rows: int | None = None) -> TrainingData:
    """Every current label with its message's features (the one place training reads labelled mail).

    With ``now`` and ``settings.autolearn`` on, the verdicts of the last
    ``autolearn_days`` that are at least ``autolearn_after_hours`` old and
    that nobody corrected are learned too (README, "Learning from uncorrected
    verdicts"); they are marked so the gate and the cutoffs leave them out.
    With ``directory`` the rows are kept in files there (:mod:`spamtl.rowfiles`), read ``batch_rows`` labels
    at a time (default ``rowfiles.BATCH_ROWS``).
    """
    window = settings.autolearn_window(now) if now is not None else None
    data = load_training_data(engine, settings.features, progress=progress, uncorrected=window, directory=directory,
                              batch_rows=batch_rows)
    if len(data.y) == 0:
        raise UsageError("no labelled mail yet; add some with `spamtl import USER PATH --label spam|ham`")
    if len(np.unique(data.y)) < 2:
        raise UsageError("training needs both spam and ham labels; import some of each")
    return data


# ------------------------------------------------------- step 2: feature preparation
def min_df_mask(X: sp.csr_matrix, min_df: int = 2, directory: str | None = None,
                batch_rows: int | None = None) -> sp.csr_matrix:
    """X with columns that occur in fewer than ``min_df`` rows removed (a new matrix; with ``directory``, its
    rows in a file there, mapped: :mod:`spamtl.rowfiles`), ``batch_rows`` rows at a time.

    Features seen once carry no evidence that generalises and make the model
    bigger and slower; dropping them is a data-preparation step, so the
    estimator itself stays exactly the objective of DESIGN §2.
    """
    rare = column_counts(X, batch_rows=batch_rows) < min_df

    def drop(part: sp.csr_matrix) -> sp.csr_matrix:
        part.data[rare[part.indices]] = 0.0
        part.eliminate_zeros()
        return part

    return map_rows(X, drop, directory, "prepared", batch_rows)


def prepare_features(data: TrainingData, directory: str | None = None, batch_rows: int | None = None) -> TrainingData:
    """The rows the estimator sees: rare columns dropped (the estimator learns its IDF from these rows)."""
    return TrainingData(min_df_mask(data.X, directory=directory, batch_rows=batch_rows), data.y, data.users, data.groups, data.message_pks,
                        data.recency, data.uncorrected)


# ---------------------------------------------------------------- step 3: choose mu
def cross_fit_folds(data: TrainingData, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The nightly cross-fitting folds: ``k`` folds of the labels, all labels of a message in one fold
    (:func:`spamtl.model.folds.grouped_folds`; empty when there is nothing to cross-fit)."""
    return grouped_folds(data.users, data.y, data.message_pks, k, seed)


@dataclass
class Choice:
    """The chosen estimator parameters, the search table, and the out-of-fold scores of that choice."""

    params: dict[str, Any]
    table: list[Any]
    oof_scores: np.ndarray  # log-odds per row, NaN where no fold scored it
    searched_users: int | None = None  # the grid was cross-fitted on this many sampled users (None: all)
    reused_from: int | None = None  # no search tonight: this active version's alpha and mu (reused_choice)
    searched_at: str | None = None  # when the reused setting was searched (ISO); None: searched tonight
    fold_models: list[Any] = field(default_factory=list)  # the sampled search's folds' fits of this setting


def base_params(settings: Settings) -> dict[str, Any]:
    """The estimator settings that do not depend on the data (alpha and mu are chosen per fit)."""
    return {"task_weighting": settings.task_weighting, "tol": settings.tol, "max_iter": settings.max_iter,
            "idf": settings.idf}


def _groups(data: TrainingData) -> np.ndarray | None:
    return data.groups if any(g is not None for g in data.groups) else None


def search_sample(data: TrainingData, settings: Settings) -> np.ndarray | None:
    """Rows of the users the mu grid is cross-fitted on: all (None) up to ``settings.mu_search_users``
    users, else a seeded random sample of that many users (README, "Scaling")."""
    users = np.unique(data.users)
    limit = settings.mu_search_users
    if limit <= 0 or len(users) <= limit:
        return None
    sample = np.random.default_rng(settings.seed).choice(users, size=limit, replace=False)
    return np.isin(data.users, sample)


def choose_mu(data: TrainingData, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
              settings: Settings, executor: Executor | None = None, progress: Progress = NO_PROGRESS) -> Choice:
    """Choose alpha and mu by K-fold cross-fitting; keep the chosen setting's out-of-fold scores.

    ``y`` is what the candidate is fitted on (normally ``data.y``).  Each
    fold's fit learns its own IDF from its own rows, so the scores are
    out-of-sample in every respect but the label-free min_df mask.

    With more than ``settings.mu_search_users`` users the grid is
    cross-fitted on the same folds restricted to a sample of that many users
    (:func:`search_sample`), and ``oof_scores`` is NaN outside it: call
    :func:`cross_fit` for every row's score at the chosen setting.  The folds
    run side by side on ``executor`` (default: ``settings.train_workers``
    processes, :func:`spamtl.parallel.executor`).  Reported as stage ``search``, counting folds.
    """
    from spamtl.model.estimator import MultiTaskLogisticRegression
    from spamtl.model.selection import select_hyperparameters

    base = base_params(settings)
    if not folds:
        return Choice({**base, "alpha": settings.alphas[0], "mu": settings.mus[0]}, [],
                      np.full(len(y), np.nan))
    rows = search_sample(data, settings)
    cv = folds if rows is None else [(tr[rows[tr]], te[rows[te]]) for tr, te in folds]
    if rows is not None and any(len(np.unique(y[tr])) < 2 or len(te) == 0 for tr, te in cv):
        rows, cv = None, folds  # the sample cannot be cross-fitted (one class in a fold): search on everyone
    searched = data.n_users if rows is None else len(np.unique(data.users[rows]))
    progress.stage("search", len(cv), unit="folds", settings=len(settings.alphas) * len(settings.mus),
                   users=searched, labels=len(y) if rows is None else int(rows.sum()))
    own = executor is None
    pool = parallel.executor(settings.train_workers, kind="processes") if own else executor
    try:
        search = select_hyperparameters(data.X, y, data.users, _groups(data), alphas=settings.alphas,
                                        mus=settings.mus, cv=cv, estimator=MultiTaskLogisticRegression(**base),
                                        executor=pool, keep_fold_models=rows is not None,
                                        threads=settings.train_workers, progress=progress.advance)
    finally:
        if own:
            pool.shutdown()
    assert search.oof_scores is not None
    if rows is None:
        return Choice({**base, "alpha": search.alpha, "mu": search.mu}, search.table, search.oof_scores)
    # The one-SE rule on a sample: the standard error of a macro mean over users shrinks as
    # 1/sqrt(users), so the sample's SE is scaled to what all users would give; otherwise a smaller
    # sample would pick a more shared mu than the full search.
    table, pick = one_se_for_all_users(search.table, searched, data.n_users)
    return Choice({**base, "alpha": pick["alpha"], "mu": pick["mu"]}, table, search.oof_scores, searched,
                  fold_models=search.fold_models.get((pick["alpha"], pick["mu"]), []))


def reused_choice(data: TrainingData, settings: Settings, active: ActiveModel, now: datetime) -> Choice | None:
    """The active model's alpha and mu instead of tonight's search, or None to search.

    Only where the search is the sampled one (more than ``mu_search_users`` users: a fixed cost for a
    choice that moves slowly with a large store), at most ``mu_search_days`` after the search that chose
    them (carried in each version's metrics as ``searched_at``), and only while they are still in the grid
    and the active model is on tonight's features.  The setting is still cross-fitted on every row, so
    the gate and the cutoffs are what they would be after a search that chose it.
    """
    limit, days = settings.mu_search_users, settings.mu_search_days
    if days <= 0 or limit <= 0 or data.n_users <= limit or active.estimator is None or active.version is None:
        return None
    searched_at = active.metrics.get("searched_at")
    alpha, mu = float(active.estimator.alpha), float(active.estimator.mu)
    if not isinstance(searched_at, str) or alpha not in settings.alphas or mu not in settings.mus:
        return None
    try:
        age = now - datetime.fromisoformat(searched_at)
    except ValueError:
        return None
    if not timedelta(0) <= age < timedelta(days=days):  # a clock set back searches too
        return None
    return Choice({**base_params(settings), "alpha": alpha, "mu": mu}, [], np.full(len(data.y), np.nan),
                  reused_from=active.version, searched_at=searched_at)


def one_se_for_all_users(table: list[dict[str, float]], searched: int, users: int) -> tuple[list[dict[str, float]],
                                                                                             dict[str, float]]:
    """The one-SE rule on a search over ``searched`` of ``users`` users, with each row's standard error
    scaled by sqrt(searched / users) (``gap_se_all_users``): the most shared setting within it of the best."""
    from spamtl.model.selection import most_shared_within_one_se

    shrink = math.sqrt(searched / users)
    table = [{**r, "gap_se_all_users": r["gap_se"] * shrink} for r in table]
    return table, most_shared_within_one_se(table, se="gap_se_all_users")


def cross_fit_and_fit(data: TrainingData, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                      params: dict[str, Any], sample: np.ndarray | None, warm: Any = None,
                      executor: Executor | None = None, threads: int = 1,
                      fold_models: list[Any] | None = None) -> tuple[np.ndarray, Any]:
    """Every row's out-of-fold score at ``params`` and the candidate fitted on all rows.

    Each fold is fitted on the training rows of the sampled users only (``sample``, a row mask from
    :func:`search_sample`; None: all users). Every user's held-out rows are then scored with that user's
    personal part refitted on their own training rows, the fold's shared and group parts held fixed
    (:func:`spamtl.model.estimator.score_refitted_tasks`). No fold fit saw a held-out row, so the scores are out of
    sample as K fits on all rows would give, at a fraction of the cost and memory: the users' refits are
    small and independent. A fold's shared part learned from the sample is somewhat weaker than one learned
    from everyone, so these scores lean pessimistic (cutoffs and the gate err toward caution).

    Each fold (its fit, then its users' refits) goes to ``executor`` (default: in-process) while this process
    fits the candidate (on ``threads`` threads: :func:`fit_candidate`).  Same results as in sequence.

    ``fold_models``: the folds already fitted on the sample at ``params`` (the sampled search's,
    :attr:`Choice.fold_models`), one per fold in order.  Only the users' parts are then refitted, and without
    ``warm`` the candidate starts from the folds' mean shared part (near its optimum, not from zero).
    """
    from spamtl.model.estimator import MultiTaskLogisticRegression
    from spamtl.model.selection import cross_fit_fold

    oof = np.full(len(y), np.nan)
    pool = executor if executor is not None else SerialExecutor()
    payload = share(pool, (data.X, y, data.users, _groups(data)))
    try:
        sampled = [tr if sample is None else tr[sample[tr]] for tr, _ in folds]
        models = list(fold_models or [])
        if any(len(np.unique(y[tr])) < 2 for tr in sampled):  # the sample has one class in a fold: fit on all
            sampled, models = [tr for tr, _ in folds], []
        fitted = len(models) == len(folds) > 0
        est = MultiTaskLogisticRegression(**params)
        futures = [pool.submit(cross_fit_fold, payload, fit_rows, train_rows, test_rows,
                               models[k] if fitted else est, fitted)
                   for k, (fit_rows, (train_rows, test_rows)) in enumerate(zip(sampled, folds))]
        start = warm if warm is not None or not fitted else mean_shared_part(models)
        candidate = fit_candidate(data, y, params, warm=start, threads=threads)
        for (_, test_rows), future in zip(folds, futures):
            oof[test_rows] = future.result()
    finally:
        release(payload)
    return oof, candidate


def mean_shared_part(models: list[Any]) -> Any:
    """A model whose shared part is the mean of ``models``' and each group's part the mean over the models that
    have that group (fits without tasks' parts, of one setting): a start for the fit on all rows."""
    mean = models[0].without_tasks()
    k = len(models)
    mean.coef_shared_ = sum(m.coef_shared_ for m in models) / k
    mean.intercept_shared_ = float(sum(m.intercept_shared_ for m in models) / k)
    index = [{g: i for i, g in enumerate(m.groups_)} for m in models]
    names = sorted({g for groups in index for g in groups}, key=str)
    rows, intercepts = [], []
    for g in names:
        having = [(m, groups[g]) for m, groups in zip(models, index) if g in groups]
        rows.append(sum(m.coef_groups_[i] for m, i in having) / len(having))
        intercepts.append(sum(float(m.intercept_groups_[i]) for m, i in having) / len(having))
    mean.groups_ = np.array(names, dtype=object)
    mean.coef_groups_ = sp.vstack(rows).tocsr() if rows else sp.csr_matrix((0, mean.n_features_in_))
    mean.intercept_groups_ = np.array(intercepts, dtype=np.float64)
    return mean


# --------------------------------------------------------------------- step 4: fit
def fit_candidate(data: TrainingData, y: np.ndarray, params: dict[str, Any], warm: Any = None,
                  threads: int = 1) -> Any:
    """The candidate: the chosen configuration fitted on ALL labels, warm-started from ``warm`` (not changed).

    ``threads``: the projected solver's chunks of users side by side (``fit(threads=)``; the same model).

    A shallow copy of ``warm`` suffices: ``fit`` reads the fitted arrays it starts from and replaces every
    one of them, never writing into them; a deep copy would hold a second copy of the active model through
    the whole fit.
    """
    from spamtl.model.estimator import MultiTaskLogisticRegression

    est = copy.copy(warm) if warm is not None else MultiTaskLogisticRegression()
    est.set_params(**params, warm_start=warm is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.fit(data.X, y, tasks=data.users, groups=_groups(data), threads=threads)
    return est


def choose_and_fit(data: TrainingData, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                   settings: Settings, warm: Any = None, progress: Progress = NO_PROGRESS,
                   reuse: Choice | None = None) -> tuple[Choice, Any]:
    """Steps 3 and 4: the chosen setting (with every row's out-of-fold score) and the candidate.

    Up to ``mu_search_users`` users: the grid search on all rows, then the
    final fit.  Beyond: the grid on a sample of
    users (or ``reuse``, the active model's setting: :func:`reused_choice`),
    then the chosen setting's K folds fitted on the sample and every user's
    part refitted per fold, side by side with the final fit
    (:func:`cross_fit_and_fit`): one fit on all rows instead of K x grid + 1.
    """
    choice = reuse if reuse is not None else choose_mu(data, y, folds, settings, progress=progress)
    # The search scored every row only if it ran on every user; otherwise the folds are fitted here.
    scored = choice.searched_users is None and choice.reused_from is None
    progress.stage("fit", labels=len(y), users=data.n_users, alpha=choice.params["alpha"], mu=choice.params["mu"],
                   **({} if choice.reused_from is None else {"mu_from": f"v{choice.reused_from}"}),
                   **({} if scored else {"cross_fit_folds": len(folds)}))
    if scored:
        return choice, fit_candidate(data, y, choice.params, warm=warm, threads=settings.train_workers)
    with parallel.executor(settings.train_workers, kind="processes", alongside=True) as pool:
        choice.oof_scores, candidate = cross_fit_and_fit(data, y, folds, choice.params, search_sample(data, settings),
                                                         warm=warm, executor=pool, threads=settings.train_workers,
                                                         fold_models=choice.fold_models)
    return choice, candidate


# -------------------------------------------------------------------- step 5: gate
@dataclass
class ActiveModel:
    """The active version (None: no model yet) and whether its features match this training's."""

    version: int | None
    same_features: bool
    estimator: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)  # what training recorded for it


def load_active(engine: Engine, settings: Settings) -> ActiveModel:
    try:
        version, key, weights = load_weights(engine)
    except NoModelError:
        return ActiveModel(None, False)
    except DamagedModelError as exc:
        # Retraining is a way out of a damaged active version: the candidate starts from scratch, and the gate
        # compares it with what the active version said (its logged scores need no weights).
        return ActiveModel(exc.version, True, None, version_info(engine, exc.version).metrics)
    if key != settings.features.key:
        return ActiveModel(version, False)
    from spamtl.model.estimator import MultiTaskLogisticRegression

    return ActiveModel(version, True, MultiTaskLogisticRegression.from_weights(weights),
                       version_info(engine, version).metrics)


def active_scores(engine: Engine, active: ActiveModel, data: TrainingData) -> np.ndarray:
    """The active version's logged spam probability of each row's message before it was labelled (else NaN)."""
    out = np.full(len(data.y), np.nan)
    if active.version is None:
        return out
    with transaction(engine, checked=False) as session:
        logged = queries.logged_scores_before_labels(session=session, version_id=active.version)
    index = {(u, int(pk)): i for i, (u, pk) in enumerate(zip(data.users.tolist(), data.message_pks.tolist()))}
    for row in logged:
        i = index.get((row.user, row.message_pk))
        if i is not None:
            out[i] = row.probability
    return out


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _PROB_CLIP, 1 - _PROB_CLIP)
    loss: np.ndarray = -np.where(y == 1, np.log(p), np.log1p(-p))
    return loss


def gate(data: TrainingData, candidate_oof: np.ndarray, active_probability: np.ndarray, active: ActiveModel,
         settings: Settings) -> GateDecision:
    """Promote or refuse (docs/training.md, "The gate").

    Rules, in order: no active model, or one on other features: promote.  Cross-fitted macro 1-AUC
    worse than chance (> 50 %): refuse.  On rows with both an active logged score and a candidate
    out-of-fold score, refuse iff the candidate's macro log loss is larger by more than
    ``promote_tolerance + promote_relative_margin * L_active + promote_margin_se * SE`` (SE of the
    paired difference).  No comparable rows (or a NaN difference): promote, saying why.
    """
    y = data.y
    from scipy.special import expit

    cand_p = expit(candidate_oof)
    metrics: dict[str, Any] = {"cross_fitted_messages": int(np.isfinite(candidate_oof).sum())}
    fitted = np.isfinite(candidate_oof) & data.learned  # uncorrected verdicts are the active model's own
    cand_auc = macro_auc_error(y[fitted] == 1, candidate_oof[fitted], data.users[fitted]) if fitted.any() \
        else float("nan")
    metrics["candidate_auc_error_pct"] = None if math.isnan(cand_auc) else round(cand_auc, 4)
    if active.version is None:
        return GateDecision(True, "first model", metrics)
    metrics["active_version"] = active.version
    if not active.same_features:
        return GateDecision(True, "features changed since the active model; promoting the retrained model",
                            metrics)
    if cand_auc > 50.0:
        return GateDecision(False, f"the candidate's cross-fitted 1-AUC {cand_auc:.2f}% is worse than chance; "
                                   f"keeping v{active.version}", metrics)
    both = fitted & np.isfinite(active_probability)
    metrics["compared_messages"] = int(both.sum())
    if both.any():
        decision = _compare(data, both, cand_p, active_probability, active, settings, metrics)
        if decision is not None:
            return decision
    # Rule 4: nothing to compare with (a store nobody classifies through, or only fresh mail).
    if math.isnan(cand_auc):
        return GateDecision(True, "no out-of-sample scores to compare; promoting the model fitted on all labels",
                            metrics)
    return GateDecision(True, f"no logged scores of active v{active.version} on mail labelled since; candidate's "
                              f"cross-fitted 1-AUC {cand_auc:.4f}% is better than chance", metrics)


def _compare(data: TrainingData, both: np.ndarray, cand_p: np.ndarray, active_p: np.ndarray, active: ActiveModel,
             settings: Settings, metrics: dict[str, Any]) -> GateDecision | None:
    """Rule 3 of :func:`gate` on the rows ``both`` models scored out of sample (None: a NaN difference)."""
    y, n = data.y, int(both.sum())
    w = macro_weights(data.users[both])
    cand_loss = _log_loss(y[both], cand_p[both])
    act_loss = _log_loss(y[both], active_p[both])
    gap, se = paired_gap(w, cand_loss - act_loss)
    metrics.update({"candidate_log_loss": round(float(w @ cand_loss), 6),
                    "active_log_loss": round(float(w @ act_loss), 6),
                    "log_loss_gap": round(gap, 6), "log_loss_gap_se": round(se, 6)})
    for name, scores in (("candidate", cand_p[both]), ("active", active_p[both])):
        err = macro_auc_error(y[both] == 1, scores, data.users[both])
        metrics[f"{name}_compared_auc_error_pct"] = None if math.isnan(err) else round(err, 4)
    if not (math.isfinite(gap) and math.isfinite(se)):
        return None
    margin = (settings.promote_tolerance + settings.promote_margin_se * se
              + settings.promote_relative_margin * float(w @ act_loss))
    said = (f"candidate log loss {w @ cand_loss:.4f} vs active v{active.version} {w @ act_loss:.4f} "
            f"on {n} messages neither was fitted on")
    if gap > margin + _TIE:
        return GateDecision(False, f"{said}: worse by {gap:.4f} > margin {margin:.4f}; keeping v{active.version}",
                            metrics)
    return GateDecision(True, f"{said}: not worse (difference {gap:+.4f}, margin {margin:.4f})", metrics)


# ----------------------------------------------------------------- step 7: promote
def save_version(engine: Engine, candidate: Any, decision: GateDecision, cutoffs: dict[str, Cutoff], *,
                 settings: Settings, now: datetime, metrics: dict[str, Any], n_messages: int) -> int:
    """One transaction: the version, its parts and cutoffs, and (if promoted) the switch to active.

    A refused candidate is kept as 'rejected' (for inspection); the active
    model is untouched.  A crash before the commit leaves everything as it was.
    """
    weights = candidate.to_weights()
    with transaction(engine, checked=False) as session:
        version = save_weights(session=session, weights=weights, feature_key=settings.features.key,
                               status="active" if decision.promoted else "rejected", now=now, metrics=metrics,
                               n_messages=n_messages, note=decision.reason)
        queries.add_user_cutoffs(session=session, version_id=version,
                                  rows=[(u, c.spam, c.ham, c.source) for u, c in sorted(cutoffs.items())])
    return version


# ------------------------------------------------------------------ the sequence
def train(engine: Engine, settings: Settings, *, now: datetime, progress: Progress = NO_PROGRESS,
          label_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> TrainResult:
    """Fit on all current labels, compare with the active model on mail neither was fitted on, maybe promote.

    ``label_transform`` (tests only) changes the labels the candidate is
    fitted on, never those it is judged by: e.g. flipped labels must be refused.
    Nothing is written before the final transaction (:func:`save_version`): a
    crash at any point leaves the active model as it was.

    Only one training runs at a time: a second one raises
    :class:`~spamtl.services.lock.LockBusyError` (exit code 75) at once.
    Afterwards the retention settings are applied (``spamtl prune``), in a
    transaction of their own.  ``progress`` hears the stages: load, search
    (when mu is searched), fit, gate, save, prune.
    """
    from spamtl.services.lock import hold
    from spamtl.services.retention import prune

    check_schema(engine)
    with hold(engine, "train", what="train"):
        result = _train(engine, settings, now=now, progress=progress, label_transform=label_transform)
        progress.stage("prune")
        result.pruned = prune(engine, settings, now=now).as_dict()
        return result


def _train(engine: Engine, settings: Settings, *, now: datetime, progress: Progress,
           label_transform: Callable[[np.ndarray], np.ndarray] | None) -> TrainResult:
    started = time.monotonic()
    progress.stage("load", unit="messages")  # the total once the labels are known (load_training_data)
    # The labels' rows live in files in the scratch directory, mapped (spamtl.rowfiles): 1.6 GB a million labels
    # that memory no longer holds.  The directory goes when training ends, however it ends (if killed, at the next).
    with scratch_directory("spamtl-train-") as scratch:
        data = prepare_features(load_labels(engine, settings, progress, now=now, directory=scratch), scratch)
        remove_rows(scratch)  # the rows as read, before the rare columns were dropped: disk no longer needed
        return_free_memory()  # a batch's rows as read (kept by malloc)
        return _fit_and_judge(engine, settings, data, now=now, progress=progress, label_transform=label_transform,
                              started=started)


def _fit_and_judge(engine: Engine, settings: Settings, data: TrainingData, *, now: datetime,
                   progress: Progress, label_transform: Callable[[np.ndarray], np.ndarray] | None,
                   started: float) -> TrainResult:
    y_fit = data.y if label_transform is None else np.asarray(label_transform(data.y.copy()))
    active = load_active(engine, settings)

    folds = cross_fit_folds(data, settings.cv_folds, settings.seed)
    reuse = reused_choice(data, settings, active, now)
    choice, candidate = choose_and_fit(data, y_fit, folds, settings, warm=active.estimator, progress=progress,
                                       reuse=reuse)

    progress.stage("gate")  # candidate vs the active model, then the cutoffs
    decision = gate(data, choice.oof_scores, active_scores(engine, active, data), active, settings)
    cutoffs, shared = choose_cutoffs(data, choice.oof_scores, settings)

    metrics: dict[str, Any] = {"train_messages": int(len(data.y)),
                               "uncorrected_verdicts": int((~data.learned).sum()), "alpha": choice.params["alpha"],
                               "mu": choice.params["mu"], "search": choice.table,
                               "search_users": 0 if choice.reused_from is not None
                               else choice.searched_users or data.n_users,
                               "searched_at": choice.searched_at or now.isoformat(),
                               "search_reused_from": choice.reused_from, **decision.metrics,
                               "shared_cutoff": None if shared is None else shared.__dict__,
                               "cutoffs": {u: c.__dict__ for u, c in sorted(cutoffs.items())},
                               "user_auc_error_pct": _user_auc_errors(data, choice.oof_scores)}
    # Seconds from the start of loading to the decision (the save is not counted): the metrics endpoint's
    # last training duration; it ended at created_at (the start) plus this.
    metrics["train_seconds"] = round(time.monotonic() - started, 3)
    progress.stage("save")
    version = save_version(engine, candidate, decision, cutoffs, settings=settings, now=now, metrics=metrics,
                           n_messages=len(data.y))
    result = TrainResult(version=version, promoted=decision.promoted, reason=decision.reason, users=data.n_users,
                         messages=int(len(data.y)), metrics=metrics, seconds=time.monotonic() - started)
    from spamtl.logs import log_training

    log_training(settings, version=version, promoted=result.promoted, reason=result.reason, users=result.users,
                 messages=result.messages, seconds=result.seconds)
    return result


def _user_auc_errors(data: TrainingData, oof: np.ndarray) -> dict[str, float | None]:
    """Each user's cross-fitted 1-AUC (%) of the candidate, None for a user with one class scored."""
    fitted = np.isfinite(oof)
    errors = task_auc_errors(data.y[fitted] == 1, oof[fitted], data.users[fitted])
    return {str(u): None if math.isnan(e) else round(e, 4) for u, e in errors.items()}


# ------------------------------------------------- used by `spamtl evaluate` (not by train)
def fit_model(data: TrainingData, params: dict[str, Any], warm: Any = None) -> Any:
    """Fit on ``data`` after feature preparation (evaluate's folds)."""
    return fit_candidate(prepare_features(data), data.y, params, warm)


def choose_params(data: TrainingData, settings: Settings, base: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Alpha and mu on a chronological validation split (evaluate's quick search within one fold)."""
    from spamtl.model.estimator import MultiTaskLogisticRegression
    from spamtl.model.selection import select_hyperparameters

    inner_train, inner_val = chronological_split(data.users, data.y, data.recency, settings.holdout_fraction,
                                                 settings.holdout_min)
    if len(inner_val) == 0 or len(settings.alphas) * len(settings.mus) == 1:
        return {**base, "alpha": settings.alphas[0], "mu": settings.mus[0]}, []
    search = select_hyperparameters(min_df_mask(data.X), data.y, data.users, _groups(data), alphas=settings.alphas,
                                    mus=settings.mus, cv=[(inner_train, inner_val)],
                                    estimator=MultiTaskLogisticRegression(**base))
    return {**base, "alpha": search.alpha, "mu": search.mu}, search.table
