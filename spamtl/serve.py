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
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spamtl import spamd_protocol as proto
from spamtl.config import Settings, validate_name
from spamtl.errors import NoModelError, SpamtlError, UsageError

__all__ = ["ServeOptions", "serve", "bind_sockets", "Worker", "emit"]

log = logging.getLogger("spamtl.serve")

DRAIN_LIMIT = 64 << 20
"""Most bytes of an oversized message read and discarded so that spamc can read the answer."""
_SHARED = ""
"""The user name used for the shared model (no User header, no default user): no user can have it."""


@dataclass(frozen=True)
class ServeOptions:
    socket_path: str | None = None
    host: str | None = None
    port: int | None = None
    allow_remote: bool = False
    workers: int = 2  # the defaults are Settings.serve_* (see config.py)
    max_connections: int = 64
    read_timeout: float = 30.0
    default_user: str | None = None
    refresh_interval: float = 0.25
    log_interval: float = 0.05
    socket_mode: int = 0o660


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


def systemd_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=3 + i) for i in range(count)]


def bind_sockets(options: ServeOptions) -> list[socket.socket]:
    """The listening sockets: systemd's, else a Unix socket and/or a TCP port (loopback unless allowed)."""
    passed = systemd_sockets()
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
            try:
                sock.bind(path)
            except OSError as exc:
                raise UsageError(f"cannot listen on {path}: {exc.strerror or exc}") from None
            os.chmod(path, options.socket_mode)
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
    ``key=value`` line goes to the ``spamtl.serve`` logger.
    """
    if _SETTINGS is None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        return
    from spamtl.logs import log_event

    level = logging.WARNING if event in ("error", "refused") else logging.INFO
    log_event(_SETTINGS, event, fields, level=level)


_SETTINGS: Settings | None = None
"""The settings of this process's worker, for :func:`emit` (set by :meth:`Worker.reload`)."""


