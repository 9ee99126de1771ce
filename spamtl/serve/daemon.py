"""``spamtl serve``: a daemon that keeps users' models loaded and speaks the spamd protocol.

Design (see the README, "spamtl serve"): a few *pre-forked worker processes*
(default 2, one per core of the machine it was built on), each running one
asyncio loop.  Scoring is CPU-bound Python (parsing, features, numpy) under
the GIL, so threads would not add throughput; separate processes do, and
asyncio lets one worker hold many slow or idle connections (read timeouts,
a bounded count) without a thread each.  The listening sockets are opened
once by the parent (or passed by systemd, ``LISTEN_FDS``) and shared: the
kernel hands each new connection to one worker.

Each worker keeps one :class:`~spamtl.services.classify.ModelReader` for its
lifetime and calls :meth:`~ModelReader.refresh` before a request at most every
``refresh_interval`` seconds (one one-row query), so a promotion, ``models
activate`` or anyone's feedback is seen well within a second; a verdict always
comes from a single version.  TELL runs the feedback service in a helper
thread, so a refit does not stall the worker's other connections.

Who a client is decides what it may do (:mod:`spamtl.serve.peers`): every client is
scored, but only one that may act for the request's user stores its verdict
there, and TELL is answered only when enabled and for such a client.  Slow
clients cannot starve the rest: the request's headers have a short deadline,
one untrusted client holds at most a few connections, and at capacity the
connection that has spent longest still sending its request makes room.

With several workers this process supervises them (:class:`_Supervisor`):
a dead or hung worker is replaced, a crash loop is backed off and logged, and
systemd hears readiness and watchdog pings only while a worker serves.

Signals: SIGTERM (and SIGINT) stop accepting, finish the requests in flight
and exit; SIGHUP drops every cached model and rereads the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spamtl.errors import NoModelError, SpamtlError, UnknownUserError, UsageError
from spamtl.serve import protocol as proto
from spamtl.settings import Settings, validate_name
from spamtl.store import utcnow

if TYPE_CHECKING:
    from spamtl.serve.peers import Peer

__all__ = ["ServeOptions", "serve", "bind_sockets", "Worker", "emit"]

log = logging.getLogger("spamtl.serve.daemon")

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


# ------------------------------------------------------------------ sockets
def _check_host(host: str, allow_remote: bool) -> None:
    if allow_remote:
        return
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise UsageError(f"refusing to listen on {host} (not a loopback address); "
                         "add --allow-remote to accept connections from other hosts")


def bind_sockets(options: ServeOptions, settings: Settings) -> list[socket.socket]:
    """The listening sockets: systemd's, else a Unix socket and/or a TCP port (loopback unless allowed).

    The Unix socket gets ``serve_socket_mode`` and ``serve_socket_group`` before it listens, so no client
    connects through a looser mode in between.
    """
    from spamtl.serve.systemd import listen_sockets

    passed = listen_sockets()
    if passed:
        for sock in passed:
            sock.setblocking(False)
        return passed
    if options.socket_path is None and options.port is None:
        raise UsageError("give --socket PATH and/or --port N")
    sockets: list[socket.socket] = []
    try:
        if options.socket_path is not None:
            path = options.socket_path
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(path) and not _is_socket(path):
                    raise UsageError(f"{path} exists and is not a socket; remove it or choose another path")
                os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            gid = _group_id(settings.serve_socket_group)
            try:
                old_umask = os.umask(0o177)  # bound 0600: nobody else connects before the mode is set
                try:
                    sock.bind(path)
                finally:
                    os.umask(old_umask)
                if gid is not None:
                    os.chown(path, -1, gid)
                os.chmod(path, int(settings.serve_socket_mode, 8))
            except OSError as exc:
                raise UsageError(f"cannot listen on {path}: {exc.strerror or exc}") from None
            sock.listen(128)
        if options.port is not None:
            host = options.host or "127.0.0.1"
            _check_host(host, options.allow_remote)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, options.port))
            except OSError as exc:
                raise UsageError(f"cannot listen on {host}:{options.port}: {exc.strerror or exc}") from None
            sock.listen(128)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.setblocking(False)
    return sockets


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no group {group!r} for the socket (serve_socket_group / --socket-group)") from None


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name if isinstance(name, str) else name.decode(errors='replace')}"
    return f"{name[0]}:{name[1]}"


# ------------------------------------------------------------------ logging hook
def emit(event: str, **fields: Any) -> None:
    """The one place a served request is logged (one line per verdict, TELL or error).

    Lines go through :func:`spamtl.logs.log_event` with the worker's current
    settings (destination and level), as the CLI's do; errors at WARNING, the
    rest at INFO.  Before a worker has settings (the parent), a plain
    ``key=value`` line goes to the ``spamtl.serve.daemon`` logger.
    """
    if _SETTINGS is None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        return
    from spamtl.logs import log_event

    level = logging.WARNING if event in ("error", "refused", "unknown_user") else logging.INFO
    log_event(_SETTINGS, event, fields, level=level)


_SETTINGS: Settings | None = None
"""The settings of this process's worker, for :func:`emit` (set by :meth:`Worker.reload`)."""


