"""Cutoffs chosen at training (services/cutoffs.choose_cutoffs): a user's cutoffs leave the shared ones only as
far as that user's own labels prove, at ``cutoff_confidence``, by exact binomial bounds.

Expected values are worked out here from the scores with scipy's exact binomial test (an implementation the
code under test does not use) and plain sorting; nothing is read back from the function under test.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binomtest

from spamtl.services.cutoffs import choose_cutoffs, errors_within
from spamtl.settings import Settings

from .test_training import _data


def _bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds at ``confidence``: the two-sided exact interval at 2c - 1."""
    ci = binomtest(k, n).proportion_ci(confidence_level=2 * confidence - 1, method="exact")
    return ci.low, ci.high


def _expected_counts(n: int, rate: float, confidence: float) -> tuple[int, int]:
    """The most errors whose upper bound (proven) and lower bound (plausible) are <= rate: both bounds grow
    with k, so count up until each passes."""
    proven = plausible = -1
    for k in range(n + 1):
        low, high = _bounds(k, n, confidence)
        if low > rate:
            break
        plausible = k
        if high <= rate:
            proven = k
    return proven, plausible


@pytest.mark.parametrize(("n", "rate", "confidence"), [
    (1, 0.05, 0.9), (10, 0.05, 0.9), (40, 0.001, 0.9), (104, 0.001, 0.9), (106, 0.001, 0.9), (400, 0.05, 0.9),
    (400, 0.001, 0.95), (2301, 0.001, 0.9), (2303, 0.001, 0.9), (5000, 0.001, 0.9), (300, 0.2, 0.75),
])
def test_errors_within_matches_the_exact_binomial_test(n: int, rate: float, confidence: float) -> None:
    """Catches: the bounds' sides swapped, an off-by-one in either count, the confidence used as 1 - itself."""
    assert errors_within(n, rate, confidence) == _expected_counts(n, rate, confidence)


