"""Engines, the default database location, schema upgrades and error translation."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from spamtl.errors import DatabaseError, redact

__all__ = [
    "SCHEMA_REVISION",
    "BUSY_TIMEOUT_S",
    "make_engine",
    "upgrade",
    "schema_revision",
    "check_schema",
    "translate_errors",
    "display_url",
]

from spamtl.store.lite import SCHEMA_REVISION  # noqa: E402 - the one definition, importable without SQLAlchemy

BUSY_TIMEOUT_S = 30.0
"""How long SQLite waits for another writer before 'database is locked' (``SPAMTL_BUSY_TIMEOUT``)."""


def _busy_timeout() -> float:
    try:
        return float(os.environ.get("SPAMTL_BUSY_TIMEOUT", BUSY_TIMEOUT_S))
    except ValueError:
        return BUSY_TIMEOUT_S


def display_url(url: str) -> str:
    """``url`` as it may be shown or logged: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(url)


def _sqlite_path(url: str) -> str | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    return u.database or ":memory:"


def make_engine(url: str, *, create_dir: bool = False, busy_timeout: float | None = None) -> Engine:
    """An engine for ``url``.  SQLite gets WAL, foreign keys and a busy timeout.

    Raises
    ------
    DatabaseError
        The URL is malformed or names a driver that is not installed.
    """
    if busy_timeout is None:
        busy_timeout = _busy_timeout()
    try:
        path = _sqlite_path(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {redact(url)!r}: {redact(str(exc))}") from None
    if path is not None and path != ":memory:":
        folder = Path(path).expanduser().parent
        if create_dir:
            folder.mkdir(parents=True, exist_ok=True)
        elif not Path(path).expanduser().exists():
            raise DatabaseError(f"no database at {path}; run `spamtl init` first")
    try:
        engine = create_engine(url, connect_args={"timeout": busy_timeout} if path is not None else {})
    except (ArgumentError, ImportError) as exc:
        hint = ""
        if isinstance(exc, ImportError) and make_url(url).get_backend_name() == "postgresql":
            hint = "; use a postgresql+psycopg:// URL with the driver from `pip install 'spamtl[postgres]'`"
        raise DatabaseError(f"cannot use database URL {display_url(url)!r}: {redact(str(exc))}{hint}") from None
    if path is not None:
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
    return engine


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's transaction handling drive BEGIN; pysqlite's own is buggy.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL lets classifications read while train writes; NORMAL is durable in WAL.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return on_connect


def _alembic_config(connection: Any) -> Any:
    from importlib import resources

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("spamtl.migrations")))
    cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _migration_connection(engine: Engine) -> Iterator[Any]:
    """A connection in a transaction for Alembic; on SQLite with foreign keys off meanwhile.

    SQLite batch migrations copy a table, drop the original and rename the
    copy; with foreign keys on, dropping ``messages`` would cascade-delete
    every label and classification.  The pragma only takes effect outside a
    transaction, so it is set before BEGIN and restored after COMMIT.
    """
    with translate_errors(), engine.connect() as connection:
        is_sqlite = connection.dialect.name == "sqlite"
        if is_sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
            connection.commit()
        try:
            with connection.begin():
                yield connection
        finally:
            if is_sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys = ON")
                connection.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (Alembic), on a connection of this engine."""
    from alembic import command

    with _migration_connection(engine) as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (Alembic)."""
    from alembic import command

    with _migration_connection(engine) as connection:
        command.downgrade(_alembic_config(connection), revision)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    with translate_errors(), engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Raise a clear error unless the database is at the schema this code expects."""
    revision = schema_revision(engine)
    if revision != SCHEMA_REVISION:
        state = "is empty" if revision is None else f"is at schema {revision}, expected {SCHEMA_REVISION}"
        raise DatabaseError(f"the database {state}; run `spamtl init` to create or upgrade it")


# How psycopg 3 words a failure to reach or log in to the server (refused, unknown host, bad password).
_CONNECT_FAILURES = ("connection failed:", "connection to server", "failed to resolve host",
                     "could not translate host name")


def _connect_reason(message: str) -> str:
    """psycopg's connection error on one line: the first line, without its prefix and libpq's hint line."""
    first = message.strip().splitlines()[0].removeprefix("connection failed:")
    return " ".join(first.split())


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors users can act on into one-line DatabaseErrors."""
    try:
        yield
    except OperationalError as exc:
        message = redact(str(exc.orig) if exc.orig is not None else str(exc))
        if message.startswith(_CONNECT_FAILURES):
            raise DatabaseError(f"cannot connect to the database server: {_connect_reason(message)}") from None
        if "locked" in message or "busy" in message:
            raise DatabaseError("the database is locked by another process; try again later") from None
        if "no such table" in message:
            raise DatabaseError("the database has no spamtl tables; run `spamtl init` first") from None
        raise DatabaseError(f"database error: {' '.join(message.split())}") from None
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"database error: {exc}") from None
    except SQLAlchemyError as exc:
        if "file is not a database" in str(exc) or "unable to open" in str(exc):
            raise DatabaseError(f"cannot open the database: {exc.__class__.__name__}: {exc}") from None
        raise
