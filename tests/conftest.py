"""Shared fixtures: temporary databases, the real corpora, small synthetic mail."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

# CI runs hypothesis derandomized (the same examples every run, no example database), so a
# release cannot turn red on the day hypothesis happens to explore a new corner; exploring new
# examples is what local runs are for (a found counterexample becomes an @example).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
CORPORA = Path(os.environ.get("SPAMTL_CORPORA", REPO.parent / "shared" / "corpora"))
NOW = datetime(2026, 11, 23, 12, 0, 0)
POSTGRES_SERVER = os.environ.get("SPAMTL_TEST_POSTGRES") or None
"""URL of a PostgreSQL server (its ``postgres`` database) to run the suite on instead of SQLite files."""


def is_postgres() -> bool:
    return POSTGRES_SERVER is not None


# --- Which tests touch a database -------------------------------------------------------------
# CI runs the suite on SQLite, then again on PostgreSQL. A test that never had a database open
# (none of its own, no fixture's) cannot behave differently on the second run, so the SQLite run
# lists the tests that passed without one (--record-storeless=FILE) and the PostgreSQL run leaves
# those out (--deselect-storeless=FILE). Anything else runs again: a test that opened a database,
# ran while a fixture's database was open, was skipped, failed, or is not in the list.
# (Options a conftest adds need the "=": with a space, pytest takes FILE for a test path.)

_open_databases = 0
_touched_database = False
_storeless: dict[str, bool] = {}
"""Test id -> True while every phase so far passed with no database open."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("spamtl")
    group.addoption("--record-storeless", metavar="FILE",
                    help="write the ids of the tests that passed without any database open to FILE")
    group.addoption("--deselect-storeless", metavar="FILE",
                    help="leave out the tests FILE lists (written by --record-storeless on another run)")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    global _touched_database
    _touched_database = False


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A fixture's database may be opened in setup and closed in teardown: every phase counts.
    clean = report.passed and not _touched_database and _open_databases == 0
    _storeless[report.nodeid] = _storeless.get(report.nodeid, True) and clean


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("record_storeless")
    if path:
        ids = sorted(i for i, clean in _storeless.items() if clean)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(f"{i}\n" for i in ids))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("deselect_storeless")
    if not path:
        return
    try:
        listed = set(Path(path).read_text().splitlines())
    except OSError as e:
        raise pytest.UsageError(f"--deselect-storeless: cannot read {path}: {e.strerror}") from None
    keep = [i for i in items if i.nodeid not in listed]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid in listed])
    items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("sqlite_only")
    if marker is None:
        return
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)
    if not reason:
        raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs reason='why this is SQLite-specific'")
    if is_postgres():
        pytest.skip(f"SQLite only: {reason}")


@contextlib.contextmanager
def blank_database(folder: Path, name: str = "spamtl") -> Iterator[str]:
    """URL of a new, empty database: a not-yet-created SQLite file in ``folder``, or a new
    PostgreSQL database (CREATE DATABASE with a unique name) on ``$SPAMTL_TEST_POSTGRES``, dropped afterwards."""
    global _open_databases, _touched_database
    _open_databases += 1
    _touched_database = True
    try:
        with _new_database(folder, name) as url:
            yield url
    finally:
        _open_databases -= 1


@contextlib.contextmanager
def _new_database(folder: Path, name: str) -> Iterator[str]:
    if POSTGRES_SERVER is None:
        yield f"sqlite:///{folder / (name + '.sqlite3')}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(POSTGRES_SERVER)
    db_name = f"spamtl_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        yield server.set(database=db_name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE (PostgreSQL 13+): connections a test left open (subprocesses, pools) must not keep it alive.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def migrated_database(folder: Path, name: str = "spamtl") -> Iterator[str]:
    """Like :func:`blank_database`, upgraded to the current schema by Alembic."""
    from spamtl.store.engine import make_engine, upgrade

    with blank_database(folder, name) as url:
        engine = make_engine(url, create_dir=True)
        upgrade(engine)
        engine.dispose()
        yield url


def count_rows(url: str, table: str, where: str = "") -> int:
    """Rows in ``table`` (through SQLAlchemy, on either backend)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())
    finally:
        engine.dispose()


def copy_sqlite(url: str, path: Path) -> str:
    """A consistent copy of a (WAL-mode) SQLite store, as a URL."""
    import sqlite3

    src, dst = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{path}"


def run_sql(url: str, statement: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
    """Run one statement through SQLAlchemy (either backend), commit, and return its rows (if any)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def corpus(*parts: str) -> Path:
    """Path into ../shared/corpora; skips the test when the corpora are not beside the checkout."""
    path = CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"corpus not available: {path}")
    return path


def make_mail(subject: str, body: str, *, sender: str = "someone@example.org", message_id: str | None = None,
              extra_headers: str = "") -> bytes:
    mid = f"Message-ID: <{message_id}>\n" if message_id else ""
    return (f"From: {sender}\nTo: user@example.net\nSubject: {subject}\n{mid}{extra_headers}"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    with path.open("wb") as fh:
        for raw in messages:
            fh.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n" + raw.rstrip(b"\n") + b"\n\n")
    return path


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    """``spamtl ARGS --db DB`` in process (typer's CliRunner), ``input`` on stdin; exceptions are raised."""
    from typer.testing import CliRunner

    from spamtl.cli.app import app

    return CliRunner().invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def blank_db_url(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database (no schema yet): SQLite by default, PostgreSQL with $SPAMTL_TEST_POSTGRES."""
    with blank_database(tmp_path, "blank") as url:
        yield url


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh database upgraded to the current schema by Alembic (SQLite file, or PostgreSQL)."""
    with migrated_database(tmp_path) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[object]:
    from spamtl.store.engine import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()
