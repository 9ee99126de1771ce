"""The scoring path's store access: DB-API SQL as named constants, one choke point for errors.

Everything that classifies mail (the CLI, ``spamtl serve``) reads a user's
slice of the active model and logs its verdicts through this module only.
It runs on a plain DB-API connection: the standard library's ``sqlite3``
for SQLite URLs, so a cold ``spamtl classify`` in a delivery pipeline never
imports SQLAlchemy (about 0.2 s here), or the driver connection under a
SQLAlchemy engine for every other database (PostgreSQL).

Statements are written once with ``:name`` parameters; for drivers with
another parameter style (psycopg's ``%(name)s``) they are rewritten once.
Every statement runs through :meth:`Store.execute`, which turns driver
errors into :class:`~spamtl.errors.DatabaseError` with one readable line.
Writes use ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite >= 3.24 and
PostgreSQL spell it the same way), so concurrent classifiers of the same new
message never collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from spamtl.errors import DatabaseError, redact

__all__ = ["SCHEMA_REVISION", "Store", "open_store", "timestamp"]

SCHEMA_REVISION = "0006"
"""Alembic head this code expects; a test checks it against migrations/."""

# ----------------------------------------------------------------- statements
SCHEMA = "SELECT version_num FROM alembic_version"
GENERATION = "SELECT value FROM store_state WHERE key = 'generation'"
# The generation at which a user was last deleted or renamed (queries.mark_users_changed).
USERS_CHANGED = "SELECT value FROM store_state WHERE key = 'users_changed'"
ACTIVE_VERSION = "SELECT id, feature_key, n_features, params FROM model_versions WHERE status = 'active'"
VERSION = "SELECT id, feature_key, n_features, params FROM model_versions WHERE id = :version"
USER = "SELECT id, group_name, spam_cutoff, ham_cutoff FROM users WHERE name = :name"
USER_NAMES = "SELECT name FROM users ORDER BY name"
PART = "SELECT data FROM model_parts WHERE model_version_id = :version AND kind = :kind AND name = :name"
CHANGED_PARTS = ("SELECT kind, name FROM model_parts WHERE model_version_id = :version "
                 "AND revision > :generation")
USER_CUTOFF = ("SELECT spam_cutoff, ham_cutoff, source FROM user_cutoffs "
               "WHERE model_version_id = :version AND user_name = :name")
CREATE_USER = ("INSERT INTO users (name, group_name, created_at) VALUES (:name, NULL, :now) "
               "ON CONFLICT (name) DO NOTHING")
STORE_MESSAGE = ("INSERT INTO messages (sha256, message_id, raw, size, date, received_at, subject) "
                 "VALUES (:sha256, :message_id, :raw, :size, :date, :now, :subject) "
                 "ON CONFLICT (sha256) DO NOTHING")
MESSAGE_PK = "SELECT id, raw IS NULL FROM messages WHERE sha256 = :sha256"
# A body dropped by retention comes back with the next copy, so that its verdict can be learnt from.
RESTORE_BODY = "UPDATE messages SET raw = :raw WHERE id = :pk AND raw IS NULL"
LOG_VERDICT = ("INSERT INTO classifications (user_id, message_id, probability, verdict, model_version_id, "
               "created_at) VALUES (:user_id, :message_pk, :probability, :verdict, :version, :now)")
# The user's current (latest) label of a message, if any: a correction sticks.
CURRENT_LABEL = ("SELECT l.label FROM labels l JOIN messages m ON m.id = l.message_id "
                 "WHERE l.user_id = :user_id AND m.sha256 = :sha256 ORDER BY l.id DESC LIMIT 1")

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def compress(raw: bytes) -> bytes:
    """Raw message bytes as stored (zlib level 6)."""
    return zlib.compress(raw, 6)


def naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime as the naive UTC value the store keeps (None if it cannot be represented)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError, OSError):
        return None


def timestamp(moment: datetime) -> str:
    """SQLAlchemy's SQLite DateTime storage format, so both access paths write the same values."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class Store:
    """A DB-API connection with the statements above; see the module docstring.

    Parameters
    ----------
    connection : DB-API 2 connection
    dialect : {'sqlite', 'postgresql', ...}
        Decides the parameter style and how datetimes are passed.
    owner : object, optional
        Whatever must stay alive as long as the connection (a SQLAlchemy engine).
    """

    def __init__(self, connection: Any, dialect: str, owner: Any = None) -> None:
        self.connection = connection
        self.dialect = dialect
        self._owner = owner
        self._pyformat = dialect != "sqlite"
        self._in_transaction = False

    def _reconnect_if_lost(self) -> None:
        """A new connection when the server dropped this one (a restart, an outage, a killed backend).

        A long-running reader (``spamtl serve``) then recovers by itself once
        the server is back: a statement fails while it is down, the next one
        after it returns runs.  Never inside :meth:`transaction`, which must not
        span two connections.
        """
        if self._owner is not None and not self._in_transaction and getattr(self.connection, "closed", False):
            self.connection = self._owner.reconnect()

    def _sql(self, statement: str) -> str:
        return _NAMED.sub(r"%(\1)s", statement) if self._pyformat else statement

    def value(self, moment: datetime | None) -> Any:
        """A naive UTC datetime as this driver stores it."""
        if moment is None or self.dialect != "sqlite":
            return moment
        return timestamp(moment)

    def execute(self, statement: str, params: dict[str, Any] | None = None) -> Any:
        """Run one statement; the one place where driver errors become DatabaseError."""
        try:
            self._reconnect_if_lost()
            cursor = self.connection.cursor()
            cursor.execute(self._sql(statement), params or {})
            return cursor
        except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
            raise translate(exc) from None

    def one(self, statement: str, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        row = self.execute(statement, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(statement, params).fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed at the end, rolled back on any error.

        On SQLite it starts with ``BEGIN IMMEDIATE`` so that two writers queue
        on the busy timeout instead of failing on a lock upgrade.
        """
        try:
            if self.dialect == "sqlite":
                self.execute("BEGIN IMMEDIATE")
            else:
                self._reconnect_if_lost()
            self._in_transaction = True
            yield
        except BaseException:
            self._in_transaction = False
            with contextlib.suppress(Exception):
                self.connection.rollback()
            raise
        self._in_transaction = False
        try:
            self.connection.commit()
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from None

    def finish_read(self) -> None:
        """End the implicit read transaction (PostgreSQL keeps one open after a SELECT)."""
        if self.dialect != "sqlite":
            with contextlib.suppress(Exception):
                self.connection.rollback()

    def close(self) -> None:
        """Close the connection (one under an engine goes back through the engine, then both close)."""
        if self._owner is not None:
            self._owner.dispose()
            return
        with contextlib.suppress(Exception):
            self.connection.close()


# How psycopg 3 words a failure to reach or log in to the server (refused, unknown host, bad password).
CONNECT_FAILURES = ("connection failed:", "connection to server", "failed to resolve host",
                    "could not translate host name")


def connect_failure(message: str) -> DatabaseError | None:
    """psycopg's failure to connect as one line (the first, without its prefix and libpq's hint), else None."""
    if not message.startswith(CONNECT_FAILURES):
        return None
    first = message.strip().splitlines()[0].removeprefix("connection failed:")
    return DatabaseError(f"cannot connect to the database server: {' '.join(first.split())}")


def translate(exc: BaseException) -> DatabaseError:
    """A driver error as a one-line DatabaseError that says what to do."""
    if isinstance(exc, DatabaseError):
        return exc
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper: the driver's own error
    text = redact(str(exc)).strip()
    unreachable = connect_failure(text)
    if unreachable is not None:
        return unreachable
    message = text.splitlines()[0] if text else exc.__class__.__name__
    if "locked" in message or "busy" in message:
        return DatabaseError("the database is locked by another process; try again later")
    if "no such table" in message or "does not exist" in message and "relation" in message:
        return DatabaseError("the database has no spamtl tables; run `spamtl init` first")
    if "not a database" in message or "malformed" in message or "disk image" in message:
        return DatabaseError(f"the database file is damaged ({message}); restore it from a backup "
                             "(or check it with `sqlite3 FILE 'PRAGMA integrity_check'`)")
    if "disk is full" in message or "No space left" in message or "could not extend" in message:
        return DatabaseError("the disk is full; the last change was not written (free some space and try again)")
    return DatabaseError(f"database error: {message}")


def _sqlite_file(url: str) -> str | None:
    """The file of a plain ``sqlite:///PATH`` URL (no query options), else None."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or len(url) == len(prefix):
        return None
    return url[len(prefix):]


def _busy_timeout() -> float:
    try:
        return float(os.environ.get("SPAMTL_BUSY_TIMEOUT", 30.0))
    except ValueError:
        return 30.0


def open_store(url: str) -> Store:
    """A :class:`Store` for ``url``: stdlib sqlite3 for SQLite files, else via SQLAlchemy.

    Raises
    ------
    DatabaseError
        No database at that path (``spamtl init`` creates it), or it cannot be opened.
    """
    path = _sqlite_file(url)
    if path is not None:
        if not os.path.isfile(path):
            raise DatabaseError(f"no database at {path}; run `spamtl init` first")
        try:
            con = sqlite3.connect(path, timeout=_busy_timeout(), isolation_level=None)
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise translate(exc) from None
        # isolation_level=None: autocommit, so SELECTs leave no transaction open and
        # Store.transaction issues its own BEGIN IMMEDIATE ... COMMIT.
        return _SqliteStore(con)
    from spamtl.store.engine import make_engine

    engine = make_engine(url)
    try:
        raw = engine.raw_connection()  # the pool raises the driver's own errors, unwrapped
    except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
        engine.dispose()
        raise translate(exc) from None
    return Store(raw.driver_connection, engine.dialect.name, owner=_Owner(engine, raw))


class _SqliteStore(Store):
    def __init__(self, connection: sqlite3.Connection) -> None:
        super().__init__(connection, "sqlite")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.connection.execute("ROLLBACK")
            raise
        self.execute("COMMIT")


class _Owner:
    """Keeps the engine and its pooled connection together; closing returns both."""

    def __init__(self, engine: Any, raw: Any) -> None:
        self.engine = engine
        self.raw = raw

    def reconnect(self) -> Any:
        """A new driver connection in place of one the server dropped (DatabaseError while it is down)."""
        if getattr(self.raw, "is_valid", False):
            with contextlib.suppress(Exception):
                self.raw.invalidate()  # never back into the pool, whose reset would fail on it
        try:
            self.raw = self.engine.raw_connection()
        except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
            raise translate(exc) from None
        return self.raw.driver_connection

    def dispose(self) -> None:
        if not getattr(self.raw, "is_valid", True):
            pass  # invalidated by reconnect, which could not get another
        elif getattr(self.raw.driver_connection, "closed", False):
            with contextlib.suppress(Exception):
                self.raw.invalidate()
        else:
            with contextlib.suppress(Exception):
                self.raw.rollback()  # end the read transaction PostgreSQL keeps open after a SELECT
            with contextlib.suppress(Exception):
                self.raw.close()
        self.engine.dispose()


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
