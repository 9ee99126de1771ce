"""One worker: an asyncio loop that serves spamd requests with one model reader, within the serve_* limits.

The worker refreshes its reader at most every ``serve_refresh_interval`` seconds (a verdict always comes
from one model version), stores verdicts only for clients that may act for the user
(:mod:`spamtl.serve.peers`), and runs TELL's feedback in a helper thread.  At capacity the connection
that has spent longest still sending its request makes room.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spamtl.errors import NoModelError, SpamtlError, UnknownUserError, UsageError
from spamtl.serve import protocol as proto
from spamtl.serve.answers import scored_answer, skipped_answer
from spamtl.serve.connection import Connection, drain_rest, read_request, refuse
from spamtl.serve.peers import Peer, Policy, peer_of
from spamtl.services import telemetry
from spamtl.services.classify import Skipped, VerdictWriter, open_reader, prepare, skip_reason
from spamtl.settings import Settings, validate_name
from spamtl.store import utcnow
from spamtl.store.engine import SqliteFile, make_engine, store_source

log = logging.getLogger("spamtl.serve.daemon")

HEARTBEAT_SECONDS = 1.0
"""A worker's event loop reports that it is alive this often (a byte on a pipe to the supervisor)."""

_SHARED = ""
"""The user name used for the shared model (no User header, no default user): no user can have it."""


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen and whose model answers a request without a User header.

    Everything else (workers, limits, timeouts, who may teach whom) is in
    :class:`~spamtl.settings.Settings` (``serve_*``), so SIGHUP rereads it.
    """

    socket_path: str | None = None
    host: str | None = None
    port: int | None = None
    allow_remote: bool = False
    default_user: str | None = None


_SETTINGS: Settings | None = None
"""The settings of this process's worker, for :func:`emit` (set by :meth:`Worker.load`)."""


def emit(event: str, **fields: Any) -> None:
    """The one place a served request is logged (one line per verdict, TELL or error).

    Through :func:`spamtl.logs.log_event` with the worker's settings, errors at WARNING, the rest at
    INFO; before a worker has settings (the supervisor), a ``key=value`` line to ``spamtl.serve.daemon``.
    """
    if _SETTINGS is None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        return
    from spamtl.logs import log_event

    level = logging.WARNING if event in ("error", "refused", "unknown_user") else logging.INFO
    log_event(_SETTINGS, event, fields, level=level)


def policy_of(settings: Settings) -> Policy:
    """Who may act for whom, from the ``serve_*`` settings."""
    try:
        return Policy.from_settings(trusted=settings.serve_trusted, trusted_networks=settings.serve_trusted_networks,
                                    allow_tell=settings.serve_allow_tell)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _verdicts_lost(count: int, exc: Exception) -> None:
    emit("error", reason=f"{count} verdict(s) not stored: {exc}")