# ------------------------------------------------------------------ one worker
class Worker:
    """One process's request handling: a model reader, a verdict logger, a TELL thread."""

    def __init__(self, settings_factory: Callable[[], Settings], options: ServeOptions) -> None:
        self.settings_factory = settings_factory
        self.options = options
        self.limit = max(1, math.ceil(options.max_connections / max(1, options.workers)))
        self.active = 0
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

        settings = self.settings_factory()
        reader = open_reader(settings)  # raises before anything changes
        old_reader, old_engine, old_writer = self.reader, self.engine, self.writer
        if old_writer is not None:
            old_writer.close()  # what was scored with the old settings goes to the old store, now
        self.writer = VerdictWriter(settings, interval=self.options.log_interval, on_error=_verdicts_lost)
        self.settings, self.reader = settings, reader
        global _SETTINGS
        _SETTINGS = settings
        self.engine = None
        self._checked = 0.0
        if old_reader is not None:
            old_reader.store.close()
        if old_engine is not None:
            old_engine.dispose()

    def fresh_reader(self) -> Any:
        now = time.monotonic()
        if now - self._checked >= self.options.refresh_interval:
            self.reader.refresh()
            self._checked = now
        return self.reader

    def _engine(self) -> Any:
        if self.engine is None:
            from spamtl.store.db import make_engine

            self.engine = make_engine(self.settings.database_url)
        return self.engine

    # -- connections
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.active += 1
        try:
            if self.active > self.limit:
                emit("refused", reason="too many connections", limit=self.options.max_connections)
                writer.write(proto.response(proto.EX_TEMPFAIL, "too many connections; try again later"))
            else:
                await self._serve_one(reader, writer)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), self.options.read_timeout)
        except Exception as exc:  # noqa: BLE001 - one bad connection never takes the worker down
            emit("error", reason=f"{exc.__class__.__name__}: {exc}")
        finally:
            self.active -= 1
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self.tasks.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deadline = time.monotonic() + self.options.read_timeout
        try:
            # One timer for the whole request (not a task and a timer per line: a tenth of a millisecond).
            async with asyncio.timeout(self.options.read_timeout):
                request, body = await self._read_request(reader, deadline)
        except proto.ProtocolError as exc:
            emit("error", code=exc.code, reason=exc.reason)
            writer.write(proto.response(exc.code, exc.reason))
            return
        except TimeoutError:
            emit("error", reason="read timeout")
            writer.write(proto.response(proto.EX_TEMPFAIL, "timed out reading the request"))
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            emit("error", reason="client closed the connection mid-request")
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
            writer.write(await self._tell(request, body))
            return
        answer, log_verdict = self._score(request, body)
        writer.write(answer)
        if log_verdict is not None:
            # Queued for the writer thread (group commit): the client never waits for the store's write,
            # the row is there within log_interval, and a graceful stop writes every queued verdict.
            log_verdict()

    async def _read_request(self, reader: asyncio.StreamReader, deadline: float) -> tuple[proto.Request, bytes | None]:
        first = await self._line(reader, deadline)
        headers: list[bytes] = []
        while True:
            line = await self._line(reader, deadline)
            if line in (b"\r\n", b"\n"):
                break
            headers.append(line)
            if len(headers) > proto.MAX_HEADERS:
                raise proto.ProtocolError(proto.EX_PROTOCOL, f"more than {proto.MAX_HEADERS} header lines")
        request = proto.build_request(first, headers)
        length = request.content_length
        if length is None:
            return request, b""
        limit = self.settings.max_message_bytes
        if length > limit and not request.is_compressed:
            return request, None
        if length > limit * 2 + 1024:  # compressed mail is never bigger than this
            return request, None
        body = await reader.readexactly(length)  # under the request's timeout
        if request.is_compressed:
            inflater = zlib.decompressobj()
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error:
                raise proto.ProtocolError(proto.EX_DATAERR, "bad zlib data") from None
            if len(body) > limit:
                request.headers["content-length"] = "0"  # all of it was read: nothing to drain
                return request, None
        return request, body

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
        """Read and drop what the client still sends, so that it gets to read the answer."""
        left = min(request.content_length or 0, DRAIN_LIMIT)
        with contextlib.suppress(Exception):
            while left > 0:
                block = await asyncio.wait_for(reader.read(min(left, 1 << 16)),
                                               max(0.0, deadline - time.monotonic()))
                if not block:
                    break
                left -= len(block)

    # -- requests
    def _user(self, request: proto.Request) -> str:
        user = request.user or self.options.default_user
        if user is None:
            return _SHARED
        try:
            return validate_name(user)
        except UsageError as exc:
            raise proto.ProtocolError(proto.EX_NOUSER, str(exc)) from None

    def _score(self, request: proto.Request, body: bytes) -> tuple[bytes, Callable[[], object] | None]:
        """The answer to a scoring request, and the call that stores its verdict (None: nothing to store)."""
        try:
            return self._answer(request, body)
        except proto.ProtocolError as exc:
            emit("error", command=request.command, code=exc.code, reason=exc.reason)
            return proto.response(exc.code, exc.reason), None
        except NoModelError as exc:
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_UNAVAILABLE, str(exc)), None
        except SpamtlError as exc:
            emit("error", command=request.command, reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc)), None

    def _answer(self, request: proto.Request, body: bytes) -> tuple[bytes, Callable[[], object] | None]:
        from spamtl.services.classify import prepare, verdict_headers

        started = time.perf_counter()
        user = self._user(request)
        reader = self.fresh_reader()
        model = reader.user_model(user)
        message = prepare(body)
        verdict = reader.classify(model, message, "spamd")
        log_verdict = None
        if user != _SHARED:
            log_verdict = functools.partial(self.writer.submit, model, message, verdict, _now())
        is_spam = verdict.verdict == "spam"
        spam = proto.spam_header(verdict.probability, verdict.spam_cutoff, is_spam)
        emit("verdict", command=request.command, user=user or "-", verdict=verdict.verdict,
             probability=f"{verdict.probability:.4f}", cutoff=f"{verdict.spam_cutoff:.4f}",
             version=verdict.model_version, id=verdict.short_id, reason=verdict.reason,
             ms=f"{(time.perf_counter() - started) * 1000:.1f}")
        command = request.command
        if command == "CHECK":
            return proto.response(proto.EX_OK, headers=[spam]), log_verdict
        if command == "SYMBOLS":
            from spamtl.services.explain import explain

            symbols = [f"SPAMTL_{verdict.verdict.upper()}"] + (["SPAMTL_USER_LABEL"] if verdict.reason == "label" else [])
            # The parts of the score, as SpamAssassin lists the rules that hit: SPAMTL_SHARED_SPAM, ...
            symbols += [f"SPAMTL_{p.kind.upper()}_{'SPAM' if p.total > 0 else 'HAM'}"
                        for p in explain(model, message).parts if p.total != 0]
            return proto.response(proto.EX_OK, headers=[spam], body=",".join(symbols).encode()), log_verdict
        if command in ("REPORT", "REPORT_IFSPAM"):
            text = ""
            if command == "REPORT" or is_spam:
                from spamtl.services.explain import explain

                text = _report(verdict, spam[1]) + _breakdown(explain(model, message))
            return proto.response(proto.EX_OK, headers=[spam], body=text.encode()), log_verdict
        from spamtl.mail import add_headers

        processed = add_headers(body, verdict_headers(verdict))
        if command == "HEADERS":
            processed = _header_block(processed)
        return proto.response(proto.EX_OK, headers=[spam], body=processed), log_verdict

    async def _tell(self, request: proto.Request, body: bytes) -> bytes:
        try:
            cls, do_set, do_remove = request.tell()
            user = self._user(request)
            if user == _SHARED:
                raise proto.ProtocolError(proto.EX_NOUSER, "TELL needs a User header (or serve --default-user)")
        except proto.ProtocolError as exc:
            emit("error", command="TELL", code=exc.code, reason=exc.reason)
            return proto.response(exc.code, exc.reason)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.tell_pool, self._learn, user, cls, do_set, do_remove, body)
        except SpamtlError as exc:
            emit("error", command="TELL", user=user, reason=str(exc))
            return proto.response(proto.EX_TEMPFAIL, str(exc))
        self._checked = 0.0  # the refit bumped the generation: reload before the next request
        emit("tell", user=user, message_class=cls or "-", set=do_set, remove=do_remove, **result)
        headers = []
        if do_set:
            headers.append(("DidSet", "local"))
        if do_remove:
            headers.append(("DidRemove", "local"))
        return proto.response(proto.EX_OK, headers=headers)

    def _learn(self, user: str, cls: str | None, do_set: bool, do_remove: bool, body: bytes) -> dict[str, Any]:
        from spamtl.services.feedback import forget_feedback, record_feedback

        engine = self._engine()
        out: dict[str, Any] = {}
        if do_remove:
            forgot = forget_feedback(engine, self.settings, user=user, raw=body, now=_now())
            out.update(removed=forgot.removed, id=forgot.sha256[:12])
        if do_set:
            assert cls is not None
            result = record_feedback(engine, self.settings, user=user, label=cls, raw=body, now=_now())
            out.update(id=result.sha256[:12], version=result.model_version, labels=result.user_labels)
        return out

    def close(self) -> None:
        self.tell_pool.shutdown(wait=True)
        if self.writer is not None:
            self.writer.close()  # every queued verdict is written before the process exits
        if self.reader is not None:
            self.reader.store.close()
        if self.engine is not None:
            self.engine.dispose()