# ------------------------------------------------------------------ one worker
class _Connection:
    """One open connection: who it is, since when, and whether it is still sending its request."""

    __slots__ = ("peer", "opened", "writer", "is_reading", "is_evicted")

    def __init__(self, peer: Peer, opened: float, writer: asyncio.StreamWriter) -> None:
        self.peer, self.opened, self.writer = peer, opened, writer
        self.is_reading = True
        self.is_evicted = False

    def evict(self) -> None:
        """Answer EX_TEMPFAIL and end our side (spamc then passes its mail through unscanned).

        Only our side: closing while the client's bytes are still unread would make the kernel answer
        with a reset, which can destroy the answer before the client reads it.  The request's deadline
        still ends the connection if the client never hangs up."""
        self.is_evicted, self.is_reading = True, False
        with contextlib.suppress(Exception):
            self.writer.write(proto.response(proto.EX_TEMPFAIL, "server busy and the request still incomplete"))
            self.writer.write_eof()


LINGER_SECONDS = 1.0
"""How long a refused connection's unread request is read and dropped, so that the refusal arrives
(a close with unread bytes is a reset, which can destroy the answer before the client reads it)."""
LINGER_BYTES = 1 << 20
"""Most bytes read and dropped from a refused connection."""


class Worker:
    """One process's request handling: a model reader, a verdict logger, a TELL thread, its connections."""

    def __init__(self, settings_factory: Callable[[], Settings], options: ServeOptions) -> None:
        self.settings_factory = settings_factory
        self.options = options
        self.connections: set[_Connection] = set()
        self.per_client: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.tell_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spamtl-tell")
        self.reader: Any = None
        self.engine: Any = None
        self.writer: Any = None
        self._checked = 0.0
        self.load()

    # -- state
    def load(self) -> None:
        """(Re)read the settings and open a fresh reader: every cached model is dropped."""
        from spamtl.services.classify import VerdictWriter, open_reader
        from spamtl.store.engine import make_engine

        settings = self.settings_factory()
        policy = _policy(settings)
        engine = make_engine(settings.database_url)
        try:
            reader = open_reader(engine, settings)  # raises before anything changes
        except BaseException:
            engine.dispose()
            raise
        old_reader, old_engine, old_writer = self.reader, self.engine, self.writer
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
        if old_engine is not None:
            old_engine.dispose()

    def fresh_reader(self) -> Any:
        now = time.monotonic()
        if now - self._checked >= self.settings.serve_refresh_interval:
            self.reader.refresh()
            self._checked = now
        return self.reader

    # -- connections
    def _admit(self, conn: _Connection) -> str | None:
        """Why ``conn`` is refused (None: served).  At capacity, the connection that has spent longest
        still sending its request is dropped to make room: a client that sends a request at once (spamc)
        is served even while slow clients hold every slot."""
        if (self.per_client[conn.peer.key] >= self.settings.serve_max_per_client
                and not self.policy.is_trusted(conn.peer)):
            return "too many connections from this client; try again later"
        if len(self.connections) >= self.limit:
            slowest = min((c for c in self.connections if c.is_reading), key=lambda c: c.opened, default=None)
            if slowest is None:
                return "too many connections; try again later"
            slowest.evict()
            self._forget(slowest)
            emit("refused", reason="dropped at capacity while still sending its request",
                 client=slowest.peer.describe())
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from spamtl.serve.peers import peer_of

        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        conn = _Connection(peer_of(writer.get_extra_info("socket")), time.monotonic(), writer)
        refused = self._admit(conn)
        try:
            if refused is not None:
                emit("refused", reason=refused, client=conn.peer.describe(), limit=self.settings.serve_max_connections)
                await _refuse(reader, writer, refused)
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
            emit("error", reason=f"{exc.__class__.__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self.tasks.discard(task)

    def _forget(self, conn: _Connection) -> None:
        """Stop counting ``conn`` (once: an evicted connection is forgotten when evicted)."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.per_client[conn.peer.key] -= 1
            if self.per_client[conn.peer.key] <= 0:
                del self.per_client[conn.peer.key]

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> None:
        settings = self.settings
        deadline = time.monotonic() + settings.serve_read_timeout
        try:
            # The request line and headers within serve_header_timeout (spamc sends them at once), the
            # whole request within serve_read_timeout: one timer, moved once the headers are in.
            async with asyncio.timeout(min(settings.serve_header_timeout, settings.serve_read_timeout)) as timer:
                request = await self._read_head(reader, deadline)
                timer.reschedule(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic()))
                body = await self._read_body(reader, request)
        except (proto.ProtocolError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            if conn.is_evicted:
                return  # answered when it was dropped
            if isinstance(exc, proto.ProtocolError):
                emit("error", code=exc.code, reason=exc.reason)
                writer.write(proto.response(exc.code, exc.reason))
            elif isinstance(exc, TimeoutError):
                emit("error", reason="read timeout", client=conn.peer.describe())
                writer.write(proto.response(proto.EX_TEMPFAIL, "timed out reading the request"))
            else:
                emit("error", reason="client closed the connection mid-request")
            return
        finally:
            conn.is_reading = False
        if conn.is_evicted:
            return
        if request.command == "SKIP":
            return
        if request.command == "PING":
            writer.write(f"SPAMD/{proto.PROTOCOL_VERSION} 0 PONG\r\n".encode())
            return
        if body is None:  # larger than the size limit: not scanned
            writer.write(self._too_big(request))
            await self._drain_rest(reader, request, deadline)
            return
        if request.command == "TELL":
            writer.write(await self._tell(request, body, conn.peer))
            return
        answer, log_verdict = self._score(request, body, conn.peer)
        writer.write(answer)
        if log_verdict is not None:
            # Queued for the writer thread (group commit): the client never waits for the store's write,
            # the row is there within log_interval, and a graceful stop writes every queued verdict.
            log_verdict()

    async def _read_head(self, reader: asyncio.StreamReader, deadline: float) -> proto.Request:
        """The request line and header lines, up to the empty line."""
        first = await self._line(reader, deadline)
        headers: list[bytes] = []
        while True:
            line = await self._line(reader, deadline)
            if line in (b"\r\n", b"\n"):
                break
            headers.append(line)
            if len(headers) > proto.MAX_HEADERS:
                raise proto.ProtocolError(proto.EX_PROTOCOL, f"more than {proto.MAX_HEADERS} header lines")
        return proto.build_request(first, headers)

    async def _read_body(self, reader: asyncio.StreamReader, request: proto.Request) -> bytes | None:
        """The message (inflated if compressed); None when it is larger than max_message_bytes."""
        length = request.content_length
        if length is None:
            return b""
        limit = self.settings.max_message_bytes
        if length > limit and not request.is_compressed:
            return None
        if length > limit * 2 + 1024:  # compressed mail is never bigger than this
            return None
        body = await reader.readexactly(length)  # under the request's timeout
        if request.is_compressed:
            inflater = zlib.decompressobj()
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error:
                raise proto.ProtocolError(proto.EX_DATAERR, "bad zlib data") from None
            if len(body) > limit:
                request.headers["content-length"] = "0"  # all of it was read: nothing to drain
                return None
        return body

    async def _line(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            line = await reader.readuntil(b"\n")  # under the request's timeout
        except asyncio.LimitOverrunError:
            raise proto.ProtocolError(proto.EX_PROTOCOL, f"line longer than {proto.MAX_LINE_BYTES} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            raise proto.ProtocolError(proto.EX_PROTOCOL, "request ends in the middle of a line") from None
        if len(line) > proto.MAX_LINE_BYTES:
            raise proto.ProtocolError(proto.EX_PROTOCOL, f"line longer than {proto.MAX_LINE_BYTES} bytes")
        return line

    def _too_big(self, request: proto.Request) -> bytes:
        limit = self.settings.max_message_bytes
        emit("skipped", command=request.command, user=request.user or "-", reason=f"larger than {limit} bytes")
        return proto.response(proto.EX_DATAERR, f"message larger than {limit} bytes; not scanned")

    async def _drain_rest(self, reader: asyncio.StreamReader, request: proto.Request, deadline: float) -> None:
        """Read and drop the rest of an oversized message, so that the client gets to read the answer."""
        await _discard(reader, min(request.content_length or 0, proto.MAX_SENT_BYTES), deadline - time.monotonic())

    # -- requests
    def _user(self, request: proto.Request) -> str:
        user = request.user or self.options.default_user
        if user is None:
            return _SHARED
        try:
            return validate_name(user)
        except UsageError as exc:
            raise proto.ProtocolError(proto.EX_NOUSER, str(exc)) from None

    def _score(self, request: proto.Request, body: bytes, peer: Peer) -> tuple[bytes, Callable[[], object] | None]:
        """The answer to a scoring request, and the call that stores its verdict (None: nothing to store)."""
        try:
            return self._answer(request, body, peer)
        except proto.ProtocolError as exc:
            emit("error", command=request.command, code=exc.code, reason=exc.reason)
            return proto.response(exc.code, exc.reason), None
        except NoModelError as exc:
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_UNAVAILABLE, str(exc)), None
        except SpamtlError as exc:
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc)), None

    def _answer(self, request: proto.Request, body: bytes, peer: Peer) -> tuple[bytes, Callable[[], object] | None]:
        """Score for the request's user; the verdict is stored only when ``peer`` may act for that user
        (anyone else is answered, and leaves no row: no verdict, no message, no new user)."""
        from spamtl.services.classify import Skipped, prepare, skip_reason, verdict_headers

        started = time.perf_counter()
        user = self._user(request)
        skipped = skip_reason(body)
        if skipped is not None:  # empty or not mail: passed through, never scored (nor logged as a verdict)
            emit("skipped", command=request.command, user=user or "-", reason=skipped)
            return self._skipped(request, body, Skipped(user, "spamd", skipped)), None
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
        is_spam = verdict.verdict == "spam"
        spam = proto.spam_header(verdict.probability, verdict.spam_cutoff, verdict.ham_cutoff, verdict.verdict)
        emit("verdict", command=request.command, user=user or "-", verdict=verdict.verdict,
             probability=f"{verdict.probability:.4f}", cutoff=f"{verdict.spam_cutoff:.4f}",
             ham_cutoff=f"{verdict.ham_cutoff:.4f}", version=verdict.model_version, id=verdict.short_id, reason=verdict.reason,
             ms=f"{(time.perf_counter() - started) * 1000:.1f}",
             **({} if is_stored or user == _SHARED else {"stored": "no", "client": peer.describe()}))
        command = request.command
        if command == "CHECK":
            return proto.response(proto.EX_OK, headers=[spam]), log_verdict
        from spamtl.services.explain import explain, symbol_names

        if command == "SYMBOLS":
            # The parts of the score, as SpamAssassin lists the rules that hit: SPAMTL_SHARED_SPAM, ...
            # From the pass that scored the message (verdict.scored): no second parse.
            symbols = symbol_names(verdict, explain(model, message, scored=verdict.scored))
            return proto.response(proto.EX_OK, headers=[spam], body=",".join(symbols).encode()), log_verdict
        if command in ("REPORT", "REPORT_IFSPAM"):
            text = ""
            if command == "REPORT" or is_spam:
                text = _report(verdict, spam[1]) + _breakdown(explain(model, message, scored=verdict.scored))
            return proto.response(proto.EX_OK, headers=[spam], body=text.encode()), log_verdict
        from spamtl.mail.headers import add_headers

        # X-Spam-Status names the same symbols as SYMBOLS (top=0: the parts' totals, no evidence lists).
        tests = symbol_names(verdict, explain(model, message, top=0, scored=verdict.scored))
        processed = add_headers(body, verdict_headers(verdict, tests=tests))
        if command == "HEADERS":
            processed = _header_block(processed)
        return proto.response(proto.EX_OK, headers=[spam], body=processed), log_verdict

    def _skipped(self, request: proto.Request, body: bytes, skipped: Any) -> bytes:
        """The answer for input that is not mail: not spam, 0 points, the message back marked ``skipped``."""
        spam = ("Spam", "False ; 0.0 / 5.0")
        if request.command in ("PROCESS", "HEADERS"):
            from spamtl.mail.headers import add_headers

            processed = add_headers(body, [("X-Spamtl-Status", skipped.header_value())])
            if request.command == "HEADERS":
                processed = _header_block(processed)
            return proto.response(proto.EX_OK, headers=[spam], body=processed)
        if request.command == "CHECK":
            return proto.response(proto.EX_OK, headers=[spam])
        text = f"not scanned: {skipped.reason}\n" if request.command == "REPORT" else ""
        return proto.response(proto.EX_OK, headers=[spam], body=text.encode())

    async def _tell(self, request: proto.Request, body: bytes, peer: Peer) -> bytes:
        """Learn (or forget) a label, if TELL is on and ``peer`` may teach the request's user."""
        try:
            if not self.policy.allow_tell:
                raise proto.ProtocolError(proto.EX_NOPERM, "TELL is not enabled on this daemon "
                                                           "(serve_allow_tell / serve --allow-tell)")
            tell = request.tell()
            user = self._user(request)
            if user == _SHARED:
                raise proto.ProtocolError(proto.EX_NOUSER, "TELL needs a User header (or serve --default-user)")
            if not self.policy.may_act_for(peer, user):
                raise proto.ProtocolError(proto.EX_NOPERM, f"{peer.describe()} may not teach {user}'s filter")
            from spamtl.services.classify import skip_reason

            skipped = skip_reason(body)
            if skipped is not None:
                raise proto.ProtocolError(proto.EX_DATAERR, f"{skipped}; nothing learned")
        except proto.ProtocolError as exc:
            emit("refused" if exc.code == proto.EX_NOPERM else "error", command="TELL", code=exc.code,
                 reason=exc.reason, client=peer.describe())
            return proto.response(exc.code, exc.reason)
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
        headers = proto.tell_answer_headers(tell, label=label, is_changed=is_changed,
                                            is_removed=result.get("removed", 0) > 0)
        emit("tell", user=user, message_class=tell.message_class or "-", set=tell.set_local,
             remove=tell.remove_local, **result, label=label or "none", changed=is_changed)
        return proto.response(proto.EX_OK, headers=headers)

    def _learn(self, user: str, tell: proto.Tell, body: bytes) -> dict[str, Any]:
        """Store (or remove) the user's label; what was done, with ``label`` (the user's label now, None for
        none) and ``changed`` (Set: local stored a label the user did not have)."""
        from spamtl.services.feedback import forget_feedback, record_feedback

        engine = self.engine
        out: dict[str, Any] = {"label": None, "changed": False}
        if tell.remove_local:
            forgot = forget_feedback(engine, self.settings, user=user, raw=body, now=utcnow())
            out.update(removed=forgot.removed, id=forgot.sha256[:12])
        if tell.set_local:
            assert tell.message_class is not None
            result = record_feedback(engine, self.settings, user=user, label=tell.message_class, raw=body, now=utcnow(),
                                     create_user=self.settings.auto_create_users)
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
        if self.engine is not None:
            self.engine.dispose()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str) -> None:
    """Answer EX_TEMPFAIL, end our side, and read and drop what the client still sends for a moment."""
    writer.write(proto.response(proto.EX_TEMPFAIL, reason))
    with contextlib.suppress(Exception):
        writer.write_eof()
    await _discard(reader, LINGER_BYTES, LINGER_SECONDS)


