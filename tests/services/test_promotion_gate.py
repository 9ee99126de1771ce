"""The promotion gate's margin: ``promote_margin_se`` standard errors of the paired log-loss difference.

Catches (a planted defect): the standard error computed with the row weights ``w`` instead of ``w**2``
(``spamtl/services/training.py``, :func:`gate`).  The gap is the macro mean ``sum_i w_i d_i`` of the
per-message differences ``d_i = loss_candidate - loss_active`` (``w_i = 1 / (users * n_user)``), so its
standard error is ``sqrt(sum_i w_i**2 (d_i - gap)**2)``; with ``w`` the margin is about sqrt(N) times
too wide and a clearly worse candidate is promoted.  Expected values are worked out by hand below.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from spamtl.services.dataset import TrainingData
from spamtl.services.training import ActiveModel, gate
from spamtl.settings import Settings

LN2 = math.log(2.0)


def _data(users: list[str], y: list[int]) -> TrainingData:
    n = len(y)
    return TrainingData(X=sp.csr_matrix((n, 4)), y=np.array(y), users=np.array(users),
                        groups=np.array([None] * n, dtype=object), message_pks=np.arange(n),
                        recency=np.zeros(n))


def _gate(users: list[str], y: list[int], candidate: list[float], active: list[float], **settings: float):  # type: ignore[no-untyped-def]
    cand = np.array(candidate)
    return gate(_data(users, y), np.log(cand / (1 - cand)), np.array(active), ActiveModel(1, True),
                Settings("sqlite://", **settings))  # type: ignore[arg-type]


def test_standard_error_of_one_users_paired_differences() -> None:
    # All spam; the active model said 0.5 (loss ln 2 each), the candidate 0.5 or 0.25 (loss ln 2 or 2 ln 2):
    # d = (0, ln2, 0, ln2), w = 1/4 each, gap = ln2 / 2, every |d - gap| = ln2 / 2, so
    # SE^2 = 4 * (1/4)^2 * (ln2 / 2)^2 = ln2^2 / 16, SE = ln2 / 4 = 0.173287 (with w, not w^2: ln2 / 2).
    decision = _gate(["u"] * 4, [1] * 4, [0.5, 0.25, 0.5, 0.25], [0.5] * 4)
    assert decision.metrics["compared_messages"] == 4
    assert decision.metrics["log_loss_gap"] == round(LN2 / 2, 6)
    assert decision.metrics["log_loss_gap_se"] == round(LN2 / 4, 6)


def test_standard_error_weighs_each_user_equally() -> None:
    # ann has two messages (w = 1/4 each), bob one (w = 1/2).  Active 0.5 everywhere (loss ln2); candidate
    # 0.5, 0.125 for ann (d = 0, 2 ln2) and 0.25 for bob (d = ln2).  gap = 2 ln2 / 4 + ln2 / 2 = ln2;
    # d - gap = (-ln2, ln2, 0): SE^2 = (1/16 + 1/16) ln2^2, SE = ln2 / sqrt(8) = 0.245064.
    decision = _gate(["ann", "ann", "bob"], [1, 1, 1], [0.5, 0.125, 0.25], [0.5] * 3)
    assert decision.metrics["log_loss_gap"] == round(LN2, 6)
    assert decision.metrics["log_loss_gap_se"] == round(LN2 / math.sqrt(8), 6)
    # The margin the reason quotes: 3 SE + 0.5 x the active loss (ln 2), no tolerance (the defaults).
    margin = 3 * LN2 / math.sqrt(8) + 0.5 * LN2
    assert f"margin {margin:.4f}" in decision.reason, decision.reason


def test_a_clearly_worse_candidate_is_refused() -> None:
    # 100 messages of one user, half spam.  The active model was right and sure (0.9 for the true class:
    # loss -ln 0.9 = 0.1054 each).  The candidate ranks them right but is vague (0.6 for the true class) on
    # 80 and wrong (0.3) on 20: losses -ln 0.6 and -ln 0.3, six times the active model's on average.
    y = [1] * 50 + [0] * 50
    right = [0.6] * 40 + [0.3] * 10
    candidate = right + [1 - p for p in right]
    active = [0.9] * 50 + [0.1] * 50
    decision = _gate(["u"] * 100, y, candidate, active)
    d_vague, d_wrong = math.log(0.9 / 0.6), math.log(0.9 / 0.3)
    gap = 0.8 * d_vague + 0.2 * d_wrong  # 0.5441
    se = math.sqrt(80 * (d_vague - gap) ** 2 + 20 * (d_wrong - gap) ** 2) / 100  # 0.0277 (w = 1/100)
    margin = 3 * se + 0.5 * -math.log(0.9)  # 0.1359; with w instead of w^2 the SE is 10x: margin 0.884
    assert abs(decision.metrics["log_loss_gap"] - gap) < 1e-6
    assert abs(decision.metrics["log_loss_gap_se"] - se) < 1e-6
    assert not decision.promoted, decision.reason
    assert decision.reason.endswith(f"worse by {gap:.4f} > margin {margin:.4f}; keeping v1"), decision.reason
    # The same candidate against itself is a tie, and a tie promotes.
    assert _gate(["u"] * 100, y, candidate, candidate).promoted
