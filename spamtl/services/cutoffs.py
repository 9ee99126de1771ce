"""Each user's cutoffs: chosen at training from out-of-sample scores, listed with where they come from,
overridden by an administrator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine

from spamtl.errors import UsageError
from spamtl.metrics import rows_by_task
from spamtl.services.users import existing_user
from spamtl.settings import Settings, validate_name
from spamtl.store import queries
from spamtl.store.engine import transaction

if TYPE_CHECKING:
    from spamtl.services.dataset import TrainingData

__all__ = ["Cutoff", "choose_cutoffs", "errors_within", "EffectiveCutoffs", "list_cutoffs", "set_cutoffs",
           "unset_cutoffs", "ham_for", "MIN_UNSURE_LOG_ODDS"]

MIN_UNSURE_LOG_ODDS = 1.0
"""A trained ham cutoff stays this far (log-odds) below the user's spam cutoff: every user keeps an unsure
band at least as wide as a factor e in the odds (0.875-0.95 under a 0.95 spam cutoff), so mail the model
rates just under the spam cutoff is never called ham, even where the model separates the user's mail
perfectly."""
_DIGITS = 6  # cutoffs are stored and shown as probabilities rounded to this many decimals


# ----------------------------------------------------------------- chosen at training
@dataclass(frozen=True)
class Cutoff:
    spam: float
    ham: float
    source: str


def errors_within(n: int, rate: float, confidence: float) -> tuple[int, int]:
    """How many errors among ``n`` labelled messages still fit an error ``rate`` (one-sided Clopper-Pearson
    bounds at ``confidence``).

    Returns ``(proven, plausible)``: the most errors ``k`` whose *upper* bound on the rate is <= ``rate``
    (-1 when even none would not show it: ``n`` is too small), and the most ``k`` whose *lower* bound is
    <= ``rate`` (more errors than this show the rate is exceeded).  By the duality of the exact binomial
    test, upper(k) <= rate iff P(X <= k) <= 1 - confidence, and lower(k) <= rate iff P(X <= k - 1) <=
    confidence, for X ~ Binomial(n, rate).
    """
    from scipy.special import bdtr

    # P(X <= k) passes ``confidence`` within a few standard deviations of the mean: no need to look further.
    top = min(n, int(n * rate + 12 * math.sqrt(n * rate + 1) + 12))
    cdf = bdtr(np.arange(top + 1), n, rate)
    proven = int(np.count_nonzero(cdf <= 1 - confidence)) - 1
    plausible = int(np.count_nonzero(cdf[:n] <= confidence))
    return proven, plausible


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _just_above(z: float) -> float:
    """The log-odds of the lowest stored cutoff that calls a message scored ``z`` *not* spam."""
    return _logit(math.floor(_sigmoid(z) * 10**_DIGITS + 1) / 10**_DIGITS)


def choose_cutoffs(data: TrainingData, oof_scores: np.ndarray, settings: Settings) -> tuple[dict[str, Cutoff],
                                                                                                 Cutoff | None]:
    """Each user's spam and ham cutoffs from out-of-sample scores (docs/training.md, "Verdicts and cutoffs").

    The shared cutoffs are the plain quantiles of every user's scores (:meth:`_Levels.of`); each user's start
    there and move only as far as that user's labels show at ``cutoff_confidence`` (:func:`_moved`).  Spam
    cutoffs answer to ham labels (``target_ham_fpr``; uncorrected verdicts are easy mail by construction and
    left out), ham cutoffs to spam labels and uncorrected spam verdicts (``target_spam_as_ham``).
    Returns ({}, None) when disabled (``target_ham_fpr`` 0) or without out-of-sample ham.
    """
    scored = np.isfinite(oof_scores)
    ham = (data.y == 0) & scored & data.learned
    if settings.target_ham_fpr <= 0 or not ham.any():
        return {}, None
    spam = (data.y == 1) & scored
    levels, shared = _Levels.of(oof_scores[ham], oof_scores[spam], settings)
    out = {str(user): levels.user(oof_scores[rows[ham[rows]]], oof_scores[rows[spam[rows]]])
           for user, rows in rows_by_task(data.users)}
    return out, shared


@dataclass(frozen=True)
class _Move:
    """Where :func:`_moved` put a cutoff and why."""

    z: float
    how: str  # 'raised', 'lowered' or 'kept'
    counted: int  # the mail on the wrong side of the start ('kept', 'raised') or of the new cutoff ('lowered')
    n: int
    own: float  # how far toward the quantile of these scores alone, 0 to 1


def _moved(scores: np.ndarray, start: float, lowest: float, rate: float, confidence: float) -> _Move:
    """A cutoff (log-odds; mail scored at or above it is on the wrong side) moved from ``start`` as far as
    ``scores``, the mail it must leave alone, show at ``confidence``: raised when more of them are at or
    above ``start`` than ``rate`` plausibly allows (until no more are), lowered (not under ``lowest``)
    when fewer than ``rate`` is proven below it (2,302 scores with none above prove 0.1 % at 90 %)."""
    n = len(scores)
    if n == 0:
        return _Move(start, "kept", 0, 0, 0.0)
    proven, plausible = errors_within(n, rate, confidence)
    top = np.sort(scores)[::-1]
    alone = _just_above(top[min(int(rate * n), n - 1)])

    def share(z: float) -> float:
        return 1.0 if alone == start else min(1.0, max(0.0, (z - start) / (alone - start)))

    over = int(np.count_nonzero(scores >= start))
    if over > plausible:
        z = _just_above(top[plausible])
        return _Move(z, "raised", over, n, share(z))
    if proven >= 0 and (z := max(_just_above(top[proven]), lowest)) < start:
        return _Move(z, "lowered", proven, n, share(z))
    return _Move(start, "kept", over, n, 0.0)


def _negated(move: _Move) -> _Move:
    """A ham cutoff's move, computed on negated scores (spam at or *below* it is on the wrong side)."""
    how = {"raised": "lowered", "lowered": "raised"}.get(move.how, move.how)
    return _Move(-move.z, how, move.counted, move.n, move.own)