async def _discard(reader: asyncio.StreamReader, most: int, seconds: float) -> None:
    """Read and drop up to ``most`` bytes the client still sends, for at most ``seconds`` (or until it stops)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(max(0.0, seconds)):
            while most > 0 and (block := await reader.read(min(most, 1 << 16))):
                most -= len(block)


def _policy(settings: Settings) -> Any:
    """Who may act for whom (:class:`spamtl.serve.peers.Policy`), from the ``serve_*`` settings."""
    from spamtl.serve.peers import Policy

    try:
        return Policy.from_settings(trusted=settings.serve_trusted, trusted_networks=settings.serve_trusted_networks,
                                    allow_tell=settings.serve_allow_tell)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _verdicts_lost(count: int, exc: Exception) -> None:
    emit("error", reason=f"{count} verdict(s) not stored: {exc}")


def _report(verdict: Any, spam_value: str) -> str:
    decided = f"{verdict.user or 'the user'}'s own label" if verdict.reason == "label" else "the model"
    return (f"spamtl verdict for {verdict.user or '(shared model)'}: {verdict.verdict}\n"
            f"  spam probability {verdict.probability:.4f}, spam cutoff {verdict.spam_cutoff:.4f}, "
            f"ham cutoff {verdict.ham_cutoff:.4f}\n"
            f"  score / threshold (SpamAssassin points): {spam_value.split(';', 1)[1].strip()}\n"
            f"  model v{verdict.model_version}, decided by {decided}, id {verdict.short_id}\n")


def _breakdown(explanation: Any, per_part: int = 3) -> str:
    """The score by part (shared, group, personal) with each part's strongest evidence, as in `spamtl explain`."""
    lines = [" log-odds  part / evidence"]
    for part in explanation.parts:
        label = part.kind if not part.name else f"{part.kind} ({part.name})"
        lines.append(f"{part.total:+9.2f}  {label}, intercept {part.intercept:+.2f}")
        evidence = sorted(part.spam[:per_part] + part.ham[:per_part], key=lambda e: -abs(e.contribution))
        lines += [f"{e.contribution:+9.2f}    {e.name}" for e in evidence[:per_part]]
    return "\n".join(lines) + "\n"


