"""spamtl's score on SpamAssassin's points scale, and the headers SpamAssassin writes with it.

S is piecewise linear in the log-odds of the spam probability, 0 at the ham cutoff and 5.0 (``required``) at
the spam cutoff; ``S >= 5.0`` exactly when ``Spam: True`` (docs/serving.md gives the formula).  Pure
formatting: no I/O, no spamtl imports.
"""

from __future__ import annotations

import math

__all__ = ["REQUIRED_SCORE", "MIN_BAND_LOGODDS", "SCORE_LIMIT", "MAX_STARS", "spamassassin_points", "score_scale",
           "spamassassin_headers"]

_P_EPSILON = 1e-9
"""Probabilities (and cutoffs) are clamped to [1e-9, 1 - 1e-9] for the score (|log-odds| <= 20.7)."""
REQUIRED_SCORE = 5.0
"""The threshold every score is shown against: SpamAssassin's default ``required_score``."""
MIN_BAND_LOGODDS = 1.0
"""Outside the unsure band S moves 5 points per band width in log-odds, but at most 5 per unit of log-odds
(training keeps a band at least 1 log-odds wide; only an administrator's cutoffs are narrower)."""
SCORE_LIMIT = 100.0
"""|S| is at most this: SpamAssassin's own extremes (USER_IN_WELCOMELIST is -100)."""
MAX_STARS = 50
"""Most ``*`` in ``X-Spam-Level``, as SpamAssassin's ``_STARS_`` tag."""


def _logodds(p: float) -> float:
    p = min(max(p, _P_EPSILON), 1.0 - _P_EPSILON)
    return math.log(p / (1.0 - p))


def spamassassin_points(probability: float, spam_cutoff: float, ham_cutoff: float) -> float:
    """S before rounding: the map of the module doc (ham cutoff 0 points, spam cutoff 5.0), in [-100, 100]."""
    z, b = _logodds(probability), _logodds(spam_cutoff)
    a = min(_logodds(ham_cutoff), b)
    slope = REQUIRED_SCORE / max(b - a, MIN_BAND_LOGODDS)
    if z >= b:
        points = REQUIRED_SCORE + slope * (z - b)
    elif z <= a:
        points = slope * (z - a)
    else:
        points = REQUIRED_SCORE * (z - a) / (b - a)
    return min(max(points, -SCORE_LIMIT), SCORE_LIMIT)


def score_scale(probability: float, spam_cutoff: float, ham_cutoff: float, verdict: str) -> tuple[float, float]:
    """``(S, 5.0)`` as shown, S with one decimal and in ``verdict``'s range (``S >= 5.0`` exactly for spam).

    ``verdict`` is ``spam``, ``ham`` or ``unsure``: the model's at these cutoffs, or the user's own label.
    """
    score = round(spamassassin_points(probability, spam_cutoff, ham_cutoff), 1)
    if verdict == "spam":
        score = max(score, REQUIRED_SCORE)
    elif verdict == "ham":
        score = min(score, 0.0)
    else:
        score = min(max(score, 0.1), round(REQUIRED_SCORE - 0.1, 1))
    return score + 0.0, REQUIRED_SCORE  # + 0.0: never "-0.0"


def spamassassin_headers(score: float, is_spam: bool, tests: list[str], version: str) -> list[tuple[str, str]]:
    """SpamAssassin's ``X-Spam-Flag``, ``X-Spam-Level`` and ``X-Spam-Status`` for a shown score.

    As its default configuration writes them (``rules/10_default_prefs.cf``): ``X-Spam-Flag: YES`` for
    spam only; ``X-Spam-Level`` one ``*`` per whole point (at most 50), an empty value below 1 point;
    ``X-Spam-Status: Yes, score=7.3 required=5.0 tests=A,B autolearn=no version=...`` (``No`` when not
    spam; the tests sorted, ``none`` when there are none).  On one line, as with ``fold_headers 0``.

    >>> for name, value in spamassassin_headers(7.3, True, ["SPAMTL_SPAM", "SPAMTL_SHARED_SPAM"], "spamtl-1.0"):
    ...     print(f"{name}: {value}")
    X-Spam-Flag: YES
    X-Spam-Level: *******
    X-Spam-Status: Yes, score=7.3 required=5.0 tests=SPAMTL_SHARED_SPAM,SPAMTL_SPAM autolearn=no version=spamtl-1.0
    """
    stars = "*" * min(max(int(score), 0), MAX_STARS)
    status = (f"{'Yes' if is_spam else 'No'}, score={score:.1f} required={REQUIRED_SCORE:.1f} "
              f"tests={','.join(sorted(tests)) or 'none'} autolearn=no version={version}")
    return ([("X-Spam-Flag", "YES")] if is_spam else []) + [("X-Spam-Level", stars), ("X-Spam-Status", status)]