@dataclass(frozen=True)
class _Levels:
    """The shared cutoffs (log-odds) every user's cutoffs start from, and their bounds."""

    settings: Settings
    z_min: float  # trained spam cutoffs stay above this (min_spam_cutoff, and the ham cutoff)
    z_ham_global: float  # the configured ham cutoff: the lowest ham cutoff
    z_spam: float  # the shared spam cutoff
    z_ham: float  # the shared ham cutoff

    @classmethod
    def of(cls, ham: np.ndarray, spam: np.ndarray, settings: Settings) -> tuple[_Levels, Cutoff]:
        """From every user's ham labels and spam: the plain quantiles (thousands of labels in a store that
        has users), the spam one never under ``spam_cutoff``, the ham one never under ``ham_cutoff``; and the
        shared cutoff they make."""
        z_min = _logit(max(settings.min_spam_cutoff, settings.ham_cutoff))  # spam never at or below the ham cutoff
        z_ham_global = _logit(settings.ham_cutoff)
        z_spam = float(np.quantile(ham, 1.0 - settings.target_ham_fpr, method="higher"))
        z_spam = max(z_spam, _logit(settings.spam_cutoff), z_min)
        z_ham, ham_note = z_ham_global, ""
        if settings.target_spam_as_ham > 0 and len(spam):
            z_ham = max(float(np.quantile(spam, settings.target_spam_as_ham, method="lower")), z_ham_global)
            ham_note = f" on {len(spam)} spam of all users"
        levels = cls(settings, z_min, z_ham_global, z_spam, z_ham)
        source = f"shared: target {100 * settings.target_ham_fpr:g}% ham FPR on {len(ham)} ham of all users"
        return levels, levels.cutoff(z_spam, z_ham, source, ham_note)

    def user(self, ham: np.ndarray, spam: np.ndarray) -> Cutoff:
        """One user's cutoffs from the out-of-sample scores of their ham labels and of their spam."""
        settings = self.settings
        z_ham, ham_note = self.z_ham, ", shared (no spam)"
        if settings.target_spam_as_ham > 0 and len(spam):
            ham_move = _negated(_moved(-spam, -self.z_ham, -math.inf, settings.target_spam_as_ham,
                                       settings.cutoff_confidence))
            z_ham, ham_note = ham_move.z, _ham_note(ham_move)
        if len(ham) == 0:
            return self.cutoff(self.z_spam, z_ham, "shared (no ham)", ham_note)
        move = _moved(ham, self.z_spam, _just_above(self.z_min), settings.target_ham_fpr, settings.cutoff_confidence)
        return self.cutoff(move.z, z_ham, f"target {100 * settings.target_ham_fpr:g}% ham FPR: "
                                          f"{_spam_note(move)}", ham_note)

    def cutoff(self, z: float, z_ham: float, source: str, ham_note: str = "") -> Cutoff:
        """Spam cutoff ``z`` and ham cutoff ``z_ham`` (log-odds), the ham one kept ``MIN_UNSURE_LOG_ODDS`` under
        the spam one and never below the configured ham cutoff."""
        spam_p = round(_sigmoid(z), _DIGITS)
        held = z_ham > z - MIN_UNSURE_LOG_ODDS
        z_ham = min(z_ham, z - MIN_UNSURE_LOG_ODDS)
        if z_ham <= self.z_ham_global:
            return Cutoff(spam_p, ham_for(spam_p, self.settings), source)
        held_note = f", held {MIN_UNSURE_LOG_ODDS:g} log-odds under spam" if held else ""
        return Cutoff(spam_p, round(_sigmoid(z_ham), _DIGITS),
                      f"{source}; ham: {100 * self.settings.target_spam_as_ham:g}% of spam below{ham_note}"
                      f"{held_note}")