def _header_block(message: bytes) -> bytes:
    """The header section of a message, up to and including the empty line (all of it if there is none)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = message.find(sep)
        if pos >= 0:
            return message[:pos + len(sep)]
    return message


# ------------------------------------------------------------------ processes
HEARTBEAT_SECONDS = 1.0
"""A worker's event loop reports that it is alive this often (a byte on a pipe to the supervisor)."""
YOUNG_SECONDS = 10.0
"""A worker that dies younger than this counts towards a crash loop; one that lived longer resets it."""
BACKOFF_MAX_SECONDS = 30.0
"""Longest wait before starting a worker again when workers keep dying young (1, 2, 4 ... 30 s)."""


async def _run_worker(worker: Worker, sockets: list[socket.socket], beat: Callable[[], bool] | None,
                      interval: float = HEARTBEAT_SECONDS) -> None:
    """Serve until SIGTERM/SIGINT.  ``beat`` is called once serving and then every ``interval`` seconds
    from the loop itself (so a stuck loop stops beating); it returns False when nobody listens any more."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        try:
            worker.load()
            emit("reload", pid=os.getpid())
        except SpamtlError as exc:
            emit("error", reason=f"reload failed, keeping the old settings: {exc}")

    loop.add_signal_handler(signal.SIGHUP, reload)
    servers = []
    for sock in sockets:
        limit = proto.MAX_LINE_BYTES + 2
        if sock.family == socket.AF_UNIX:
            servers.append(await asyncio.start_unix_server(worker.handle, sock=sock, limit=limit))
        else:
            servers.append(await asyncio.start_server(worker.handle, sock=sock, limit=limit))

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


def _worker_main(settings_factory: Callable[[], Settings], options: ServeOptions, sockets: list[socket.socket],
                 beat: Callable[[], bool] | None = None, interval: float = HEARTBEAT_SECONDS) -> None:
    worker = Worker(settings_factory, options)
    try:
        asyncio.run(_run_worker(worker, sockets, beat, interval))
    finally:
        worker.close()


def serve(settings_factory: Callable[[], Settings], options: ServeOptions,
          announce: Callable[[str], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; 0 on a clean stop.

    With ``serve_workers == 1`` everything runs in this process; otherwise
    this process binds the sockets, forks the workers, forwards SIGHUP/SIGTERM
    to them and supervises them (:class:`_Supervisor`).  Under systemd it
    reports readiness, status and watchdog pings (``Type=notify``,
    ``WatchdogSec=``).
    """
    from spamtl.serve import systemd
    from spamtl.services.classify import open_reader
    from spamtl.store.engine import make_engine

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s spamtl[%(process)d] %(message)s")
    settings = settings_factory()
    engine = make_engine(settings.database_url)
    try:
        open_reader(engine, settings).store.close()  # fail fast: no database, wrong schema, unknown trusted account
    finally:
        engine.dispose()  # nothing of it crosses the fork into the workers
    _policy(settings)
    sockets = bind_sockets(options, settings)
    where = ", ".join(describe(s) for s in sockets)
    unix_paths = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX and options.socket_path]
    workers = max(1, settings.serve_workers)
    message = f"spamtl serve: listening on {where} ({workers} worker(s))"

    def ready() -> None:
        if announce is not None:
            announce(message)
        systemd.notify("READY=1", f"STATUS=serving on {where}, {workers} worker(s)")

    try:
        if workers == 1:
            watchdog = systemd.watchdog_interval()
            started = False

            def beat() -> bool:  # in-process: the loop's heartbeat is systemd's watchdog ping
                nonlocal started
                if not started:
                    started = True
                    ready()
                elif watchdog is not None:
                    systemd.notify("WATCHDOG=1")
                return True

            _worker_main(settings_factory, options, sockets, beat=beat,
                         interval=min(HEARTBEAT_SECONDS, watchdog or HEARTBEAT_SECONDS))
            return 0
        return _Supervisor(settings_factory, options, sockets, workers, settings.serve_hung_timeout, ready).run()
    finally:
        systemd.notify("STOPPING=1")
        for sock in sockets:
            sock.close()
        for path in unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


