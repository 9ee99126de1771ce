"""The one per-user refit (spamtl/model/refit.py ``refit_user``) against a joint fit and scikit-learn."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from spamtl.model.refit import refit_user
from spamtl.model.weights import ModelWeights, SparsePart

from .test_estimator import fit, make_problem


def _without(weights: ModelWeights, task: str) -> ModelWeights:
    """``weights`` with ``task``'s personal part removed: the refit starts cold."""
    weights.tasks.pop(task)
    return weights


def test_refit_from_cold_gives_back_the_joint_fits_part() -> None:
    """With the shared and group parts at the joint optimum, the personal problem's optimum is the joint one's
    personal part: the refit must find it from zero, with the group's offset, the task weighting and the fit's
    penalty (alpha * mu).  Expected values: the joint fit (spamtl.model.estimator, another solver path)."""
    X, y, tasks, groups = make_problem(seed=2)
    est = fit(X, y, tasks, groups, alpha=0.7, mu=3.0, task_weighting="task", tol=1e-10)
    for task in ("ann", "dan"):  # ann has a group, dan has none
        i = list(est.tasks_).index(task)
        weights = _without(est.to_weights(), task)
        weights.params["tol"] = 1e-8
        m = tasks == task
        part = refit_user(weights, task, X[m], y[m] == 1)
        expected = est.coef_tasks_[i].toarray().ravel()
        got = np.zeros(X.shape[1])
        got[part.cols] = part.values
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert abs(part.intercept - est.intercept_tasks_[i]) < 1e-6


def test_refit_with_no_shared_part_is_scikit_learns_l2_logistic_regression() -> None:
    """With a zero shared part the personal problem is an ordinary L2 logistic regression whose intercept is
    penalised like a weight (a constant column, no fitted intercept), C = 1 / (alpha * mu), each sample
    weighted omega_t * sample_weight: exactly scikit-learn's LogisticRegression."""
    rng = np.random.default_rng(5)
    m, d = 60, 15
    X = sp.random(m, d, density=0.3, random_state=rng, format="csr")
    y = (X @ rng.normal(size=d) + 0.3 * rng.normal(size=m) > 0).astype(int)
    sample_weight = rng.uniform(0.5, 3.0, m)
    alpha, mu, scale = 0.4, 2.5, 7.0
    weights = ModelWeights(d, SparsePart.empty(), params={"alpha": alpha, "mu": mu, "task_weighting": "task",
                                                          "weight_scale": scale, "tol": 1e-8})
    part = refit_user(weights, "ann", X, y == 1, sample_weight)
    omega = scale / m  # task weighting: every task counts as weight_scale samples
    reference = LogisticRegression(C=1.0 / (alpha * mu), fit_intercept=False, tol=1e-12, max_iter=10_000)
    reference.fit(sp.hstack([X, np.ones((m, 1))]).tocsr(), y, sample_weight=omega * sample_weight)
    got = np.zeros(d + 1)
    got[part.cols] = part.values
    got[d] = part.intercept
    np.testing.assert_allclose(got, reference.coef_.ravel(), atol=1e-6)


def test_refit_warm_starts_from_the_users_part_and_touches_nothing_else() -> None:
    """A refit on unchanged rows from the joint optimum stays there; the weights it was given are unchanged."""
    X, y, tasks, groups = make_problem(seed=4)
    est = fit(X, y, tasks, groups, tol=1e-10)
    weights = est.to_weights()
    weights.params["tol"] = 1e-7
    shared_before = weights.shared.values.copy()
    m = tasks == "bob"
    part = refit_user(weights, "bob", X[m], y[m] == 1)
    np.testing.assert_allclose(part.values, weights.tasks["bob"].values[np.searchsorted(weights.tasks["bob"].cols,
                                                                                          part.cols)], atol=1e-5)
    np.testing.assert_array_equal(weights.shared.values, shared_before)