def _spam_note(move: _Move) -> str:
    """How a user's spam cutoff moved from the shared one, in its source."""
    if move.how == "lowered":
        return f"lowered, {move.counted} of {move.n} ham above it (own {100 * move.own:.0f}%)"
    if move.how == "raised":
        return f"raised, {move.counted} of {move.n} ham at or above the shared cutoff (own {100 * move.own:.0f}%)"
    return f"shared, {move.counted} of {move.n} ham at or above it (own 0%)"


def _ham_note(move: _Move) -> str:
    """How a user's ham cutoff moved from the shared one, in its source."""
    return f" on {move.n} spam, {'shared' if move.how == 'kept' else move.how} (own {100 * move.own:.0f}%)"


# ----------------------------------------------------------------- in effect, and an administrator's
@dataclass(frozen=True)
class EffectiveCutoffs:
    user: str
    spam_cutoff: float
    ham_cutoff: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_cutoffs(engine: Engine, settings: Settings, users: list[str] | None = None) -> list[EffectiveCutoffs]:
    """Every user's cutoffs as classify applies them (same precedence: it asks the same reader)."""
    from spamtl.services.classify import open_reader

    reader = open_reader(engine, settings)
    try:
        names = reader.user_names() if users is None else users
        return [EffectiveCutoffs(u, *reader.cutoffs(u)) for u in names]
    finally:
        reader.store.close()


def ham_for(spam: float, settings: Settings) -> float:
    """The ham cutoff that goes with a spam cutoff: the global one (ham = more likely ham), never above ``spam``."""
    return min(spam, settings.ham_cutoff)


def set_cutoffs(engine: Engine, settings: Settings, *, user: str, spam: float,
                ham: float | None = None) -> EffectiveCutoffs:
    """Override ``user``'s cutoffs (over configuration and training); without ``ham``, the global ham cutoff."""
    if not 0.0 < spam <= 1.0:
        raise UsageError(f"--spam must be a probability in (0, 1], got {spam:g}")
    if ham is None:
        ham = ham_for(spam, settings)
    if not 0.0 <= ham <= spam:
        raise UsageError(f"--ham must be between 0 and --spam ({spam:g}), got {ham:g}")
    with transaction(engine) as session:
        queries.set_user_override(session=session, user_id=existing_user(session, validate_name(user)).id, spam=spam, ham=ham)
    return list_cutoffs(engine, settings, [user])[0]


def unset_cutoffs(engine: Engine, settings: Settings, *, user: str) -> EffectiveCutoffs:
    """Drop ``user``'s override: configuration, training or the global cutoffs apply again."""
    with transaction(engine) as session:
        queries.set_user_override(session=session, user_id=existing_user(session, validate_name(user)).id, spam=None, ham=None)
    return list_cutoffs(engine, settings, [user])[0]
