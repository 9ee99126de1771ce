"""What the web pages list from the classification log: pages of verdicts, corrections, activity per day,
and whose a message is.  Rows are written directly, so the expected values are the rows themselves."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from spamtl.errors import NotFoundError
from spamtl.metrics import task_auc_errors
from spamtl.services.history import corrections, daily_activity, history, user_message
from spamtl.store.engine import transaction
from spamtl.store.queries import get_or_create_user
from spamtl.store.schema import Classification, Label, Message
from tests.conftest import NOW


@pytest.fixture
def log(engine):  # type: ignore[no-untyped-def]
    """alice: 7 verdicts on 7 messages, one a minute (two share a second); bob: one verdict on message 0.
    alice corrected m1 (spam verdict -> ham) and m3 (unsure -> spam) by feedback, imported a label for m5;
    m1 came again after her correction (ham, as she said)."""
    with transaction(engine) as session:
        alice = get_or_create_user(session=session, name="alice", group=None, now=NOW)
        bob = get_or_create_user(session=session, name="bob", group=None, now=NOW)
        msgs = [Message(sha256=f"{i:064x}", size=10, received_at=NOW, subject=f"m{i}") for i in range(7)]
        session.add_all(msgs)
        session.flush()
        verdicts = ["ham", "spam", "ham", "unsure", "spam", "ham", "ham"]
        times = [NOW + timedelta(minutes=i) for i in range(7)]
        times[6] = times[5]  # two verdicts at the same time: the page boundary must not lose either
        for m, v, t in zip(msgs, verdicts, times):
            session.add(Classification(user_id=alice.id, message_id=m.id, probability=0.5, verdict=v, created_at=t))
        session.add(Classification(user_id=bob.id, message_id=msgs[0].id, probability=0.1, verdict="ham",
                                   created_at=NOW - timedelta(days=2)))
        # m1 arrives again after alice's correction: her label decides that verdict, it corrects nothing
        session.add(Classification(user_id=alice.id, message_id=msgs[1].id, probability=0.9, verdict="ham",
                                   created_at=NOW + timedelta(hours=4)))
        for m, label, source, t in ((msgs[1], "ham", "feedback", NOW + timedelta(hours=1)),
                                    (msgs[3], "spam", "feedback", NOW + timedelta(hours=2)),
                                    (msgs[5], "spam", "import", NOW + timedelta(hours=3))):
            session.add(Label(user_id=alice.id, message_id=m.id, label=label, source=source, created_at=t))
    return engine


def test_pages_of_verdicts_cover_the_log_once_in_order(log) -> None:  # type: ignore[no-untyped-def]
    seen, before = [], None  # m1's second verdict (4 hours later) comes first
    while True:
        page = history(log, user="alice", limit=2, counts=False, before=before).entries
        if not page:
            break
        seen += [e.subject for e in page]
        before = (page[-1].classified_at, page[-1].key)
    assert seen == ["m1", "m6", "m5", "m4", "m3", "m2", "m1", "m0"]


def test_corrections_list_feedback_only_with_the_verdict_they_corrected(log) -> None:  # type: ignore[no-untyped-def]
    rows = corrections(log, user="alice")
    assert [(r.subject, r.verdict, r.label) for r in rows] == [("m3", "unsure", "spam"), ("m1", "spam", "ham")]
    assert corrections(log, user="bob") == []


def test_daily_activity_counts_each_day(log) -> None:  # type: ignore[no-untyped-def]
    activity = daily_activity(log, days=3, now=NOW + timedelta(hours=5))
    assert activity.days == [(NOW - timedelta(days=d)).date().isoformat() for d in (2, 1, 0)]
    assert activity.verdicts["ham"] == [1, 0, 5] and activity.verdicts["spam"] == [0, 0, 2]
    assert activity.verdicts["unsure"] == [0, 0, 1]
    assert activity.corrections == {"ham": [0, 0, 1], "spam": [0, 0, 1]}  # the imported label is no correction
    assert daily_activity(log, days=1, now=NOW + timedelta(days=1)).verdicts["ham"] == [0]


def test_a_message_is_only_its_users(log) -> None:  # type: ignore[no-untyped-def]
    assert user_message(log, user="bob", sha256=f"{0:064x}") > 0
    with pytest.raises(NotFoundError) as theirs:
        user_message(log, user="bob", sha256=f"{1:064x}")
    with pytest.raises(NotFoundError) as nobodys:
        user_message(log, user="bob", sha256=f"{99:064x}")
    assert str(theirs.value).replace(f"{1:012x}", "x") == str(nobodys.value).replace(f"{99:012x}", "x")


def test_task_auc_errors_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    tasks = rng.choice(["a", "b", "c"], size=300)
    y = rng.random(300) < 0.4
    scores = rng.random(300) + 0.5 * y
    y[tasks == "c"] = True  # one class only: no AUC
    errors = task_auc_errors(y, scores, tasks)
    for t in ("a", "b"):
        assert errors[t] == pytest.approx(100 * (1 - roc_auc_score(y[tasks == t], scores[tasks == t])))
    assert np.isnan(errors["c"])