class Worker:
    """One process's request handling: a model reader, a verdict logger, a TELL thread, its connections."""

    def __init__(self, settings_factory: Callable[[], Settings], options: ServeOptions) -> None:
        self.settings_factory = settings_factory
        self.options = options
        self.connections: set[Connection] = set()
        self.per_client: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.tell_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spamtl-tell")
        self.reader: Any = None
        self.engine: Any = None
        self.teaching_engine: Any = None  # SQLAlchemy's, made at the first TELL when ``engine`` is a SqliteFile
        self.writer: Any = None
        self._checked = 0.0
        self.load()

    def load(self) -> None:
        """(Re)read the settings and open a fresh reader: every cached model is dropped."""
        settings = self.settings_factory()
        policy = policy_of(settings)
        engine = store_source(settings.database_url)  # scoring needs no SQLAlchemy on a SQLite file
        try:
            reader = open_reader(engine, settings)  # raises before anything changes
        except BaseException:
            engine.dispose()
            raise
        old_reader, old_engine, old_writer = self.reader, self.engine, self.writer
        old_teaching, self.teaching_engine = self.teaching_engine, None
        if old_writer is not None:
            old_writer.close()  # what was scored with the old settings goes to the old store, now
        self.writer = VerdictWriter(engine, settings, interval=settings.serve_log_interval, on_error=_verdicts_lost)
        self.settings, self.reader, self.policy, self.engine = settings, reader, policy, engine
        # Each worker takes its share of the connections the kernel hands out.
        self.limit = max(1, math.ceil(settings.serve_max_connections / max(1, settings.serve_workers)))
        global _SETTINGS
        _SETTINGS = settings
        self._checked = 0.0
        if old_reader is not None:
            old_reader.store.close()
        for old in (old_engine, old_teaching):
            if old is not None:
                old.dispose()

    def fresh_reader(self) -> Any:
        now = time.monotonic()
        if now - self._checked >= self.settings.serve_refresh_interval:
            self.reader.refresh()
            self._checked = now
        return self.reader

    def _admit(self, conn: Connection) -> str | None:
        """Why ``conn`` is refused (None: served).  At capacity, the connection that has spent longest
        still sending its request is dropped to make room: a client that sends a request at once (spamc)
        is served even while slow clients hold every slot."""
        if (self.per_client[conn.peer.key] >= self.settings.serve_max_per_client
                and not self.policy.is_trusted(conn.peer)):
            telemetry.note_unscanned("refused")
            return "too many connections from this client; try again later"
        if len(self.connections) >= self.limit:
            slowest = min((c for c in self.connections if c.is_reading), key=lambda c: c.opened, default=None)
            telemetry.note_unscanned("overloaded")  # this connection, or the slowest one that makes room
            if slowest is None:
                return "too many connections; try again later"
            slowest.evict()
            self._forget(slowest)
            emit("refused", reason="dropped at capacity while still sending its request",
                 client=slowest.peer.describe())
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        conn = Connection(peer_of(writer.get_extra_info("socket")), time.monotonic(), writer)
        refused = self._admit(conn)
        try:
            if refused is not None:
                emit("refused", reason=refused, client=conn.peer.describe(), limit=self.settings.serve_max_connections)
                await refuse(reader, writer, refused)
                return
            self.connections.add(conn)
            self.per_client[conn.peer.key] += 1
            try:
                await self._serve_one(reader, writer, conn)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.drain(), self.settings.serve_read_timeout)
            finally:
                self._forget(conn)
        except Exception as exc:  # noqa: BLE001 - one bad connection never takes the worker down
            telemetry.note_unscanned("error")
            emit("error", reason=f"{exc.__class__.__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self.tasks.discard(task)

    def _forget(self, conn: Connection) -> None:
        """Stop counting ``conn`` (once: an evicted connection is forgotten when evicted)."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.per_client[conn.peer.key] -= 1
            if self.per_client[conn.peer.key] <= 0:
                del self.per_client[conn.peer.key]

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        deadline = time.monotonic() + self.settings.serve_read_timeout
        try:
            request, body = await read_request(reader, self.settings, deadline)
        except (proto.ProtocolError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            if not conn.is_evicted:  # else answered when it was dropped
                self._read_failed(writer, conn, exc)
            return
        finally:
            conn.is_reading = False
        if conn.is_evicted or request.command == "SKIP":
            return
        if request.command == "PING":
            writer.write(f"SPAMD/{proto.PROTOCOL_VERSION} 0 PONG\r\n".encode())
        elif body is None:  # larger than the size limit: not scanned
            writer.write(self._too_big(request))
            await drain_rest(reader, request, deadline)
        elif request.command == "TELL":
            writer.write(await self._tell(request, body, conn.peer))
        else:
            answer, log_verdict = self._score(request, body, conn.peer)
            writer.write(answer)
            if log_verdict is not None:
                # Queued for the writer thread (group commit): the client never waits for the store's write,
                # the row is there within log_interval, and a graceful stop writes every queued verdict.
                log_verdict()

    @staticmethod
    def _read_failed(writer: asyncio.StreamWriter, conn: Connection, exc: Exception) -> None:
        if isinstance(exc, proto.ProtocolError):
            telemetry.note_unscanned("bad_request")
            emit("error", code=exc.code, reason=exc.reason)
            writer.write(proto.response(exc.code, exc.reason))
        elif isinstance(exc, TimeoutError):
            telemetry.note_unscanned("timeout")
            emit("error", reason="read timeout", client=conn.peer.describe())
            writer.write(proto.response(proto.EX_TEMPFAIL, "timed out reading the request"))
        else:
            emit("error", reason="client closed the connection mid-request")

    def _too_big(self, request: proto.Request) -> bytes:
        limit = self.settings.max_message_bytes
        if request.command != "TELL":  # a TELL too big is a lesson refused, not mail passed through
            telemetry.note_unscanned("too_big")
        emit("skipped", command=request.command, user=request.user or "-", reason=f"larger than {limit} bytes")
        return proto.response(proto.EX_DATAERR, f"message larger than {limit} bytes; not scanned")

    def _user(self, request: proto.Request) -> str:
        """The user a request names (the recipient, as the store knows it: ``ModelReader.recipient``)."""
        user = request.user or self.options.default_user
        if user is None:
            return _SHARED
        try:
            validate_name(user)
        except UsageError as exc:
            raise proto.ProtocolError(proto.EX_NOUSER, str(exc)) from None
        return self.fresh_reader().recipient(user)

    def _score(self, request: proto.Request, body: bytes, peer: Peer) -> tuple[bytes, Callable[[], object] | None]:
        """The answer to a scoring request, and the call that stores its verdict (None: nothing to store)."""
        try:
            return self._answer(request, body, peer)
        except proto.ProtocolError as exc:
            telemetry.note_unscanned("bad_request")
            emit("error", command=request.command, code=exc.code, reason=exc.reason)
            return proto.response(exc.code, exc.reason), None
        except NoModelError as exc:
            telemetry.note_unscanned("no_model")
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_UNAVAILABLE, str(exc)), None
        except SpamtlError as exc:
            telemetry.note_unscanned("error")
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc)), None

    def _answer(self, request: proto.Request, body: bytes, peer: Peer) -> tuple[bytes, Callable[[], object] | None]:
        """Score for the request's user; the verdict is stored only when ``peer`` may act for that user
        (anyone else is answered, and leaves no row: no verdict, no message, no new user)."""
        started = time.perf_counter()
        user = self._user(request)
        skipped = skip_reason(body)
        if skipped is not None:  # empty or not mail: passed through, never scored (nor logged as a verdict)
            telemetry.note_unscanned("not_mail")
            emit("skipped", command=request.command, user=user or "-", reason=skipped)
            return skipped_answer(request.command, body, Skipped(user, "spamd", skipped)), None
        reader = self.fresh_reader()
        model = reader.user_model(user)
        if not model.is_known_user and user != _SHARED:
            emit("unknown_user", command=request.command, user=user, reason="scored with the shared model")
        message = prepare(body)
        verdict = reader.classify(model, message, "spamd")
        log_verdict = None
        is_stored = user != _SHARED and self.policy.may_act_for(peer, user)
        if is_stored:
            log_verdict = functools.partial(self.writer.submit, model, message, verdict, utcnow())
        answer = scored_answer(request.command, body, model, message, verdict)
        seconds = time.perf_counter() - started
        telemetry.note_verdict(verdict.verdict, seconds)
        emit("verdict", command=request.command, user=user or "-", verdict=verdict.verdict,
             probability=f"{verdict.probability:.4f}", cutoff=f"{verdict.spam_cutoff:.4f}",
             ham_cutoff=f"{verdict.ham_cutoff:.4f}", version=verdict.model_version, id=verdict.short_id,
             reason=verdict.reason, ms=f"{seconds * 1000:.1f}",
             **({} if is_stored or user == _SHARED else {"stored": "no", "client": peer.describe()}))
        return answer, log_verdict

    def _tell_target(self, request: proto.Request, body: bytes, peer: Peer) -> tuple[str, proto.Tell]:
        """The user and what to learn; raises ProtocolError when TELL is off, not allowed or not mail."""
        if not self.policy.allow_tell:
            raise proto.ProtocolError(proto.EX_NOPERM, "TELL is not enabled on this daemon "
                                                       "(serve_allow_tell / serve --allow-tell)")
        tell = request.tell()
        user = self._user(request)
        if user == _SHARED:
            raise proto.ProtocolError(proto.EX_NOUSER, "TELL needs a User header (or serve --default-user)")
        if not self.policy.may_act_for(peer, user):
            raise proto.ProtocolError(proto.EX_NOPERM, f"{peer.describe()} may not teach {user}'s filter")
        skipped = skip_reason(body)
        if skipped is not None:
            raise proto.ProtocolError(proto.EX_DATAERR, f"{skipped}; nothing learned")
        return user, tell

    async def _tell(self, request: proto.Request, body: bytes, peer: Peer) -> bytes:
        """Learn (or forget) a label, if TELL is on and ``peer`` may teach the request's user."""
        try:
            user, tell = self._tell_target(request, body, peer)
        except proto.ProtocolError as exc:
            emit("refused" if exc.code == proto.EX_NOPERM else "error", command="TELL", code=exc.code,
                 reason=exc.reason, client=peer.describe())
            return proto.response(exc.code, exc.reason)
        except SpamtlError as exc:  # the store, asked which user a recipient is
            emit("error", command="TELL", reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc))
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.tell_pool, self._learn, user, tell, body)
        except UnknownUserError as exc:  # not created by a TELL unless auto_create_users: a permanent answer
            emit("error", command="TELL", user=user, reason=str(exc))
            return proto.response(proto.EX_NOUSER, str(exc))
        except SpamtlError as exc:
            emit("error", command="TELL", user=user, reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc))
        self._checked = 0.0  # the refit bumped the generation: reload before the next request
        label, is_changed = result.pop("label"), result.pop("changed")
        if result.get("removed", 0) > 0:
            telemetry.note_feedback("forget", "tell")
        if is_changed and label is not None:  # a label the user already had is not learnt again
            telemetry.note_feedback(label, "tell")
        headers = proto.tell_answer_headers(tell, label=label, is_changed=is_changed,
                                            is_removed=result.get("removed", 0) > 0)
        emit("tell", user=user, message_class=tell.message_class or "-", set=tell.set_local,
             remove=tell.remove_local, **result, label=label or "none", changed=is_changed)
        return proto.response(proto.EX_OK, headers=headers)

    def _learn(self, user: str, tell: proto.Tell, body: bytes) -> dict[str, Any]:
        """Store (or remove) the user's label; what was done, with ``label`` (the user's label now, None for
        none) and ``changed`` (Set: local stored a label the user did not have)."""
        from spamtl.services.feedback import forget_feedback, record_feedback

        if self.teaching_engine is None:
            is_file = isinstance(self.engine, SqliteFile)
            self.teaching_engine = make_engine(self.settings.database_url) if is_file else self.engine
        engine = self.teaching_engine
        out: dict[str, Any] = {"label": None, "changed": False}
        if tell.remove_local:
            forgot = forget_feedback(engine, self.settings, user=user, raw=body, now=utcnow())
            out.update(removed=forgot.removed, id=forgot.sha256[:12])
        if tell.set_local:
            assert tell.message_class is not None
            result = record_feedback(engine, self.settings, user=user, label=tell.message_class, raw=body,
                                     now=utcnow(), create_user=self.settings.auto_create_users)
            out.update(id=result.sha256[:12], version=result.model_version, labels=result.user_labels,
                       label=result.label, previous=result.previous_label or "-",
                       changed=result.previous_label != result.label)
        return out

    def close(self) -> None:
        self.tell_pool.shutdown(wait=True)
        if self.writer is not None:
            self.writer.close()  # every queued verdict is written before the process exits
        if self.reader is not None:
            self.reader.store.close()
        for engine in (self.engine, self.teaching_engine):
            if engine is not None:
                engine.dispose()


