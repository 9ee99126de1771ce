"""A "not spam" correction is learnt until the message is *ham* at the user's cutoffs, not merely unsure.

Catches (a planted defect): the stop rule of the feedback refit's doubling
(``spamtl/services/feedback.py``, ``_refit_user``) for ham taken as "below the spam cutoff"
(``p < spam_cutoff``) instead of "at most the ham cutoff" (``p <= ham_cutoff``): the corrected spam
stopped in the unsure band (0.31 here), and the filter kept doubting mail the user had vouched for.
Only the spam side of the doubling was tested.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spamtl.services.classify import open_reader, prepare
from spamtl.services.cutoffs import set_cutoffs
from spamtl.services.feedback import record_feedback
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import NOW
from ..small_store import build_store

SPAM_CUTOFF, HAM_CUTOFF = 0.9, 0.05  # bob's: a wide unsure band, so "not spam" and "ham" differ


@pytest.fixture
def store(tmp_path) -> Iterator[tuple[object, Settings]]:  # type: ignore[no-untyped-def]
    settings = build_store(tmp_path, {"ann": (None, False), "bob": (None, False)})
    engine = make_engine(settings.database_url)
    cutoffs = set_cutoffs(engine, settings, user="bob", spam=SPAM_CUTOFF, ham=HAM_CUTOFF)
    assert (cutoffs.spam_cutoff, cutoffs.ham_cutoff) == (SPAM_CUTOFF, HAM_CUTOFF)
    yield engine, Settings(database_url=settings.database_url)  # the default feedback settings
    engine.dispose()


def _probability(settings: Settings, user: str, raw: bytes) -> tuple[float, str]:
    """The model's probability and verdict for ``user`` (whatever their labels say)."""
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        model = reader.user_model(user)
        p = model.score_message(prepare(raw).raw).probability
        return p, model.verdict(p)
    finally:
        reader.store.close()


def test_a_ham_correction_ends_at_or_below_the_ham_cutoff(store) -> None:  # type: ignore[no-untyped-def]
    engine, settings = store
    wanted = _mails(21, "spam", 1)[0]  # spam to everyone, but bob subscribed to it
    result = record_feedback(engine, settings, user="bob", label="ham", raw=wanted, now=NOW)
    assert result.probability_before is not None and result.probability_before > SPAM_CUTOFF  # a real correction
    assert result.probability_after is not None and result.probability_after <= HAM_CUTOFF, result
    # The model itself says ham now (the label aside), and ann's view of it did not move.
    p, verdict = _probability(settings, "bob", wanted)
    assert abs(p - result.probability_after) < 1e-9 and verdict == "ham"
    assert _probability(settings, "ann", wanted)[1] == "spam"


def test_a_spam_correction_ends_at_or_above_the_spam_cutoff(store) -> None:  # type: ignore[no-untyped-def]
    """The other side, for symmetry (already caught elsewhere with a demanding spam cutoff)."""
    engine, settings = store
    unwanted = _mails(22, "bob", 1)[0]  # a colleague's mail bob now calls spam
    result = record_feedback(engine, settings, user="bob", label="spam", raw=unwanted, now=NOW)
    assert result.probability_before is not None and result.probability_before < SPAM_CUTOFF
    assert result.probability_after is not None and result.probability_after >= SPAM_CUTOFF, result