def _verdicts_lost(count: int, exc: Exception) -> None:
    emit("error", reason=f"{count} verdict(s) not stored: {exc}")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def _report(verdict: Any, spam_value: str) -> str:
    decided = f"{verdict.user or 'the user'}'s own label" if verdict.reason == "label" else "the model"
    return (f"spamtl verdict for {verdict.user or '(shared model)'}: {verdict.verdict}\n"
            f"  spam probability {verdict.probability:.4f}, spam cutoff {verdict.spam_cutoff:.4f}, "
            f"ham cutoff {verdict.ham_cutoff:.4f}\n"
            f"  score / threshold (10 * logit): {spam_value.split(';', 1)[1].strip()}\n"
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
async def _run_worker(worker: Worker, sockets: list[socket.socket], ready: Callable[[], None] | None) -> None:
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
    if ready is not None:
        ready()
    await stop.wait()
    # A second SIGTERM while finishing (a supervisor that asks twice) must not kill the requests in
    # flight: the loop's handlers go, and the signals are ignored until the process exits.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    for server in servers:
        server.close()
    if worker.tasks:  # finish what is in flight (each request is bounded by the read timeout)
        await asyncio.wait(list(worker.tasks), timeout=worker.options.read_timeout + 5)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


def _worker_main(settings_factory: Callable[[], Settings], options: ServeOptions, sockets: list[socket.socket],
                 ready: Callable[[], None] | None = None) -> None:
    worker = Worker(settings_factory, options)
    try:
        asyncio.run(_run_worker(worker, sockets, ready))
    finally:
        worker.close()


def serve(settings_factory: Callable[[], Settings], options: ServeOptions,
          announce: Callable[[str], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; 0 on a clean stop.

    With ``workers == 1`` everything runs in this process; otherwise this
    process binds the sockets, forks the workers, forwards SIGHUP/SIGTERM to
    them and restarts a worker that dies.
    """
    from spamtl.services.classify import open_reader

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s spamtl[%(process)d] %(message)s")
    open_reader(settings_factory()).store.close()  # fail fast: no database, wrong schema
    sockets = bind_sockets(options)
    where = ", ".join(describe(s) for s in sockets)
    unix_paths = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX and options.socket_path]
    message = f"spamtl serve: listening on {where} ({max(1, options.workers)} worker(s))"
    try:
        if options.workers <= 1:
            _worker_main(settings_factory, options, sockets,
                         ready=(lambda: announce(message)) if announce else None)
            return 0
        return _supervise(settings_factory, options, sockets, lambda: announce(message) if announce else None)
    finally:
        for sock in sockets:
            sock.close()
        for path in unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _supervise(settings_factory: Callable[[], Settings], options: ServeOptions, sockets: list[socket.socket],
               ready: Callable[[], None]) -> int:
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> int:
        """Fork a worker; the returned fd reads one byte (or EOF) once it serves."""
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            os.close(ready_r)

            def serving() -> None:
                os.write(ready_w, b"1")
                os.close(ready_w)

            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: nothing cached yet
                _worker_main(settings_factory, options, sockets, ready=serving)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 70
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_w)
        children[pid] = time.monotonic()
        return ready_r

    def forward(sig: int, _frame: Any) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for fd in [spawn() for _ in range(options.workers)]:
        with contextlib.suppress(OSError):
            os.read(fd, 1)  # announce only once every worker serves (or died trying)
        os.close(fd)
    ready()
    while children:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is not None and not stopping:
            emit("error", reason=f"worker {pid} exited; starting another")
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a worker that dies at once: do not spin
            if not stopping:
                os.close(spawn())
    return 0
