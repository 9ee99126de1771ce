"""The statements of the scoring path, prepared once, and the connection they run on.

Every caller that classifies mail reads a user's model slice and logs verdicts with these :class:`Statement`
constants, prepared once per connection by :class:`Store` (no ORM import on this path, and none of
SQLAlchemy for a SQLite file opened as :class:`~spamtl.store.engine.SqliteFile`); :func:`store_messages` and
:func:`create_user` are the one way to write mail and users (``INSERT ... ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spamtl.errors import DatabaseError
from spamtl.store.engine import SqliteFile, schema_error, schema_revision, translate

__all__ = ["Statement", "Store", "store_messages", "create_user", "compress", "decompress", "naive_utc"]


@dataclass(frozen=True)
class Statement:
    """One SQL statement in the SQL that SQLite and PostgreSQL both accept, with ``:name`` parameters.

    ``stamps`` name the parameters that are naive UTC datetimes, ``blobs`` those that are bytes: they are
    bound as SQLAlchemy's ``DateTime`` and ``LargeBinary`` (a :class:`~spamtl.store.engine.SqliteFile`
    writes a stamp as the same text), so every path stores the same values.
    """

    sql: str
    stamps: tuple[str, ...] = ()
    blobs: tuple[str, ...] = ()

    @functools.cached_property
    def clause(self) -> Any:
        """The SQLAlchemy ``text()`` form, for a Session or a Connection and for compiling to a dialect."""
        from sqlalchemy import DateTime, LargeBinary, bindparam, text

        return text(self.sql).bindparams(*(bindparam(n, type_=DateTime()) for n in self.stamps),
                                         *(bindparam(n, type_=LargeBinary()) for n in self.blobs))


GENERATION = Statement("SELECT value FROM store_state WHERE key = 'generation'")
# The generation at which a user was last deleted or renamed (queries.mark_users_changed).
USERS_CHANGED = Statement("SELECT value FROM store_state WHERE key = 'users_changed'")
ACTIVE_VERSION = Statement("SELECT id, feature_key, n_features, params FROM model_versions WHERE status = 'active'")
# The metrics endpoint's model gauges: the active version and the newest one (the last training's outcome).
VERSION_STATES = Statement("SELECT id, status, created_at FROM model_versions "
                           "WHERE status = 'active' OR id = (SELECT max(id) FROM model_versions)")
VERSION_METRICS = Statement("SELECT metrics FROM model_versions WHERE id = :version")
USER = Statement("SELECT id, group_name, spam_cutoff, ham_cutoff FROM users WHERE name = :name")
USER_NAMES = Statement("SELECT name FROM users ORDER BY name")
PART = Statement("SELECT data FROM model_parts WHERE model_version_id = :version AND kind = :kind AND name = :name")
CHANGED_PARTS = Statement("SELECT kind, name FROM model_parts WHERE model_version_id = :version "
                          "AND revision > :generation")
USER_CUTOFF = Statement("SELECT spam_cutoff, ham_cutoff, source FROM user_cutoffs "
                        "WHERE model_version_id = :version AND user_name = :name")
# The user's current (latest) label of a message, if any: a correction sticks.
CURRENT_LABEL = Statement("SELECT l.label FROM labels l JOIN messages m ON m.id = l.message_id "
                          "WHERE l.user_id = :user_id AND m.sha256 = :sha256 ORDER BY l.id DESC LIMIT 1")
CREATE_USER = Statement("INSERT INTO users (name, group_name, created_at) VALUES (:name, :group, :now) "
                        "ON CONFLICT (name) DO NOTHING", stamps=("now",))
STORE_MESSAGE = Statement("INSERT INTO messages (sha256, message_id, raw, size, date, received_at, subject) "
                          "VALUES (:sha256, :message_id, :raw, :size, :date, :now, :subject) "
                          "ON CONFLICT (sha256) DO NOTHING", stamps=("date", "now"), blobs=("raw",))
# A body dropped by retention comes back with the next copy, so that its verdict can be learnt from.
RESTORE_BODY = Statement("UPDATE messages SET raw = :raw WHERE id = :pk AND raw IS NULL", blobs=("raw",))
LOG_VERDICT = Statement("INSERT INTO classifications (user_id, message_id, probability, verdict, model_version_id, "
                        "created_at) VALUES (:user_id, :message_pk, :probability, :verdict, :version, :now)",
                        stamps=("now",))
_BEGIN_IMMEDIATE = Statement("BEGIN IMMEDIATE")

IN_CHUNK = 900
"""Longest IN list: SQLite limits bound parameters per statement (999 in old builds)."""


def compress(raw: bytes) -> bytes:
    """Raw message bytes as stored (zlib level 6)."""
    return zlib.compress(raw, 6)


def decompress(data: bytes) -> bytes:
    return zlib.decompress(data)


def naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime as the naive UTC value the store keeps (None if it cannot be represented)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError, OSError):
        return None


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _execute(db: Any, statement: Statement, params: Any) -> Any:
    """Run ``statement`` on a :class:`Store`, or on a SQLAlchemy Session or Connection."""
    return db.execute(statement if isinstance(db, Store) else statement.clause, params)


def create_user(db: Any, *, name: str, group: str | None, now: datetime) -> None:
    """Register ``name`` unless someone did already (race-free); ``db`` is a Session, Connection or Store."""
    _execute(db, CREATE_USER, {"name": name, "group": group, "now": now})


def store_messages(db: Any, messages: Sequence[tuple[str, bytes, str | None]], *, now: datetime) -> dict[str, int]:
    """Store each (digest, kept bytes, subject) unless known; the id of each digest.

    A known message whose body retention dropped gets it back, so it can be
    learnt from again.  New rows go in digest order: two transactions storing
    overlapping sets take row locks in the same order, so PostgreSQL never
    sees a deadlock between them.  ``db`` is a Session, Connection or Store.
    """
    from spamtl.mail.headers import parse_envelope

    shas = sorted({sha for sha, _, _ in messages})
    known = _known(db, shas)
    new: dict[str, dict[str, Any]] = {}
    for sha, raw, subject in messages:
        if sha in known:
            pk, bodiless = known[sha]
            if bodiless:
                _execute(db, RESTORE_BODY, {"pk": pk, "raw": compress(raw)})
                known[sha] = (pk, False)
        elif sha not in new:
            message_id, date = parse_envelope(raw)
            new[sha] = {"sha256": sha, "message_id": message_id or None, "raw": compress(raw), "size": len(raw),
                        "date": naive_utc(date), "now": now, "subject": (subject or "")[:255] or None}
    if new:
        _execute(db, STORE_MESSAGE, [new[sha] for sha in sorted(new)])
        known.update(_known(db, sorted(new)))
    return {sha: pk for sha, (pk, _) in known.items()}


def _known(db: Any, shas: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """Digest -> (id, whether retention dropped its body) of the stored ones among ``shas``."""
    out: dict[str, tuple[int, bool]] = {}
    for chunk in chunks(shas, 512):
        size = 1 << (len(chunk) - 1).bit_length()  # a few statement sizes, each compiled once
        padded = [*chunk, *[chunk[-1]] * (size - len(chunk))]
        for sha, pk, bodiless in _execute(db, _messages(size), {f"s{i}": sha for i, sha in enumerate(padded)}):
            out[sha] = (int(pk), bool(bodiless))
    return out


@functools.cache
def _messages(n: int) -> Statement:
    """The stored messages among ``n`` digests (``:s0`` ... ``:s{n-1}``)."""
    return Statement(f"SELECT sha256, id, raw IS NULL FROM messages WHERE sha256 IN "
                f"({', '.join(f':s{i}' for i in range(n))})")


class Store:
    """One connection of ``engine`` for a long-lived reader or writer (the model reader, the verdict log).

    ``engine`` is a SQLAlchemy engine (one pooled connection), or a :class:`~spamtl.store.engine.SqliteFile`
    (its own connection, without importing SQLAlchemy: a one-message process).  Each statement is prepared
    once for the connection (SQL text, parameter order, the conversions of :class:`Statement`) and then runs
    on the driver's cursor, so a daemon pays only the driver's own cost per statement.  :meth:`execute` is
    the one place where driver errors become :class:`~spamtl.errors.DatabaseError`.  When the server drops
    the connection (a restart, an outage) the statement fails with one readable line and the next one
    outside a transaction runs on a new connection, so ``spamtl serve`` recovers by itself once the server
    is back.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._pooled: Any = None
        self._prepared: dict[Statement, tuple[str, Callable[[dict[str, Any]], Any]]] = {}
        self._in_transaction = False

    def _connection(self) -> Any:
        """The driver connection, a new one when the server dropped ours (never inside a transaction)."""
        pooled = self._pooled
        if pooled is not None and not self._in_transaction and getattr(pooled.driver_connection, "closed", False):
            with contextlib.suppress(Exception):
                pooled.invalidate()  # never back into the pool, whose reset would fail on it
            pooled = self._pooled = None
        if pooled is None:
            try:
                pooled = self._pooled = self.engine.raw_connection()
            except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
                raise _translated(exc) from None
        return pooled.driver_connection

    def _prepare(self, statement: Statement) -> tuple[str, Callable[[dict[str, Any]], Any]]:
        if isinstance(self.engine, SqliteFile):  # the driver takes :name parameters as they are
            sql, positions = statement.sql, None
            processors: dict[str, Callable[[Any], Any]] = {name: _sqlite_stamp for name in statement.stamps}
        else:
            dialect = self.engine.dialect
            compiled = statement.clause.compile(dialect=dialect)
            sql, positions = compiled.string, compiled.positiontup
            processors = {name: proc for name, bind in compiled.binds.items()
                          if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

        def convert(params: dict[str, Any]) -> Any:
            if processors:
                params = {k: processors[k](v) if k in processors else v for k, v in params.items()}
            return params if positions is None else tuple(params[k] for k in positions)

        self._prepared[statement] = (sql, convert)
        return self._prepared[statement]

    def check_schema(self) -> None:
        """Raise a clear :class:`~spamtl.errors.DatabaseError` unless the store is at this code's schema."""
        revision = schema_revision(self._connection())
        self.finish_read()
        problem = schema_error(revision)
        if problem is not None:
            raise problem

    def execute(self, statement: Statement, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Any:
        """Run one statement (a list of parameter sets: executemany); the choke point for database errors."""
        sql, convert = self._prepared.get(statement) or self._prepare(statement)
        try:
            cursor = self._connection().cursor()
            if isinstance(params, list):
                cursor.executemany(sql, [convert(p) for p in params])
            else:
                cursor.execute(sql, convert(params or {}))
            return cursor
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
            raise _translated(exc) from None

    def one(self, statement: Statement, params: dict[str, Any] | None = None) -> Any:
        return self.execute(statement, params).fetchone()

    def all(self, statement: Statement, params: dict[str, Any] | None = None) -> list[Any]:
        return list(self.execute(statement, params).fetchall())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed at the end, rolled back on any error.

        On SQLite it starts with ``BEGIN IMMEDIATE`` so that two writers queue
        on the busy timeout instead of failing on a lock upgrade.
        """
        self.finish_read()
        if self.dialect == "sqlite":
            self.execute(_BEGIN_IMMEDIATE)
        else:
            self._connection()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            with contextlib.suppress(Exception):
                self._pooled.driver_connection.rollback()
            raise
        self._in_transaction = False
        try:
            self._pooled.driver_connection.commit()
        except Exception as exc:  # noqa: BLE001
            raise _translated(exc) from None

    def finish_read(self) -> None:
        """End the implicit read transaction PostgreSQL keeps open after a SELECT (SQLite opens none)."""
        if self.dialect != "sqlite" and self._pooled is not None:
            with contextlib.suppress(Exception):
                self._pooled.driver_connection.rollback()

    def close(self) -> None:
        """Give the connection back to the engine's pool (the engine belongs to the caller)."""
        pooled, self._pooled = self._pooled, None
        if pooled is None:
            return
        with contextlib.suppress(Exception):
            if getattr(pooled.driver_connection, "closed", False):
                pooled.invalidate()
            else:
                pooled.rollback()  # end the read transaction PostgreSQL keeps open after a SELECT
                pooled.close()



def _sqlite_stamp(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy's SQLite ``DateTime`` stores it (text that sorts and compares in time order)."""
    if value is None:
        return None
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}")


def _translated(exc: BaseException) -> BaseException:
    problem = translate(exc)
    return exc if problem is None else problem
