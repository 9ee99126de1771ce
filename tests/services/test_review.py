"""The review queue: unlabelled, re-scored with the current model, and worth more than random labels."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import NOW, copy_sqlite, make_mail, write_mbox

runner = CliRunner()


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


def _family(seed: int, n: int) -> list[bytes]:
    """dan's family mail: words nobody has labelled, so every model is unsure about it."""
    rng = random.Random(f"family-{seed}")
    words = "grandma dinner photos birthday garden holiday cousin recipe weekend".split()
    return [make_mail(f"family {rng.choice(words)} {i}", " ".join(rng.choice(words) for _ in range(12)),
                      sender="mum@family.example") for i in range(n)]


@pytest.fixture(scope="module")
def pool_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Users disagree about newsletters (ann: spam, bob: ham); dan, with few labels, finds them spam.

    dan's pool of unlabelled classified mail is mostly easy spam and ham with a
    few newsletters and family mails (ham, words nobody labelled); his test
    set has both too.  Both kinds score near p = 0.5 and are misranked against
    each other; their labels are the ones that teach his model.
    """
    from spamtl.mail.sources import RawMail
    from spamtl.services.classify import classify_messages, open_reader

    tmp = tmp_path_factory.mktemp("review")
    db = f"sqlite:///{tmp / 'review.sqlite3'}"
    assert run(db, "init").exit_code == 0
    boxes = {"ann": (_mails(1, "spam", 20) + _mails(2, "newsletter", 15), _mails(3, "ann", 25)),
             "bob": (_mails(4, "spam", 20), _mails(5, "bob", 25) + _mails(6, "newsletter", 15)),
             "dan": (_mails(7, "spam", 6), _mails(8, "dan", 6))}
    for user, (spam, ham) in boxes.items():
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-s.mbox", spam)), "-l", "spam").exit_code == 0
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-h.mbox", ham)), "-l", "ham").exit_code == 0
    assert run(db, "train").exit_code == 0
    pool = ([(m, "spam") for m in _mails(9, "spam", 30)] + [(m, "ham") for m in _mails(10, "dan", 30)]
            + [(m, "spam") for m in _mails(11, "newsletter", 6)] + [(m, "ham") for m in _family(15, 6)])
    random.Random(0).shuffle(pool)
    test = ([(m, "spam") for m in _mails(12, "spam", 10)] + [(m, "ham") for m in _mails(13, "dan", 10)]
            + [(m, "spam") for m in _mails(14, "newsletter", 10)] + [(m, "ham") for m in _family(16, 10)])
    reader = open_reader(make_engine(db), Settings(database_url=db))
    try:
        verdicts = list(classify_messages(reader, user="dan", mails=[RawMail(f"p{i}", m) for i, (m, _) in
                                                                     enumerate(pool)], now=NOW))
    finally:
        reader.store.close()
    truth = {v.sha256: label for v, (_, label) in zip(verdicts, pool)}  # type: ignore[union-attr]
    return {"db": db, "tmp": tmp, "truth": truth, "test": test, "pool": pool}


def _error(db: str, test: list[tuple[bytes, str]]) -> float:
    from spamtl.metrics import roc_auc
    from spamtl.services.classify import open_reader, prepare

    reader = open_reader(make_engine(db), Settings(database_url=db))
    try:
        model = reader.user_model("dan")
        scores = [model.score_message(prepare(raw).raw).probability for raw, _ in test]
    finally:
        reader.store.close()
    return 100 * (1 - roc_auc(np.array([label == "spam" for _, label in test]), np.array(scores)))


def _label(db: str, shas: list[str], truth: dict[str, str]) -> None:
    from spamtl.services.feedback import record_feedback
    from spamtl.store.engine import make_engine

    engine = make_engine(db)
    settings = Settings(database_url=db)
    for sha in shas:
        record_feedback(engine, settings, user="dan", label=truth[sha], ref=sha, now=NOW + timedelta(hours=1))
    engine.dispose()


def test_labelling_the_queue_beats_labelling_random_mail(pool_store: dict[str, object], tmp_path: Path) -> None:
    """The review protocol in small: top-k of the queue vs k random from the same pool (mean of 5 draws)."""
    from spamtl.services.review import review_queue

    db, truth, test = str(pool_store["db"]), pool_store["truth"], pool_store["test"]
    assert isinstance(truth, dict) and isinstance(test, list)
    k = 4
    before = _error(db, test)
    queued = copy_sqlite(db, tmp_path / "queue.sqlite3")
    picked = [item.sha256 for item in review_queue(make_engine(queued), Settings(database_url=queued), user="dan", n=k)]
    assert len(picked) == k
    _label(queued, picked, truth)
    with_queue = _error(queued, test)
    random_errors = []
    for seed in range(5):
        copy = copy_sqlite(db, tmp_path / f"random{seed}.sqlite3")
        _label(copy, random.Random(seed).sample(sorted(truth), k), truth)
        random_errors.append(_error(copy, test))
    with_random = float(np.mean(random_errors))
    assert before > 5  # the newsletters are misranked before any review
    assert with_queue < with_random - 2, (before, with_queue, random_errors)


def test_queue_is_unlabelled_rescored_and_ready_for_feedback(pool_store: dict[str, object], tmp_path: Path) -> None:
    db = copy_sqlite(str(pool_store["db"]), tmp_path / "q.sqlite3")
    truth = pool_store["truth"]
    assert isinstance(truth, dict)
    items = json.loads(run(db, "review", "dan", "-n", "5", "--format", "json").stdout)
    assert len(items) == 5
    assert [i["priority"] for i in items] == sorted(i["priority"] for i in items)
    first = items[0]
    assert set(first) == {"id", "sha256", "message_id", "subject", "probability", "verdict", "priority", "shared",
                          "group", "personal", "why", "spam_cutoff", "ham_cutoff"}
    # each item's parts are the scorer's (as explain shows them), and rank it
    from spamtl.services.review import review_priority

    for item in items:
        shown = json.loads(run(db, "explain", "dan", "--id", item["id"], "--format", "json").stdout)
        totals = {kind: 0.0 for kind in ("shared", "group", "personal")} | {p["kind"]: p["total"] for p in shown["parts"]}
        assert {kind: item[kind] for kind in totals} == {kind: round(total, 6) for kind, total in totals.items()}
        priority, why = review_priority(shown["logit"], totals["shared"], totals["personal"])
        assert (item["priority"], item["why"]) == (round(priority, 6), why)
    # the queue scores with the current model, not the logged probability
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    con.execute("UPDATE classifications SET probability = 0.5")
    con.commit()
    con.close()
    again = json.loads(run(db, "review", "dan", "-n", "5", "--format", "json").stdout)
    assert again == items and all(i["probability"] != 0.5 for i in items)
    # labelling the first item takes it off the queue (ids work with feedback --id)
    assert run(db, "feedback", "dan", f"--{truth[first['sha256']]}", "--id", first["id"]).exit_code == 0
    after = json.loads(run(db, "review", "dan", "-n", "500", "--format", "json").stdout)
    assert first["id"] not in {i["id"] for i in after}
    assert len(after) == len(truth) - 1
    text = run(db, "review", "dan", "-n", "2").stdout.splitlines()
    assert text[0].startswith("dan's cutoffs: spam ") and ", ham " in text[0]  # the verdicts read with both
    assert text[1].split()[:4] == ["id", "verdict", "prob", "why"] and len(text) == 6
    assert text[-1].startswith("Label one: spamtl feedback dan --spam --id ")
    # a message whose text is gone cannot be reviewed
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    con.execute("UPDATE messages SET raw = x''")
    con.commit()
    con.close()
    assert run(db, "review", "dan").stdout.startswith("Nothing to review for dan")
    assert run(db, "review", "nobody").stderr == "Error: no user 'nobody' in the store; `spamtl users` lists them\n"


def test_priority_prefers_unsure_and_disagreeing_messages() -> None:
    from spamtl.services.review import review_priority

    assert review_priority(0.1, 0.05, 0.05)[0] < review_priority(3.0, 2.0, 1.0)[0]
    disagree, why = review_priority(1.0, 4.0, -3.0)
    assert disagree == pytest.approx(1.0 - 3.0) and why == "shared +4.00 vs personal -3.00"
    assert review_priority(1.0, 4.0, 3.0) == (1.0, "the model is unsure")


def test_the_candidates_are_each_unlabelled_message_with_text_by_its_latest_verdict(db_url: str) -> None:
    """Each message once, newest latest-verdict first, across many pages of verdicts; the user's labelled
    messages and those whose text retention dropped are left out; another user's label and verdicts change
    nothing."""
    from spamtl.services.importing import store_messages
    from spamtl.store import queries
    from spamtl.store.engine import transaction
    from spamtl.store.schema import Classification, Message

    engine = make_engine(db_url)
    try:
        with transaction(engine) as session:
            ann = queries.get_or_create_user(session=session, name="ann", group=None, now=NOW).id
            bob = queries.get_or_create_user(session=session, name="bob", group=None, now=NOW).id
            pks = store_messages(session=session, raws=[make_mail(f"m{i}", f"body {i}") for i in range(13)],
                                 now=NOW)

            def verdict(user: int, k: int, second: int) -> Classification:
                return Classification(user_id=user, message_id=pks[k], probability=0.5, verdict="unsure",
                                      created_at=NOW + timedelta(seconds=second))

            session.add_all([verdict(ann, t % 12, t) for t in range(6, 600)])  # 0-11 over and over
            session.add_all([verdict(ann, 0, 1000), verdict(ann, 12, 5), verdict(bob, 3, 2000)])
            queries.add_labels(session=session, rows=[
                {"user_id": ann, "message_id": pks[5], "label": "ham", "source": "feedback", "created_at": NOW},
                {"user_id": bob, "message_id": pks[6], "label": "spam", "source": "feedback", "created_at": NOW}])
            session.get(Message, pks[7]).raw = None  # type: ignore[union-attr]

        def candidates(limit: int) -> list[int]:
            with transaction(engine) as session:
                found = queries.unlabelled_recent(session=session, user_id=ann, limit=limit)
            return [pks.index(row.message_id) for row in found]

        assert candidates(20) == [0, 11, 10, 9, 8, 6, 4, 3, 2, 1, 12]
        assert candidates(3) == [0, 11, 10]
    finally:
        engine.dispose()