def _p(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _over(p: float) -> float:
    """The lowest 6-decimal probability strictly above ``p``."""
    return math.floor(p * 1e6 + 1) / 1e6


def _under(p: float) -> float:
    """The highest 6-decimal probability strictly below ``p``."""
    return math.ceil(p * 1e6 - 1) / 1e6


SPAM_SIDE = Settings("sqlite://", target_ham_fpr=0.001, cutoff_confidence=0.9, spam_cutoff=0.9,
                     min_spam_cutoff=0.5, target_spam_as_ham=0.0)


def _spam_side_users() -> tuple[list[str], list[int], np.ndarray]:
    z97 = math.log(0.97 / 0.03)
    groups = {
        "big": [-3.0] * 2999 + [1.0],  # 3,000 ham: enough to prove 0.1 % with none above its cutoff
        "mid": [-3.0] * 500,  # 500 ham, all low: not enough to prove 0.1 % even with none above
        "skew": [-3.0] * 39 + [z97],  # 40 ham, one scored 0.97: its FPR at the shared 0.90 is shown too high
        "many": [-3.0] * 399 + [z97],  # the same one high ham among 400: within what 0.1 % allows
    }
    users, y, scores = [], [], []
    for user, ham in groups.items():
        users += [user] * (len(ham) + 5)
        y += [0] * len(ham) + [1] * 5
        scores += ham + [6.0] * 5
    users += ["spammy"] * 5
    y += [1] * 5
    scores += [6.0] * 5
    return users, y, np.array(scores)


def test_spam_cutoffs_move_from_the_shared_one_only_as_far_as_the_users_ham_proves() -> None:
    """Catches: lowering on too little ham (the issue's new users), a high ham ignored, the bounds swapped,
    the cutoff set at the ham's own score (calling that ham spam), the floor missing."""
    users, y, scores = _spam_side_users()
    cutoffs, shared = choose_cutoffs(_data(users, y), scores, SPAM_SIDE)
    # The pooled 0.999 quantile of 3,940 ham is a -3.0: the shared cutoff is the global 0.90.
    assert shared is not None and shared.spam == 0.9
    proven_big, _ = _expected_counts(3000, 0.001, 0.9)
    assert proven_big == 0  # one error among 3,000 is already not provably under 0.1 %
    assert cutoffs["big"].spam == _over(_p(1.0)) == 0.731059
    # Its own point estimate (3 of 3,000 ham allowed) would go down to just over a -3.0: 23 % of the way.
    own = (_logit(0.731059) - _logit(0.9)) / (_logit(_over(_p(-3.0))) - _logit(0.9))
    assert f"{100 * own:.0f}" == "23"
    assert cutoffs["big"].source == "target 0.1% ham FPR: lowered, 0 of 3000 ham above it (own 23%)"
    assert cutoffs["mid"].spam == 0.9
    assert cutoffs["mid"].source == "target 0.1% ham FPR: shared, 0 of 500 ham at or above it (own 0%)"
    assert cutoffs["skew"].spam == _over(0.97) == 0.970001
    assert cutoffs["skew"].source == ("target 0.1% ham FPR: raised, 1 of 40 ham at or above the shared cutoff "
                                      "(own 100%)")
    assert _expected_counts(400, 0.001, 0.9)[1] >= 1
    assert cutoffs["many"].spam == 0.9 and "shared, 1 of 400 ham at or above it" in cutoffs["many"].source
    assert cutoffs["spammy"] == replace(shared, source="shared (no ham)")
    for c in cutoffs.values():  # the ham side is off here: the global ham cutoff, never above the spam one
        assert c.ham == min(0.5, c.spam)

    # Every ham far below: big is held just above the floor (min_spam_cutoff, or the ham cutoff if higher).
    # Every ham far below: the shared cutoff stays at the configured 0.90 (its floor), big's 3,000 ham take
    # it just above the floor (min_spam_cutoff, or the ham cutoff if higher), mid's 500 cannot.
    low, low_shared = choose_cutoffs(_data(users, y), scores - 20, SPAM_SIDE)
    assert low_shared is not None and low_shared.spam == 0.9
    assert low["big"].spam == 0.500001 and low["mid"].spam == low["skew"].spam == 0.9
    raised_ham = replace(SPAM_SIDE, ham_cutoff=0.7)
    assert choose_cutoffs(_data(users, y), scores - 20, raised_ham)[0]["big"].spam == 0.700001
    assert choose_cutoffs(_data(users, y), scores, replace(SPAM_SIDE, target_ham_fpr=0.0)) == ({}, None)


def test_the_shared_cutoff_is_the_quantile_of_every_users_ham_never_under_the_configured_one() -> None:
    """Catches: the shared cutoff taken from one user's ham, or allowed under spam_cutoff."""
    z95 = math.log(0.95 / 0.05)
    users = ["a"] * 155 + ["b"] * 2005
    y = [0] * 150 + [1] * 5 + [0] * 2000 + [1] * 5
    # 2,150 ham: the 0.999 quantile ('higher') is the 3rd highest, a's 0.95.
    scores = np.array([-3.0] * 147 + [z95 + 1, z95 + 0.5, z95] + [6.0] * 5 + [-3.0] * 2000 + [6.0] * 5)
    cutoffs, shared = choose_cutoffs(_data(users, y), scores, SPAM_SIDE)
    assert shared is not None and shared.spam == round(_p(z95), 6) == 0.95
    assert shared.source == "shared: target 0.1% ham FPR on 2150 ham of all users"
    assert cutoffs["b"].spam == 0.95 and "shared, 0 of 2000 ham at or above it (own 0%)" in cutoffs["b"].source
    # a's three ham at or above it are more than 0.1 % of 150 plausibly allows (one is): raised above two.
    assert _expected_counts(150, 0.001, 0.9)[1] == 1
    assert cutoffs["a"].spam == _over(_p(z95 + 0.5))
    low = np.where(np.arange(len(scores)) < 150, scores - 10, scores)
    assert choose_cutoffs(_data(users, y), low, SPAM_SIDE)[1].spam == 0.9  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(5))
def test_a_user_with_few_ham_never_gets_a_lower_spam_cutoff_than_the_shared_one(seed: int) -> None:
    """The issue's failure: a mostly-spam user with a few dozen ham got a cutoff chosen for 0.1 % FPR from
    that ham and lost 3 % of new ham.  Whatever their ham scored, fewer than 2,302 ham (the least that can
    show 0.1 % at 90 %) keep at least the shared cutoff; and a user's own ham is never called spam more
    often than a confidence bound allows.  Catches: lowering without proof, raising ignored."""
    rng = np.random.default_rng(seed)
    users, y, scores = [], [], []
    for u in range(8):
        n_ham, n_spam = int(rng.integers(0, 400)), int(rng.integers(1, 300))
        users += [f"u{u}"] * (n_ham + n_spam)
        y += [0] * n_ham + [1] * n_spam
        scores += list(rng.normal(rng.uniform(-6, 1), rng.uniform(0.5, 3), n_ham)) + list(rng.normal(4, 2, n_spam))
    scores_a = np.array(scores)
    users_a, y_a = np.array(users), np.array(y)
    cutoffs, shared = choose_cutoffs(_data(users, y), scores_a, SPAM_SIDE)
    assert shared is not None
    for user, c in cutoffs.items():
        assert c.spam >= shared.spam, (user, c)
        ham = scores_a[(users_a == user) & (y_a == 0)]
        if len(ham):
            called_spam = int(np.count_nonzero(np.array([_p(z) for z in ham]) >= c.spam))
            assert called_spam <= _expected_counts(len(ham), 0.001, 0.9)[1], (user, c, called_spam)


