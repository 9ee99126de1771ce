"""Engines, schema upgrades and checks, and the one translation of database errors.

SQLAlchemy is imported where an engine is made, not with this module: a one-message process opens a
SQLite store as a :class:`SqliteFile` and never loads it (most of such a process's start-up).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from spamtl.errors import DatabaseError, UsageError, redact

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session  # imported when a transaction opens: a cold classify needs no ORM

__all__ = [
    "SCHEMA_REVISION",
    "BUSY_TIMEOUT_S",
    "make_engine",
    "SqliteFile",
    "store_source",
    "schema_error",
    "schema_revision",
    "permission_warnings",
    "upgrade",
    "downgrade",
    "check_schema",
    "translate",
    "translate_errors",
    "transaction",
]

SCHEMA_REVISION = "0007"
"""Alembic head this code expects; a test checks it against migrations/."""

BUSY_TIMEOUT_S = 30.0
"""How long SQLite waits for another writer before 'database is locked' (``SPAMTL_BUSY_TIMEOUT``)."""


def _busy_timeout() -> float:
    try:
        return float(os.environ.get("SPAMTL_BUSY_TIMEOUT", BUSY_TIMEOUT_S))
    except ValueError:
        return BUSY_TIMEOUT_S


def _sqlite_path(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    return u.database or ":memory:"


STORE_MODE = 0o600
"""Permissions of a new SQLite store: it holds everyone's mail, so its owner's account only."""
GROUP_STORE_MODE = 0o660
"""Permissions of a store shared with a group (``spamtl init --group``).  Group write, not just read:
every process that opens a WAL-mode store writes its ``-shm`` file, and classifying logs verdicts."""


def make_engine(url: str, *, create_dir: bool = False, busy_timeout: float | None = None,
                group: str | None = None) -> Engine:
    """An engine for ``url``.  SQLite gets WAL, foreign keys and a busy timeout.

    With ``create_dir`` a missing SQLite file is created here, before SQLite
    opens it, with :data:`STORE_MODE` (or :data:`GROUP_STORE_MODE` and
    ``group``) whatever the umask: SQLite gives the ``-wal`` and ``-shm`` files
    the database file's permission bits, so this is the one place that decides
    who can read the store.  ``group`` on an existing file changes its group and
    mode (and those of its ``-wal``/``-shm``), as asked; without it an existing
    file is left as it is (see :func:`permission_warnings`).

    Raises
    ------
    DatabaseError
        The URL is malformed or names a driver that is not installed.
    UsageError
        ``group`` is unknown, is not the caller's to give, or the URL is not a SQLite file.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if busy_timeout is None:
        busy_timeout = _busy_timeout()
    try:
        path = _sqlite_path(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {redact(url)!r}: {redact(str(exc))}") from None
    if group is not None and (path is None or path == ":memory:"):
        raise UsageError("--group applies to a SQLite file only (a database server has its own roles)")
    if path is not None and path != ":memory:":
        folder = Path(path).expanduser().parent
        if create_dir:
            folder.mkdir(parents=True, exist_ok=True)
            _create_store_file(Path(path).expanduser(), group)
        else:
            _require_file(path)
    try:
        engine = create_engine(url, connect_args={"timeout": busy_timeout} if path is not None else {})
    except (ArgumentError, ImportError) as exc:
        hint = ""
        if isinstance(exc, ImportError) and make_url(url).get_backend_name() == "postgresql":
            hint = "; use a postgresql+psycopg:// URL with the driver from `pip install 'spamtl[postgres]'`"
        raise DatabaseError(f"cannot use database URL {redact(url)!r}: {redact(str(exc))}{hint}") from None
    if path is not None:
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
    return engine


def _require_file(path: str) -> None:
    if not Path(path).expanduser().exists():
        raise DatabaseError(f"no database at {path}; run `spamtl init` first")


_PLAIN_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^~?#%][^?#%]*)")


class SqliteFile:
    """A SQLite store opened with the standard library's driver, as :func:`make_engine` opens it (the same
    path, timeout, thread check and pragmas), for :class:`~spamtl.store.statements.Store` alone."""

    dialect = SimpleNamespace(name="sqlite")

    def __init__(self, path: str, busy_timeout: float | None = None) -> None:
        _require_file(path)
        self.path = os.path.abspath(path)
        self.busy_timeout = _busy_timeout() if busy_timeout is None else busy_timeout

    def raw_connection(self) -> _OwnConnection:
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
        _sqlite_pragmas(self.busy_timeout)(connection, None)
        return _OwnConnection(connection)

    def dispose(self) -> None:
        """Nothing to do (as :meth:`sqlalchemy.engine.Engine.dispose`): each Store closes its own connection."""


class _OwnConnection:
    """A :class:`SqliteFile` connection with the methods Store uses on a pooled one."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.driver_connection = connection

    def rollback(self) -> None:
        self.driver_connection.rollback()

    def close(self) -> None:
        self.driver_connection.close()

    invalidate = close


def store_source(url: str) -> Engine | SqliteFile:
    """What a one-message process reads and logs through: a :class:`SqliteFile` for a plain SQLite file URL
    (no query string, no ``~``), else :func:`make_engine` (PostgreSQL, a URL with driver options)."""
    plain = _PLAIN_SQLITE_URL.fullmatch(url)
    if plain is None or plain["path"] == ":memory:":
        return make_engine(url)
    return SqliteFile(plain["path"])


def _group_id(group: str) -> int:
    import grp

    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no group {group!r} on this machine") from None


def _create_store_file(path: Path, group: str | None) -> None:
    """The empty SQLite file with its final permissions (an existing one changes only when ``group`` is given)."""
    mode, gid = (STORE_MODE, -1) if group is None else (GROUP_STORE_MODE, _group_id(group))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        if group is None:
            return
        created, files = False, [f for f in (path, *_wal_files(path)) if f.exists()]
    else:
        os.close(fd)
        created, files = True, [path]
    for file in files:
        try:
            os.chown(file, -1, gid)
            os.chmod(file, mode)  # exactly: the umask took bits away from os.open's mode
        except PermissionError:
            if created:
                path.unlink()  # not left behind with another group than asked
            raise UsageError(f"cannot give {file} to group {group!r}: only its owner can, and only to a group "
                             "they are in") from None


def _wal_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def permission_warnings(url: str) -> list[str]:
    """One line for each file of a SQLite store that every local account may open, and what to do."""
    path = _sqlite_path(url)
    if path is None or path == ":memory:":
        return []
    store = Path(path).expanduser()
    out = []
    for file in (store, *_wal_files(store)):
        try:
            mode = file.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o007:
            out.append(f"{file} is open to every account on this machine (mode {mode:04o}), and it holds "
                       f"everyone's mail; run `chmod 600 {file}`, or `spamtl init --group GROUP` to share it "
                       "with one group")
    try:
        info, folder = store.stat(), store.parent.stat()
    except OSError:
        return out
    if info.st_mode & 0o020 and (folder.st_mode & 0o030 != 0o030 or folder.st_gid != info.st_gid):
        import grp

        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        out.append(f"the store is shared with group {group}, but its folder is not: SQLite creates the -wal "
                   f"and -shm files beside it, so run `chgrp {group} {store.parent} && chmod 2770 {store.parent}`")
    return out


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
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


def schema_error(revision: str | None) -> DatabaseError | None:
    """What is wrong with a store at schema ``revision`` (None: no schema at all), or None."""
    if revision == SCHEMA_REVISION:
        return None
    state = "is empty" if revision is None else f"is at schema {revision}, expected {SCHEMA_REVISION}"
    return DatabaseError(f"the database {state}; run `spamtl init` to create or upgrade it")


def schema_revision(connection: Any) -> str | None:
    """The schema revision of the store behind a driver (DB-API) ``connection``; None without spamtl tables."""
    try:
        with translate_errors():
            cursor = connection.cursor()
            cursor.execute("SELECT version_num FROM alembic_version")
            row = cursor.fetchone()
    except DatabaseError as exc:
        if "no spamtl tables" not in str(exc):
            raise
        return None
    return None if row is None else str(row[0])


def check_schema(engine: Engine | SqliteFile) -> None:
    """Raise a clear error unless the database is at the schema this code expects."""
    with translate_errors():  # connecting runs the pragmas: a file that is not a database fails here
        pooled = engine.raw_connection()
    try:
        revision = schema_revision(pooled.driver_connection)
        pooled.rollback()
    finally:
        pooled.close()
    problem = schema_error(revision)
    if problem is not None:
        raise problem


# How psycopg 3 words a failure to reach or log in to the server (refused, unknown host, bad password).
_CONNECT_FAILURES = ("connection failed:", "connection to server", "failed to resolve host",
                     "could not translate host name")


def translate(exc: BaseException) -> DatabaseError | None:
    """A database error as a one-line :class:`DatabaseError` that says what to do, else None (a bug).

    The one translation of driver errors (SQLAlchemy's wrappers, ``sqlite3``, psycopg), for the
    store's own choke points and for the CLI's last resort.
    """
    if isinstance(exc, DatabaseError):
        return exc
    if type(exc).__module__.startswith("sqlalchemy"):  # then SQLAlchemy is loaded already
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        if isinstance(exc, DBAPIError) and exc.orig is not None:
            exc = exc.orig
        elif isinstance(exc, SQLAlchemyError):
            text_ = str(exc)
            if "file is not a database" in text_ or "unable to open" in text_:
                return DatabaseError(f"cannot open the database: {exc.__class__.__name__}: {exc}")
            return None
    if not isinstance(exc, sqlite3.Error) and not type(exc).__module__.startswith("psycopg"):
        return None
    message = redact(str(exc)).strip()
    if message.startswith(_CONNECT_FAILURES):
        first = message.splitlines()[0].removeprefix("connection failed:")
        return DatabaseError(f"cannot connect to the database server: {' '.join(first.split())}")
    message = message.splitlines()[0] if message else exc.__class__.__name__
    if "locked" in message or "busy" in message:
        return DatabaseError("the database is locked by another process; try again later")
    if "no such table" in message or "does not exist" in message and "relation" in message:
        return DatabaseError("the database has no spamtl tables; run `spamtl init` first")
    if "not a database" in message or "malformed" in message or "disk image" in message:
        return DatabaseError(f"the database file is damaged ({message}); restore it from a backup "
                             "(or check it with `sqlite3 FILE 'PRAGMA integrity_check'`)")
    if "disk is full" in message or "No space left" in message or "could not extend" in message:
        return DatabaseError("the disk is full; the last change was not written (free some space and try again)")
    return DatabaseError(f"database error: {' '.join(message.split())}")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Raise the database errors users can act on as one-line DatabaseErrors (:func:`translate`; it knows
    the drivers' and SQLAlchemy's errors without importing SQLAlchemy, which a one-message process lacks)."""
    try:
        yield
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - translate() picks the database errors, the rest go on as they are
        problem = translate(exc)
        if problem is None:
            raise
        raise problem from None


@contextlib.contextmanager
def transaction(engine: Engine, *, checked: bool = True) -> Iterator[Session]:
    """A session in one transaction on ``engine``, committed at the end of the block.

    ``checked`` first checks the schema (:func:`check_schema`); database errors become
    :class:`DatabaseError` (:func:`translate_errors`).  Store functions take this session.
    """
    from sqlalchemy.orm import Session

    if checked:
        check_schema(engine)
    with translate_errors(), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