def run_worker(settings_factory: Callable[[], Settings], options: ServeOptions, sockets: list[socket.socket],
               beat: Callable[[], bool] | None = None, interval: float = HEARTBEAT_SECONDS) -> None:
    """Serve ``sockets`` in this process until SIGTERM/SIGINT (see :func:`_serve_until_stopped`)."""
    worker = Worker(settings_factory, options)
    try:
        asyncio.run(_serve_until_stopped(worker, sockets, beat, interval))
    finally:
        worker.close()


async def _serve_until_stopped(worker: Worker, sockets: list[socket.socket], beat: Callable[[], bool] | None,
                               interval: float) -> None:
    """Serve until SIGTERM/SIGINT, then finish the requests in flight.  ``beat`` is called once serving and
    then every ``interval`` seconds from the loop itself (so a stuck loop stops beating); it returns False
    when nobody listens any more.  SIGHUP reloads the settings and drops every cached model."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, functools.partial(_reload, worker))
    servers = [await _start_server(worker, sock) for sock in sockets]

    def heartbeat() -> None:
        if beat is None or stop.is_set():
            return
        if not beat():
            emit("error", reason="the supervisor is gone; stopping")
            stop.set()
            return
        loop.call_later(interval, heartbeat)

    heartbeat()
    await stop.wait()
    # A second SIGTERM while finishing (a supervisor that asks twice) must not kill the requests in
    # flight: the loop's handlers go, and the signals are ignored until the process exits.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    for server in servers:
        server.close()
    if worker.tasks:  # finish what is in flight (each request is bounded by the read timeout)
        await asyncio.wait(list(worker.tasks), timeout=worker.settings.serve_read_timeout + 5)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


async def _start_server(worker: Worker, sock: socket.socket) -> asyncio.Server:
    limit = proto.MAX_LINE_BYTES + 2
    if sock.family == socket.AF_UNIX:
        return await asyncio.start_unix_server(worker.handle, sock=sock, limit=limit)
    return await asyncio.start_server(worker.handle, sock=sock, limit=limit)


def _reload(worker: Worker) -> None:
    try:
        worker.load()
        emit("reload", pid=os.getpid())
    except SpamtlError as exc:
        emit("error", reason=f"reload failed, keeping the old settings: {exc}")