def test_ham_cutoffs_move_from_the_shared_one_only_as_far_as_the_users_spam_proves() -> None:
    """Catches: the ham side's bounds swapped, raising without proof (the admin who saw spam at 0.80 called
    ham under a trained 0.85-0.93 ham cutoff), a user whose spam sits low not pulled down, uncorrected spam
    verdicts left out, the one log-odds band under the spam cutoff missing."""
    rng = np.random.default_rng(1)
    # ann: 400 spam N(4, 1), half of them uncorrected verdicts; bob: 10 spam at 6.0; cat: 15 spam at 0.80;
    # dan: no spam; eve: 2,000 spam at 5.0; 300 ham each, far below.
    ann_spam = np.sort(rng.normal(4, 1, 400))
    z80 = math.log(0.8 / 0.2)
    spam = {"ann": ann_spam, "bob": np.full(10, 6.0), "cat": np.full(15, z80), "dan": np.zeros(0),
            "eve": np.full(2000, 5.0)}
    users, y, parts = [], [], []
    for user, mine in spam.items():
        users += [user] * (len(mine) + 300)
        y += [1] * len(mine) + [0] * 300
        parts += [mine, np.full(300, -6.0)]
    scores = np.concatenate(parts)
    data = _data(users, y)
    data.uncorrected = np.zeros(len(y), dtype=bool)
    data.uncorrected[200:400] = True  # ann's second half: spam she received and did not correct
    # Spam cutoffs held high (0.999), so that no ham cutoff is held under them.
    settings = Settings("sqlite://", target_spam_as_ham=0.05, cutoff_confidence=0.9, spam_cutoff=0.999,
                        min_spam_cutoff=0.99)
    cutoffs, shared = choose_cutoffs(data, scores, settings)
    assert all(c.spam == 0.999 for c in cutoffs.values())

    # Shared: the 5 % quantile ('lower') of the 2,425 spam of all users.
    pool = np.sort(np.concatenate(list(spam.values())))
    shared_ham = round(_p(float(pool[int(np.floor(0.05 * (len(pool) - 1)))])), 6)
    assert shared is not None and shared.ham == shared_ham and 0.9 < shared_ham < 0.99
    assert shared.source.endswith(f"; ham: 5% of spam below on {len(pool)} spam of all users")
    # ann: more of her spam under the shared cutoff than 5 % plausibly allows: lowered under them.
    ann_plausible = _expected_counts(400, 0.05, 0.9)[1]
    assert np.count_nonzero(ann_spam <= _logit(shared_ham)) > ann_plausible
    assert cutoffs["ann"].ham == _under(_p(ann_spam[ann_plausible]))
    assert "on 400 spam, lowered (own " in cutoffs["ann"].source
    # bob's 10 spam prove nothing and show nothing: the shared cutoff.
    assert cutoffs["bob"].ham == shared_ham and cutoffs["bob"].source.endswith("on 10 spam, shared (own 0%)")
    # cat's 15 spam all sit at 0.80, under the shared cutoff: pulled under them.
    assert cutoffs["cat"].ham == _under(0.8) == 0.799999
    assert cutoffs["cat"].source.endswith("on 15 spam, lowered (own 100%)")
    assert cutoffs["dan"].ham == shared_ham and cutoffs["dan"].source.endswith(", shared (no spam)")
    # eve's 2,000 spam at 5.0 prove 5 % right under them: raised.
    assert cutoffs["eve"].ham == _under(_p(5.0)) == 0.993307
    assert cutoffs["eve"].source.endswith("on 2000 spam, raised (own 100%)")

    # Lower spam cutoffs: the ham cutoff is held one log-odds under them, and never under the global 0.5.
    mid, _ = choose_cutoffs(data, scores, replace(settings, spam_cutoff=0.95, min_spam_cutoff=0.8))
    odds = 0.95 / 0.05 / math.e
    assert mid["eve"].ham == round(odds / (1 + odds), 6)
    assert mid["eve"].source.endswith("raised (own 100%), held 1 log-odds under spam")
    low, _ = choose_cutoffs(data, scores - 8, settings)
    assert {c.ham for c in low.values()} == {0.5} and not any("of spam below" in c.source for c in low.values())
    off, _ = choose_cutoffs(data, scores, replace(settings, target_spam_as_ham=0.0))
    assert {c.ham for c in off.values()} == {0.5}
