"""Named locks in the store, so two ``spamtl train`` runs never overlap (on any host).

A lock is a row of ``locks`` taken with ``INSERT ... ON CONFLICT DO NOTHING`` and held by ``host:pid``,
whose heartbeat a background thread refreshes every ``HEARTBEAT_S``.  A holder whose pid is gone (same
host) or whose heartbeat is older than ``LEASE_S`` is stale and taken over (compare-and-delete).  A busy
lock raises :class:`LockBusyError` (exit 75, EX_TEMPFAIL).  Not reentrant.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from spamtl.errors import SpamtlError
from spamtl.parallel import mark_fork_safe
from spamtl.store import queries, utcnow
from spamtl.store.engine import transaction
from spamtl.store.schema import Lock

__all__ = ["LockBusyError", "Holder", "hold", "acquire", "release", "LEASE_S", "HEARTBEAT_S"]

LEASE_S = 600.0
"""A lock whose heartbeat is older than this (10 min) is stale: 20 missed heartbeats, not a slow fit."""
HEARTBEAT_S = 30.0
"""How often a holder refreshes its heartbeat."""


class LockBusyError(SpamtlError):
    """Another live process holds the lock."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, what: str, holder: Holder) -> None:
        super().__init__(f"another spamtl {what} is running (pid {holder.pid} on {holder.host} since "
                         f"{holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC); try again later")
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    acquired_at: datetime
    heartbeat_at: datetime


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(holder: Holder, now: datetime, lease: float) -> bool:
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return True
    return now - holder.heartbeat_at > timedelta(seconds=lease)


def _current(session: Session, name: str) -> Holder | None:
    row = session.scalars(select(Lock).where(Lock.name == name)).one_or_none()
    return None if row is None else Holder(row.host, row.pid, row.acquired_at, row.heartbeat_at)


def acquire(engine: Engine, name: str, *, what: str | None = None, lease: float = LEASE_S,
            host: str | None = None, pid: int | None = None) -> Holder:
    """Take lock ``name`` for this process (or raise :class:`LockBusyError`)."""
    me_host, me_pid = host or socket.gethostname(), pid or os.getpid()
    for _attempt in range(3):
        now = utcnow()
        with transaction(engine, checked=False) as session:
            session.execute(queries.upsert(session, Lock, ["name"]).values(
                name=name, host=me_host, pid=me_pid, acquired_at=now, heartbeat_at=now))
            # Whose row is it now?  (rowcount is -1 for this statement under psycopg, so look.)
            holder = _current(session, name)
            if holder is None:  # released between our insert and our look: try again
                continue
            if (holder.host, holder.pid) == (me_host, me_pid):
                return holder
            if not _is_stale(holder, now, lease):
                raise LockBusyError(what or name, holder)
            # Compare-and-delete: only the stale holder we looked at, not someone who took over meanwhile.
            session.execute(delete(Lock).where(Lock.name == name, Lock.host == holder.host,
                                               Lock.pid == holder.pid))
    with transaction(engine, checked=False) as session:
        holder = _current(session, name)
    raise LockBusyError(what or name, holder or Holder("?", 0, utcnow(), utcnow()))


def release(engine: Engine, name: str, holder: Holder) -> None:
    """Give lock ``name`` back, if this holder still has it."""
    with transaction(engine, checked=False) as session:
        session.execute(delete(Lock).where(Lock.name == name, Lock.host == holder.host, Lock.pid == holder.pid))


def _heartbeat(engine: Engine, name: str, holder: Holder, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with transaction(engine, checked=False) as session:
                session.execute(update(Lock).where(Lock.name == name, Lock.host == holder.host,
                                                   Lock.pid == holder.pid).values(heartbeat_at=utcnow()))
        except Exception:  # noqa: BLE001 - a missed heartbeat is retried; the lease is 20 of them
            continue


@contextlib.contextmanager
def hold(engine: Engine, name: str, *, what: str | None = None, lease: float = LEASE_S,
         heartbeat: float = HEARTBEAT_S) -> Iterator[Holder]:
    """Hold lock ``name`` for the duration of the block, refreshing its heartbeat meanwhile."""
    holder = acquire(engine, name, what=what, lease=lease)
    stop = threading.Event()
    beat = mark_fork_safe(threading.Thread(target=_heartbeat, args=(engine, name, holder, stop, heartbeat),
                                           daemon=True, name=f"spamtl-lock-{name}"))
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        beat.join()
        release(engine, name, holder)
