"""Group commit of the daemon's verdicts (``VerdictWriter``): batches, flush on close, per-user isolation."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from spamtl.errors import DatabaseError
from spamtl.services import classify
from spamtl.services.classify import VerdictWriter, open_reader, prepare
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..conftest import NOW, copy_sqlite, make_mail
from ..serve.test_daemon import SPAM, Daemon, probabilities, store  # noqa: F401  (store: the trained module fixture)


def rows(db: str, user: str) -> list[tuple[float, str, str]]:
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return list(con.execute(
            "SELECT c.probability, c.verdict, c.created_at FROM classifications c JOIN users u ON u.id = c.user_id "
            "WHERE u.name = ? ORDER BY c.id", (user,)))
    finally:
        con.close()


@pytest.fixture
def scored(store: dict[str, object], tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """A private copy of the trained store, alice's model, and five of her verdicts (not logged yet)."""
    db = copy_sqlite(str(store["db"]), tmp_path / "copy.sqlite3")
    settings = Settings(database_url=db)
    reader = open_reader(make_engine(settings.database_url), settings)
    model = reader.user_model("alice")
    verdicts = []
    for i in range(5):
        message = prepare(make_mail(f"writer test {i}", f"body number {i} of the writer test", message_id=f"w{i}@x"))
        verdicts.append((message, reader.classify(model, message, "test")))
    yield settings, model, verdicts
    reader.store.close()


def test_close_writes_every_queued_verdict(scored) -> None:  # type: ignore[no-untyped-def]
    settings, model, verdicts = scored
    before = rows(settings.database_url, "alice")
    writer = VerdictWriter(make_engine(settings.database_url), settings, interval=60.0)  # nothing would be written for a minute
    for k, (message, verdict) in enumerate(verdicts):
        writer.submit(model, message, verdict, NOW.replace(second=k))
    writer.close()
    after = rows(settings.database_url, "alice")
    assert after[:len(before)] == before
    assert after[len(before):] == [(v.probability, v.verdict, f"{NOW.replace(second=k):%Y-%m-%d %H:%M:%S.%f}")
                                   for k, (_, v) in enumerate(verdicts)]
    with pytest.raises(RuntimeError):
        writer.submit(model, *verdicts[0], NOW)


def test_one_transaction_per_batch(scored, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings, model, verdicts = scored
    sizes: list[int] = []
    log_each = classify.VerdictLogger.log_each

    def spy(self, entries):  # type: ignore[no-untyped-def]
        sizes.append(len(entries))
        return log_each(self, entries)

    monkeypatch.setattr(classify.VerdictLogger, "log_each", spy)
    writer = VerdictWriter(make_engine(settings.database_url), settings, interval=60.0, max_batch=3)
    for message, verdict in verdicts[:3]:
        writer.submit(model, message, verdict, NOW)
    assert writer.flush(timeout=30)  # a full batch goes at once, not after the interval
    assert sizes == [3]
    for message, verdict in verdicts[3:]:
        writer.submit(model, message, verdict, NOW)
    writer.close()
    assert sizes == [3, 2]
    assert len(rows(settings.database_url, "alice")) >= 5


def test_a_verdict_is_in_the_store_within_the_interval(scored) -> None:  # type: ignore[no-untyped-def]
    settings, model, verdicts = scored
    before = len(rows(settings.database_url, "alice"))
    writer = VerdictWriter(make_engine(settings.database_url), settings, interval=0.05)
    try:
        writer.submit(model, *verdicts[0], NOW)
        deadline = time.monotonic() + 10  # generous: the interval is 0.05 s
        while len(rows(settings.database_url, "alice")) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rows(settings.database_url, "alice")) == before + 1
    finally:
        writer.close()


def test_a_failing_users_verdicts_do_not_take_the_batch_with_them(scored) -> None:  # type: ignore[no-untyped-def]
    settings, model, verdicts = scored
    broken = dataclasses.replace(model)  # a slice of its own in the batch, whose row the store refuses
    refused = dataclasses.replace(verdicts[1][1], verdict="bogus")  # (the verdict CHECK constraint)
    ghost = dataclasses.replace(model, user="ghost", user_id=987654)  # deleted since it was loaded: no such row
    errors: list[tuple[int, str]] = []
    writer = VerdictWriter(make_engine(settings.database_url), settings, interval=60.0, on_error=lambda n, exc: errors.append((n, type(exc).__name__)))
    before = len(rows(settings.database_url, "alice"))
    writer.submit(model, *verdicts[0], NOW)
    writer.submit(broken, verdicts[1][0], refused, NOW)
    writer.submit(ghost, *verdicts[1], NOW)  # a deleted user's verdict is not stored, and that is no error
    writer.submit(model, *verdicts[2], NOW)
    writer.close()
    assert len(rows(settings.database_url, "alice")) == before + 2
    assert errors == [(1, DatabaseError.__name__)]


def test_sigterm_writes_the_queued_verdicts(store: dict[str, object], tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db = copy_sqlite(str(store["db"]), tmp_path / "daemon.sqlite3")
    monkeypatch.setenv("SPAMTL_SERVE_LOG_INTERVAL", "60")  # only the stop can write them
    d = Daemon(db, tmp_path, "--workers", "2")
    try:
        before = len(probabilities(db, "bob"))
        for _ in range(4):
            assert d.request("CHECK", SPAM, user="bob").startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; ")
        assert len(probabilities(db, "bob")) == before  # queued, not written yet
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert len(probabilities(db, "bob")) == before + 4


def test_sighup_writes_the_queued_verdicts_before_the_reload(store: dict[str, object], tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    db = copy_sqlite(str(store["db"]), tmp_path / "hup.sqlite3")
    monkeypatch.setenv("SPAMTL_SERVE_LOG_INTERVAL", "60")
    d = Daemon(db, tmp_path, "--workers", "1")
    try:
        before = len(probabilities(db, "carol"))
        for _ in range(2):
            d.request("CHECK", SPAM, user="carol")
        assert len(probabilities(db, "carol")) == before
        d.proc.send_signal(signal.SIGHUP)  # the settings (and the store) may change: the old writer finishes first
        deadline = time.monotonic() + 10
        while len(probabilities(db, "carol")) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(probabilities(db, "carol")) == before + 2
        assert d.request("CHECK", SPAM, user="carol").startswith(b"SPAMD/1.5 0 EX_OK\r\n")  # still serving
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert len(probabilities(db, "carol")) == before + 3
