"""Forgetting a correction (TELL ``Remove: local``, ``spamc -L forget``) unlearns it at once.

Catches (a planted defect): ``spamtl/services/feedback.py`` (``forget_feedback``)
removing the user's label without refitting their personal part: the label was gone, but the
weights it had taught kept scoring similar mail as before the forget, until the night.  Only the
label's removal was tested.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spamtl.services.classify import open_reader, prepare
from spamtl.services.feedback import forget_feedback, record_feedback
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..conftest import NOW, count_rows, make_mail
from ..small_store import build_store

TAUGHT = make_mail("weekly newsletter digest 51", "this week in gardening news peonies", sender="news@garden.example")
PROBE = make_mail("weekly newsletter digest 52", "this week in gardening news dahlias", sender="news@garden.example")


@pytest.fixture
def store(tmp_path) -> Iterator[tuple[object, Settings]]:  # type: ignore[no-untyped-def]
    settings = build_store(tmp_path, {"ann": (None, True), "bob": (None, False)})  # bob reads the newsletter
    engine = make_engine(settings.database_url)
    yield engine, settings
    engine.dispose()


def _p(settings: Settings, user: str, raw: bytes) -> float:
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        return reader.user_model(user).score_message(prepare(raw).raw).probability
    finally:
        reader.store.close()


def test_forget_refits_the_user_back(store) -> None:  # type: ignore[no-untyped-def]
    engine, settings = store
    before, ann = _p(settings, "bob", PROBE), _p(settings, "ann", PROBE)
    taught = record_feedback(engine, settings, user="bob", label="spam", raw=TAUGHT, now=NOW)
    assert taught.probability_after is not None and taught.probability_after > 0.5
    learned = _p(settings, "bob", PROBE)
    assert learned > before + 0.1  # similar mail moved with the correction
    forgot = forget_feedback(engine, settings, user="bob", raw=TAUGHT, now=NOW)
    assert forgot.removed == 1 and count_rows(settings.database_url, "labels", "WHERE source = 'feedback'") == 0
    after = _p(settings, "bob", PROBE)
    # Refitted on the labels training saw: back where training left it (to the solver's tolerance).
    assert abs(after - before) < 0.01, (before, learned, after)
    assert forgot.model_version == 1 and forgot.user_labels == taught.user_labels - 1
    assert _p(settings, "ann", PROBE) == ann  # only bob's part was ever refitted


def test_forgetting_what_was_never_labelled_changes_nothing(store) -> None:  # type: ignore[no-untyped-def]
    engine, settings = store
    before = _p(settings, "bob", PROBE)
    forgot = forget_feedback(engine, settings, user="bob", raw=TAUGHT, now=NOW)
    assert (forgot.removed, forgot.model_version) == (0, None)
    assert _p(settings, "bob", PROBE) == before
