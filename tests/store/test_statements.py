"""The scoring path's statements (spamtl/store/statements.py) on a SQLite file opened without SQLAlchemy."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from spamtl.errors import DatabaseError
from spamtl.services.classify import VerdictLogger, open_reader, prepare
from spamtl.settings import Settings
from spamtl.store.engine import SqliteFile, make_engine, store_source

from ..conftest import make_mail
from ..small_store import build_store

NEW_MAIL = make_mail("quarterly figures", "the numbers for the board", sender="cfo@work.example",
                     message_id="figures-1@work.example", extra_headers="Date: Tue, 2 Mar 2027 10:00:00 +0100\n")
LATER = datetime(2027, 3, 4, 5, 6, 7)  # a whole second: the stored text still has its microseconds


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every column of the rows a verdict writes, with SQLite's storage class of each stamp and body."""
    with sqlite3.connect(path) as db:
        return {
            "users": db.execute("SELECT id, name, group_name, created_at, typeof(created_at) FROM users "
                                "ORDER BY id").fetchall(),
            "messages": db.execute("SELECT id, sha256, message_id, raw, typeof(raw), size, date, received_at, "
                                   "subject FROM messages ORDER BY id").fetchall(),
            "classifications": db.execute("SELECT * FROM classifications ORDER BY id").fetchall(),
        }


def _log(source: object, settings: Settings, user: str) -> str:
    reader = open_reader(source, settings)  # type: ignore[arg-type]
    try:
        model = reader.user_model(user)
        message = prepare(NEW_MAIL)
        verdict = reader.classify(model, message, "<stdin>")
        VerdictLogger(reader.store, create_users=True).log(model, [(message, verdict)], LATER)
    finally:
        reader.store.close()
    return verdict.header_value()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("statements")
    build_store(tmp, {"ann": (None, True)})
    return tmp / "store.sqlite3"


@pytest.mark.parametrize("user", ["ann", "newcomer"])
def test_a_sqlite_file_writes_what_the_engine_writes(trained: Path, tmp_path: Path, user: str) -> None:
    """Catches: a stamp or a body converted otherwise than SQLAlchemy's DateTime and LargeBinary do (the
    text of a stamp is compared and sorted in SQL: retention, autolearn windows), or another verdict."""
    paths = [tmp_path / "engine.sqlite3", tmp_path / "file.sqlite3"]
    for path in paths:
        shutil.copy(trained, path)
    settings = Settings(database_url=f"sqlite:///{paths[0]}")
    engine = make_engine(settings.database_url)
    by_engine = _log(engine, settings, user)
    engine.dispose()
    by_file = _log(SqliteFile(str(paths[1])), settings, user)
    assert by_file == by_engine
    expected, got = _rows(paths[0]), _rows(paths[1])
    assert got == expected
    assert got["classifications"][-1][-1] == "2027-03-04 05:06:07.000000"
    assert got["messages"][-1][6] == "2027-03-02 09:00:00.000000"


def test_only_a_plain_sqlite_file_url_skips_sqlalchemy(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    store.touch()
    assert isinstance(store_source(f"sqlite:///{store}"), SqliteFile)
    assert isinstance(store_source(f"sqlite+pysqlite:///{store}"), SqliteFile)
    for url in (f"sqlite:///{store}?timeout=3", "sqlite://", "sqlite:///:memory:"):
        assert not isinstance(store_source(url), SqliteFile), url
    with pytest.raises(DatabaseError, match=f"^no database at {tmp_path}/missing.sqlite3; run `spamtl init` first$"):
        store_source(f"sqlite:///{tmp_path}/missing.sqlite3")


def test_a_store_at_another_schema_is_refused_through_a_sqlite_file(trained: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    shutil.copy(trained, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    with pytest.raises(DatabaseError, match=r"^the database is at schema 0001, expected \d{4}; run `spamtl init` "):
        open_reader(SqliteFile(str(path)), Settings(database_url=f"sqlite:///{path}"))


def test_filter_mode_on_a_sqlite_file_loads_no_sqlalchemy(trained: Path, tmp_path: Path) -> None:
    """A delivery pipeline's process for one message: SQLAlchemy's import is most of its start-up."""
    path = tmp_path / "copy.sqlite3"
    shutil.copy(trained, path)
    code = ("import sys, runpy; sys.argv = ['spamtl', 'classify', 'ann', '--filter', '--db', sys.argv[1]]\n"
            "try:\n runpy.run_module('spamtl', run_name='__main__')\nexcept SystemExit:\n pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy')[:3], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], input=NEW_MAIL, capture_output=True,
                          timeout=120)
    assert done.stdout.startswith(b"X-Spamtl-Status: ")
    assert b"version=1" in done.stdout.splitlines()[0]
    assert done.stderr.decode().strip().splitlines()[-1] == "[]"
