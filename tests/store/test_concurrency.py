"""Writes that race: many processes (threads with their own engines here) storing the same rows at once.

Each test lines the racers up with a barrier placed just before the racing
INSERT reaches the database, so every racer has already looked for the row
and found nothing: a check-then-insert implementation fails these tests every
time, on SQLite and on PostgreSQL, rather than once in a while.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, text
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail.sources import RawMail
from spamtl.services.importing import import_mail
from spamtl.services.training import train
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import NOW, count_rows, make_mail, migrated_database, write_mbox

USERS = [f"user{i:02d}" for i in range(12)]


def _line_up(engines: list[Engine], table: str) -> threading.Barrier:
    """Make each engine's first ``INSERT INTO table`` wait until every engine has reached its own."""
    barrier = threading.Barrier(len(engines), timeout=10)
    for eng in engines:
        state = {"waited": False}

        def before(conn: Any, cursor: Any, statement: str, *args: Any, state: dict[str, bool] = state) -> None:
            if not state["waited"] and statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()} "):
                state["waited"] = True
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:  # someone failed before the insert: let the rest go on
                    pass

        event.listen(eng, "before_cursor_execute", before)
    return barrier


def _race(jobs: list[Callable[[Engine], object]], url: str, table: str) -> list[BaseException]:
    """Run each job in a thread with its own engine, lined up at ``INSERT INTO table``; the errors raised."""
    engines = [make_engine(url) for _ in jobs]
    _line_up(engines, table)
    errors: list[BaseException] = []

    def run(job: Callable[[Engine], object], eng: Engine) -> None:
        try:
            job(eng)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job, eng), daemon=True) for job, eng in zip(jobs, engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors += [TimeoutError(f"racer {i} still running after 120 s") for i, t in enumerate(threads) if t.is_alive()]
    for eng in engines:
        eng.dispose()
    return errors


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A trained store of 12 users (4 spam, 4 ham each)."""
    tmp = tmp_path_factory.mktemp("race")
    with migrated_database(tmp, "race") as url:
        engine = make_engine(url)
        spam = write_mbox(tmp / "spam.mbox", _mails(1, "spam", 4))
        for k, user in enumerate(USERS):
            import_mail(engine, user=user, paths=[str(spam)], label="spam", now=NOW)
            ham = write_mbox(tmp / f"{user}.mbox", _mails(10 + k, "work", 4))
            import_mail(engine, user=user, paths=[str(ham)], label="ham", now=NOW)
        train(engine, Settings(database_url=url, mus=(1.0,)), now=NOW)
        engine.dispose()
        yield url


def _race_classify(settings: Settings, jobs: list[tuple[str, bytes]], table: str) -> list[BaseException]:
    """Classify each (user, message) in a thread of its own, lined up before ``INSERT INTO table``.

    The classify path writes through one connection of its own (:class:`spamtl.store.statements.Store`),
    so the racers are lined up in front of its INSERT directly.  On SQLite the logger's
    BEGIN IMMEDIATE serialises writers before that point (the barrier then times out
    and lets them go one by one); on PostgreSQL they really collide.
    """
    from spamtl.services.classify import classify_messages, open_reader

    serialised = settings.database_url.startswith("sqlite")
    barrier = threading.Barrier(len(jobs), timeout=2 if serialised else 20)
    errors: list[BaseException] = []

    def job(user: str, raw: bytes) -> None:
        try:
            reader = open_reader(make_engine(settings.database_url), settings)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            return
        original = reader.store.execute

        def execute(statement: Any, params: Any = None) -> Any:
            if str(statement).startswith(f"INSERT INTO {table}"):
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    pass
            return original(statement, params)

        reader.store.execute = execute  # type: ignore[method-assign]
        try:
            list(classify_messages(reader, user=user, mails=[RawMail("m", raw)], now=NOW))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)
        finally:
            reader.store.close()

    threads = [threading.Thread(target=job, args=pair, daemon=True) for pair in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors + [TimeoutError(f"classifier {i} still running after 120 s")
                     for i, t in enumerate(threads) if t.is_alive()]


def test_same_new_message_classified_for_many_users_at_once(trained: str) -> None:
    raw = make_mail("brand new", "never seen before", message_id="race-1@example")
    assert _race_classify(Settings(database_url=trained), [(u, raw) for u in USERS], "messages") == []
    assert count_rows(trained, "messages", "WHERE message_id = 'race-1@example'") == 1
    assert count_rows(trained, "classifications c JOIN messages m ON m.id = c.message_id",
                      "WHERE m.message_id = 'race-1@example'") == len(USERS)


def test_new_users_first_messages_in_parallel(db_url: str, tmp_path: Path) -> None:
    boxes = [write_mbox(tmp_path / f"{i}.mbox", _mails(100 + i, "work", 2)) for i in range(8)]

    def job(box: Path) -> Callable[[Engine], object]:
        return lambda eng: import_mail(eng, user="newbie", paths=[str(box)], label="ham", now=NOW)

    assert _race([job(b) for b in boxes], db_url, "users") == []
    assert count_rows(db_url, "users") == 1
    assert count_rows(db_url, "labels") == 16


def test_new_users_first_verdicts_in_parallel(trained: str) -> None:
    """A mailbox registered by its first verdicts (auto_create_users), six of them at once."""
    settings = Settings(database_url=trained, auto_create_users=True)
    raws = [make_mail(f"hello {i}", f"first mail {i} of a new user") for i in range(6)]
    assert _race_classify(settings, [("brand-new", r) for r in raws], "users") == []
    assert count_rows(trained, "users", "WHERE name = 'brand-new'") == 1
    assert count_rows(trained, "classifications c JOIN users u ON u.id = c.user_id", "WHERE u.name = 'brand-new'") == 6


def test_two_imports_of_the_same_mail_for_different_users(db_url: str, tmp_path: Path) -> None:
    box = write_mbox(tmp_path / "shared.mbox", _mails(7, "spam", 20))

    def job(user: str) -> Callable[[Engine], object]:
        return lambda eng: import_mail(eng, user=user, paths=[str(box)], label="spam", now=NOW)

    assert _race([job("ann"), job("bob"), job("cat")], db_url, "messages") == []
    assert count_rows(db_url, "messages") == 20
    assert count_rows(db_url, "labels") == 60


def test_feedback_during_train_without_cached_features(trained: str) -> None:
    from spamtl.services.feedback import record_feedback

    with make_engine(trained).begin() as conn:
        conn.execute(text("DELETE FROM message_features"))
    settings = Settings(database_url=trained, mus=(1.0,))
    raw = make_mail("a correction", "user03 says this is spam after all")

    jobs: list[Callable[[Engine], object]] = [
        lambda eng: train(eng, settings, now=NOW),
        lambda eng: record_feedback(eng, settings, user="user03", label="spam", raw=raw, now=NOW),
    ]
    assert _race(jobs, trained, "message_features") == []
    # Both computed features of the same labelled mail; each row is cached once.
    assert count_rows(trained, "message_features") == count_rows(
        trained, "(SELECT DISTINCT message_id FROM labels) AS labelled")


def test_two_feature_caches_filled_at_once(trained: str) -> None:
    from spamtl.features import FeatureConfig
    from spamtl.services.dataset import feature_rows

    with make_engine(trained).begin() as conn:
        conn.execute(text("DELETE FROM message_features"))
        pks = [int(p) for (p,) in conn.execute(text("SELECT id FROM messages"))]
    config = FeatureConfig()
    results: list[dict[int, object]] = []
    jobs: list[Callable[[Engine], object]] = [lambda eng: results.append(feature_rows(eng, pks, config))] * 2
    assert _race(jobs, trained, "message_features") == []
    assert len(results) == 2 and set(results[0]) == set(results[1]) == set(pks)
    assert count_rows(trained, "message_features") == len(pks)


# ------------------------------------------------------------- the training lock
def _hold_train_lock(url: str, *, host: str, pid: int, heartbeat: datetime) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO locks (name, host, pid, acquired_at, heartbeat_at) "
                          "VALUES ('train', :h, :p, :a, :b)"),
                     {"h": host, "p": pid, "a": datetime(2026, 11, 25, 3, 15), "b": heartbeat})
    engine.dispose()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (pids are not reused this quickly)


def test_second_train_exits_75_with_one_line(trained: str) -> None:
    host, pid = socket.gethostname(), os.getppid()  # a live process that is not this one
    _hold_train_lock(trained, host=host, pid=pid, heartbeat=datetime.now() + timedelta(hours=1))
    try:
        result = CliRunner().invoke(app, ["train", "--db", trained], catch_exceptions=False)
        assert result.exit_code == 75
        assert result.stderr == (f"Error: another spamtl train is running (pid {pid} on {host} since "
                                 "2026-11-25 03:15:00 UTC); try again later\n")
    finally:
        with make_engine(trained).begin() as conn:
            conn.execute(text("DELETE FROM locks"))


@pytest.mark.parametrize("holder", ["dead-pid-here", "lapsed-lease-elsewhere"])
def test_stale_train_lock_is_taken_over(trained: str, holder: str) -> None:
    if holder == "dead-pid-here":
        _hold_train_lock(trained, host=socket.gethostname(), pid=_dead_pid(), heartbeat=datetime.now())
    else:
        _hold_train_lock(trained, host="elsewhere.example", pid=1, heartbeat=datetime(2026, 11, 25, 3, 16))
    result = CliRunner().invoke(app, ["train", "--db", trained, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert count_rows(trained, "locks") == 0  # released after the run


def test_the_train_locks_heartbeat_leaves_worker_processes_allowed(db_url: str) -> None:
    """Catches: the heartbeat thread every train runs beside turning its folds serial (training refuses
    to fork while a thread it does not know runs; spamtl.parallel)."""
    from spamtl.parallel import fork_pool_is_safe
    from spamtl.services.lock import hold

    engine = make_engine(db_url)
    with hold(engine, "train", heartbeat=0.01):
        assert [t.name for t in threading.enumerate()].count("spamtl-lock-train") == 1
        assert fork_pool_is_safe()
    engine.dispose()


def test_lock_is_exclusive_between_racers(db_url: str) -> None:
    from spamtl.services.lock import LockBusyError, acquire

    won: list[int] = []

    def job(pid: int) -> Callable[[Engine], object]:
        return lambda eng: won.append(acquire(eng, "train", what="train", pid=pid).pid)

    errors = _race([job(os.getpid()), job(os.getppid())], db_url, "locks")
    assert len(won) == 1 and len(errors) == 1 and isinstance(errors[0], LockBusyError)


@pytest.mark.slow
def test_cli_classify_same_new_message_for_12_users_in_processes(trained: str, tmp_path: Path) -> None:
    mail = tmp_path / "new.eml"
    mail.write_bytes(make_mail("process race", "a message nobody has seen", message_id="race-2@example"))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "spamtl", "classify", u, str(mail), "--db", trained],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for u in USERS]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]  # type: ignore[union-attr]
    assert [r for r in results if r[0] != 0] == []
    assert count_rows(trained, "messages", "WHERE message_id = 'race-2@example'") == 1


@pytest.mark.slow
def test_cli_two_trains_one_runs_other_waits_or_says_so(trained: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "spamtl", "train", "--db", trained], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read().decode()) for p in procs)  # type: ignore[union-attr]
    assert results[0][0] == 0
    assert results[1][0] == 0 or (results[1][0] == 75 and results[1][1].startswith(
        "Error: another spamtl train is running (pid ") and results[1][1].count("\n") == 1)
    assert count_rows(trained, "model_versions", "WHERE status = 'active'") == 1


def test_model_parts_are_read_by_one_thread_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: .npz reads without the lock.  NumPy parses array headers with ast, whose state CPython 3.11
    shares between threads: concurrent parses failed a classify race in CI with "SystemError: AST
    constructor recursion depth mismatch".  Here ast.parse is widened (a short sleep) and the threads
    inside it at once are counted."""
    import ast
    import time

    from spamtl.features import IdfWeights
    from spamtl.model.weights import SparsePart

    part = SparsePart(np.array([1, 5], dtype=np.int64), np.array([0.5, -1.0]), 0.25).to_bytes()
    idf = IdfWeights(np.array([2], dtype=np.int64), np.array([1.5]), 1.0, 10).to_bytes()
    inside, most = [0], [0]
    guard = threading.Lock()
    original = ast.parse

    def slow_parse(*args: Any, **kwargs: Any) -> Any:
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                assert SparsePart.from_bytes(part).intercept == 0.25
                assert IdfWeights.from_bytes(idf).n_documents == 10
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert most[0] == 1
