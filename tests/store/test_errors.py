"""Connection problems are one ``Error:`` line, and no output ever shows a password."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.errors import redact

from ..conftest import POSTGRES_SERVER, blank_database

runner = CliRunner()
SECRET = "hunter2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", [["users"], ["init"], ["train"], ["models"], ["classify", "alice", "-"],
                                     ["explain", "alice", "-"], ["cutoffs"]], ids=lambda c: c[0])
def test_refused_connection_is_one_line_without_password(command: list[str]) -> None:
    port = _free_port()  # nothing listens there
    result = runner.invoke(app, [*command, "--db", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:{port}/spamtl"],
                           input=b"Subject: hi\n\nhello\n", catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr == (f'Error: cannot connect to the database server: connection to server at "127.0.0.1", '
                             f"port {port} failed: Connection refused\n")


def test_filter_mode_passes_mail_through_when_the_server_refuses() -> None:
    """A delivery pipeline's process: the mail comes out marked, exit 1 (an expected error, not a bug: 70)."""
    import subprocess
    import sys

    port = _free_port()
    raw = b"From: a@example.org\nSubject: hi\n\nhello\n"
    done = subprocess.run([sys.executable, "-m", "spamtl", "classify", "--filter", "--db",
                           f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:{port}/spamtl", "--", "alice"],
                          input=raw, capture_output=True, timeout=120)
    assert done.stdout == b"X-Spamtl-Status: error\n" + raw
    assert done.returncode == 1
    assert done.stderr.decode() == (f'Error: cannot connect to the database server: connection to server at '
                                    f'"127.0.0.1", port {port} failed: Connection refused (message passed through '
                                    'unfiltered)\n')


def test_unknown_host_is_one_line_without_password() -> None:
    result = _run("users", "--db", f"postgresql+psycopg://bob:{SECRET}@no-such-host.invalid/spamtl")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot connect to the database server: ")
    assert "no-such-host.invalid" in result.stderr and result.stderr.count("\n") == 1 and SECRET not in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [(f"postgresql+psycopg2://bob:{SECRET}@db.example/spamtl",
      "Error: cannot use database URL 'postgresql+psycopg2://bob:***@db.example/spamtl': No module named 'psycopg2'; "
      "use a postgresql+psycopg:// URL with the driver from `pip install 'spamtl[postgres]'`"),
     (f"sqlite://bob:{SECRET}@/var/spamtl.sqlite3",
      "Error: cannot use database URL 'sqlite://bob:***@/var/spamtl.sqlite3': Invalid SQLite URL: "
      "sqlite://bob:***@/var/spamtl.sqlite3 Valid SQLite URL forms are: sqlite:///:memory: (or, sqlite://) "
      "sqlite:///relative/path/to/file.db sqlite:////absolute/path/to/file.db")],
    ids=["missing-driver", "bad-sqlite-url"],
)
def test_unusable_url_error_hides_the_password(url: str, message: str) -> None:
    result = _run("init", "--db", url)
    assert result.exit_code == 1
    assert result.stderr.strip() == message


def test_redact_hides_every_urls_password() -> None:
    assert redact("a postgresql+psycopg://u:p%40ss@h:5432/d and mysql://x:y@z/w") == (
        "a postgresql+psycopg://u:***@h:5432/d and mysql://x:***@z/w")
    assert redact("sqlite:////var/x.sqlite3 user@example.org") == "sqlite:////var/x.sqlite3 user@example.org"


@pytest.mark.skipif(POSTGRES_SERVER is None, reason="needs a database server (SPAMTL_TEST_POSTGRES)")
def test_init_prints_the_url_with_the_password_masked(tmp_path: Path) -> None:
    with blank_database(tmp_path) as url:
        with_password = make_url(url).set(password=SECRET)  # the test role is trusted: any password logs in
        result = _run("init", "--db", with_password.render_as_string(hide_password=False))
        assert result.exit_code == 0, result.output
        assert result.stdout == f"Database ready: {with_password.render_as_string(hide_password=True)}\n"
        assert SECRET not in result.output and ":***@" in result.stdout


@pytest.mark.skipif(POSTGRES_SERVER is None, reason="needs a database server (SPAMTL_TEST_POSTGRES)")
def test_bad_password_is_one_line_without_password() -> None:
    server = make_url(POSTGRES_SERVER)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP ROLE IF EXISTS spamtl_secretive"))
        conn.execute(text("CREATE ROLE spamtl_secretive LOGIN PASSWORD 'the-right-one'"))
    try:
        url = server.set(username="spamtl_secretive", password=SECRET)
        result = _run("users", "--db", url.render_as_string(hide_password=False))
        if result.exit_code == 0 or "does not exist" in result.stderr:
            pytest.skip("this server does not ask spamtl_secretive for a password")
        assert result.exit_code == 1
        assert result.stderr == (f'Error: cannot connect to the database server: connection to server at '
                                 f'"{server.host}", port {server.port} failed: FATAL: password authentication '
                                 'failed for user "spamtl_secretive"\n')
    finally:
        with admin.connect() as conn:
            conn.execute(text("DROP ROLE IF EXISTS spamtl_secretive"))
        admin.dispose()


@pytest.mark.skipif(POSTGRES_SERVER is None, reason="needs a database server (SPAMTL_TEST_POSTGRES)")
def test_a_long_running_store_reconnects_once_the_server_is_back(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """``spamtl serve`` keeps one connection for its life: a server restart must cost failed requests while
    the server is away (one line each), not every request until the daemon is restarted."""
    import warnings

    from spamtl.errors import DatabaseError
    from spamtl.store.engine import make_engine
    from spamtl.store.statements import GENERATION, Statement, Store

    from ..conftest import migrated_database

    def drop_connections(url: str) -> None:  # what a restart does to them
        admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                              "AND pid <> pg_backend_pid()"), {"d": make_url(url).database})
        admin.dispose()

    with migrated_database(tmp_path) as url:
        engine = make_engine(url)
        store = Store(engine)
        try:
            assert store.one(GENERATION) == (1,)
            for _ in range(2):  # once for a read, once for a write transaction
                drop_connections(url)
                with pytest.raises(DatabaseError) as lost:
                    store.one(GENERATION)  # the statement the server dropped
                assert "\n" not in str(lost.value)
                assert store.one(GENERATION) == (1,)
                store.finish_read()
            drop_connections(url)
            bump = Statement("UPDATE store_state SET value = value + 1 WHERE key = 'generation'")
            with pytest.raises(DatabaseError), store.transaction():
                store.execute(bump)
            with store.transaction():
                store.execute(bump)
            assert store.one(GENERATION) == (2,)
            drop_connections(url)
            with pytest.raises(DatabaseError):
                store.one(GENERATION)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # closing a dropped connection warns of nothing ...
                store.close()
                engine.dispose()
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []  # ... and logs no traceback


@pytest.mark.parametrize("command", [["users"], ["history", "ann"], ["cutoffs", "set", "ann", "--spam", "0.9"],
                                     ["models"], ["prune"], ["review", "ann"]], ids=" ".join)
def test_a_store_at_another_schema_is_refused_by_every_service(db_url: str, command: list[str]) -> None:
    from ..conftest import run

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    engine.dispose()
    result = run(db_url, *command)
    assert (result.exit_code, result.stderr.strip()) == (
        1, "Error: the database is at schema 0005, expected 0007; run `spamtl init` to create or upgrade it")
