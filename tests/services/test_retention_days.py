"""Raw-mail retention counts days: an unlabelled body goes after ``raw_retention_days`` (30) days, not hours.

Catches (a planted defect): ``spamtl/services/retention.py`` counting ``raw_retention_days`` in
hours, so a body went after 30 hours and ``feedback --id`` / ``explain --id`` of two-day-old mail
failed (and autolearn shrank).  ``now`` is set explicitly; the mail was classified 2, 29 and 31 days
before it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail.sources import RawMail
from spamtl.services.classify import classify_messages, open_reader
from spamtl.services.retention import PruneResult, prune
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..conftest import NOW, make_mail, run_sql
from ..small_store import build_store

runner = CliRunner()
AGES = {2: "fresh", 29: "month", 31: "old"}  # days before NOW the mail was classified -> its name


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


def _mail(name: str) -> bytes:
    return make_mail(f"weekly offer {name}", f"unlabelled news about {name} gardening roses",
                     message_id=f"{name}@retention.example")


def _has_body(db: str, name: str) -> bool:
    rows = run_sql(db, "SELECT raw IS NOT NULL FROM messages WHERE message_id = :m", {"m": f"{name}@retention.example"})
    assert len(rows) == 1, rows  # the row itself stays: a verdict refers to it
    return bool(rows[0][0])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, PruneResult]:
    """ann's unlabelled mail classified 2, 29 and 31 days ago; then `prune` at NOW with the default settings."""
    settings = build_store(tmp_path_factory.mktemp("retention"), {"ann": (None, False), "bob": (None, True)})
    db = settings.database_url
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        for days, name in AGES.items():
            list(classify_messages(reader, user="ann", now=NOW - timedelta(days=days),
                                   mails=[RawMail(name, _mail(name))]))
    finally:
        reader.store.close()
    defaults = Settings(database_url=db)
    assert (defaults.raw_retention_days, defaults.classification_retention_days) == (30, 180)
    engine = make_engine(db)
    try:
        result = prune(engine, defaults, now=NOW)
    finally:
        engine.dispose()
    return db, result


def test_bodies_younger_than_30_days_stay_older_ones_go(pruned: tuple[str, PruneResult]) -> None:
    db, result = pruned
    assert {name: _has_body(db, name) for name in AGES.values()} == {"fresh": True, "month": True, "old": False}
    assert (result.bodies_dropped, result.classifications_deleted, result.messages_deleted) == (1, 0, 0)


def test_feedback_and_explain_by_id_work_on_two_day_old_mail(pruned: tuple[str, PruneResult]) -> None:
    db = pruned[0]
    explained = run(db, "explain", "ann", "--id", "<fresh@retention.example>", "--format", "json")
    assert explained.exit_code == 0, explained.output
    assert json.loads(explained.stdout)["message_id"] == "fresh@retention.example"
    fb = run(db, "feedback", "ann", "--spam", "--id", "<fresh@retention.example>", "--format", "json")
    assert fb.exit_code == 0, fb.output
    out = json.loads(fb.stdout)
    assert out["body_missing"] is False and out["probability_after"] is not None  # learnt from at once
    # A month-old body is gone: the id still resolves, but there is nothing to explain.
    gone = run(db, "explain", "ann", "--id", "<old@retention.example>")
    assert gone.exit_code == 1
    assert gone.stderr.startswith("Error: the message ") and "its text is no longer stored" in gone.stderr


def test_a_body_counts_its_age_from_its_latest_verdict(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mail first seen 31 days ago and classified again yesterday keeps its body: yesterday's verdict
    can still be corrected by id."""
    settings = build_store(tmp_path_factory.mktemp("retention-again"), {"ann": (None, False), "bob": (None, True)})
    db = settings.database_url
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        for days in (31, 1):
            list(classify_messages(reader, user="ann", now=NOW - timedelta(days=days),
                                   mails=[RawMail("again", _mail("again"))]))
    finally:
        reader.store.close()
    engine = make_engine(db)
    try:
        result = prune(engine, Settings(database_url=db), now=NOW)
    finally:
        engine.dispose()
    assert _has_body(db, "again") and result.bodies_dropped == 0


def test_a_dropped_body_comes_back_with_the_next_copy(pruned: tuple[str, PruneResult]) -> None:
    db = pruned[0]
    assert not _has_body(db, "old")
    reader = open_reader(make_engine(db), Settings(database_url=db))
    try:
        list(classify_messages(reader, user="ann", now=NOW, mails=[RawMail("old", _mail("old"))]))
    finally:
        reader.store.close()
    assert _has_body(db, "old")