@dataclass(eq=False)
class _Child:
    pid: int
    beats: int  # the read end of the worker's heartbeat pipe
    started: float
    last_beat: float | None = None


class _Supervisor:
    """Keeps ``workers`` worker processes serving the shared sockets.

    - A worker that dies (any exit, any signal: kill -9, the OOM killer) is replaced at once; when
      workers keep dying young (a broken store, a bad upgrade) each next start waits 1, 2, 4 ... 30 s,
      and every death is logged with its cause and the wait.
    - A worker whose event loop has not reported for ``serve_hung_timeout`` seconds is killed and replaced.
    - systemd hears READY=1 once every first worker serves (or has died trying), STATUS=N of M
      workers serving, and WATCHDOG=1 only while at least one worker serves: a daemon in which no
      worker serves is restarted by systemd instead of quietly answering nothing.
    """

    def __init__(self, settings_factory: Callable[[], Settings], options: ServeOptions,
                 sockets: list[socket.socket], workers: int, hung_timeout: float, ready: Callable[[], None]) -> None:
        self.settings_factory, self.options, self.sockets = settings_factory, options, sockets
        self.workers, self.hung_timeout, self.ready = workers, hung_timeout, ready
        self.children: dict[int, _Child] = {}
        self.starts: list[float] = []  # when each missing worker is due to start
        self.young_deaths = 0
        self.stopping: float | None = None
        self.selector = selectors.DefaultSelector()

    def run(self) -> int:
        from spamtl.serve import systemd

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        for _ in range(self.workers):
            self._spawn()
        first = {child.pid for child in self.children.values()}
        watchdog = systemd.watchdog_interval()
        next_ping = time.monotonic()
        last_status = ""
        while self.children or (self.starts and self.stopping is None):
            now = time.monotonic()
            self._read_beats(min(0.2, max(0.0, min(self.starts, default=now + 0.2) - now)))
            self._reap()
            now = time.monotonic()
            if self.stopping is not None:
                if now - self.stopping > 45.0:  # a worker that does not finish: a request is bounded far below
                    self._kill_all()
                continue
            self._kill_hung(now)
            if self.young_deaths and len(self.children) == self.workers and all(
                    now - c.started >= YOUNG_SECONDS for c in self.children.values()):
                self.young_deaths = 0  # every worker has lived past a crash loop's age: healthy again
            while self.starts and self.starts[0] <= now:
                self.starts.pop(0)
                self._spawn()
            if first is not None and all(pid not in self.children or self.children[pid].last_beat is not None
                                         for pid in first):
                first = None
                self.ready()
            serving = sum(1 for c in self.children.values()
                          if c.last_beat is not None and now - c.last_beat < 3 * HEARTBEAT_SECONDS)
            status = f"STATUS={serving} of {self.workers} workers serving"
            if status != last_status and first is None:
                if serving == 0:
                    emit("error", reason="no worker is serving: requests wait until one starts")
                systemd.notify(status)
                last_status = status
            if watchdog is not None and serving > 0 and now >= next_ping:
                systemd.notify("WATCHDOG=1")
                next_ping = now + watchdog
        self.selector.close()
        return 0

    def _signal(self, sig: int, _frame: Any) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
            self.stopping = time.monotonic()
            self.starts.clear()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    def _spawn(self) -> None:
        beats_r, beats_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                os.close(beats_r)
                for child in self.children.values():
                    os.close(child.beats)
                self.selector.close()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: nothing cached yet
                os.set_blocking(beats_w, False)
                _worker_main(self.settings_factory, self.options, self.sockets, beat=functools.partial(_beat, beats_w))
            except BaseException:  # noqa: BLE001 - the supervisor logs the exit code
                import traceback

                traceback.print_exc()
                code = 70
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(beats_w)
        child = _Child(pid, beats_r, time.monotonic())
        self.children[pid] = child
        self.selector.register(beats_r, selectors.EVENT_READ, child)

    def _read_beats(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            child: _Child = key.data
            try:
                data = os.read(child.beats, 4096)
            except OSError:
                data = b""
            if data:
                child.last_beat = time.monotonic()
            else:  # the worker closed its end: it is exiting; _reap says how
                self.selector.unregister(child.beats)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.beats)
            os.close(child.beats)
            if self.stopping is not None:
                continue
            lived = time.monotonic() - child.started
            self.young_deaths = self.young_deaths + 1 if lived < YOUNG_SECONDS else 0
            # Every worker may die once (kill -9 of all of them) and is replaced at once; a crash loop waits.
            over = self.young_deaths - self.workers
            wait = 0.0 if over <= 0 else min(BACKOFF_MAX_SECONDS, 2.0 ** (over - 1))
            self.starts.append(time.monotonic() + wait)
            self.starts.sort()
            emit("error", reason=f"worker {pid} {_exit_cause(status)} after {lived:.1f} s; "
                                 + ("starting another" if wait == 0 else
                                    f"starting another in {wait:.0f} s ({self.young_deaths} young deaths in a row)"))

    def _kill_hung(self, now: float) -> None:
        for child in list(self.children.values()):
            if now - (child.last_beat or child.started) > self.hung_timeout:
                emit("error", reason=f"worker {child.pid} has not answered for {self.hung_timeout:g} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.last_beat = now  # killed once; _reap replaces it

    def _kill_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _beat(fd: int) -> bool:
    """One heartbeat byte to the supervisor; False once it is gone (the pipe is broken)."""
    try:
        os.write(fd, b".")
    except BlockingIOError:  # the supervisor is behind on reading: it knows we are alive
        pass
    except OSError:
        return False
    return True


def _exit_cause(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
