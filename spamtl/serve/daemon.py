"""``spamtl serve``: a daemon that keeps users' models loaded and speaks the spamd protocol.

A few pre-forked worker processes (:mod:`spamtl.serve.worker`), each one asyncio loop, share the
listening sockets opened here (or passed by systemd); with more than one, this process supervises
them (:mod:`spamtl.serve.supervisor`).  SIGTERM/SIGINT finish the requests in flight and exit;
SIGHUP drops every cached model and rereads the settings.  With ``serve_metrics`` (``--metrics``) this
process also serves Prometheus metrics (:mod:`spamtl.serve.exporter`, :mod:`spamtl.services.telemetry`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable

from spamtl.errors import UsageError
from spamtl.serve import systemd
from spamtl.serve.supervisor import Supervisor
from spamtl.serve.worker import HEARTBEAT_SECONDS, ServeOptions, Worker, emit, policy_of, run_worker
from spamtl.services import telemetry
from spamtl.services.classify import open_reader
from spamtl.settings import Settings, check_listen_host
from spamtl.store.engine import store_source

__all__ = ["ServeOptions", "serve", "bind_sockets", "Worker", "emit"]


def serve(settings_factory: Callable[[], Settings], options: ServeOptions,
          announce: Callable[[str], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; 0 on a clean stop.

    With ``serve_workers == 1`` everything runs in this process; otherwise this process binds the
    sockets, forks the workers and supervises them.  Under systemd it reports readiness, status and
    watchdog pings (``Type=notify``, ``WatchdogSec=``).
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s spamtl[%(process)d] %(message)s")
    settings = settings_factory()
    engine = store_source(settings.database_url)
    try:
        open_reader(engine, settings).store.close()  # fail fast: no database, wrong schema, unknown trusted account
    finally:
        engine.dispose()  # nothing of it crosses the fork into the workers
    policy_of(settings)
    sockets = bind_sockets(options, settings)
    where = ", ".join(describe(s) for s in sockets)
    unix_paths = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX and options.socket_path]
    workers = max(1, settings.serve_workers)

    metrics: _Metrics | None = None  # serve_metrics: the endpoint, started before the workers

    def ready() -> None:
        if announce is not None:
            announce(f"spamtl serve: listening on {where} ({workers} worker(s))"
                     + (f"; metrics on {metrics.exporter.url}" if metrics is not None else ""))
        systemd.notify("READY=1", f"STATUS=serving on {where}, {workers} worker(s)")

    try:
        if settings.serve_metrics is not None:
            metrics = _Metrics(settings, options, multiprocess=workers > 1)
        if workers == 1:
            _serve_here(settings_factory, options, sockets, ready)
            return 0
        return Supervisor(settings_factory, options, sockets, workers, settings.serve_hung_timeout, ready,
                          exporter=None if metrics is None else metrics.exporter).run()
    finally:
        if metrics is not None:
            metrics.close()
        systemd.notify("STOPPING=1")
        for sock in sockets:
            sock.close()
        for path in unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


_METRICS_PREFIX = "spamtl-metrics-"


def _remove_orphaned_metrics(parent: str) -> None:
    """Remove the metrics directories that daemons killed before their cleanup (SIGKILL, a crash) left
    in ``parent``: this account's, named for a process that no longer runs."""
    with os.scandir(parent) as entries:
        for entry in entries:
            pid = entry.name.removeprefix(_METRICS_PREFIX).split("-", 1)[0]
            if not entry.name.startswith(_METRICS_PREFIX) or not pid.isdigit():
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:  # the daemon that made it is gone
                shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:  # alive under another account (EPERM), or gone from under us
                continue


class _Metrics:
    """``serve_metrics``: the endpoint, serving from now on, and (with workers) the directory of their counts."""

    def __init__(self, settings: Settings, options: ServeOptions, *, multiprocess: bool) -> None:
        from spamtl.serve.exporter import Exporter  # http.server: only a daemon with metrics loads it

        assert settings.serve_metrics is not None
        self.exporter = Exporter(settings.serve_metrics, settings.database_url, options.allow_remote)
        self.directory: str | None = None
        try:
            # Private (0700) and new: the workers' counter files, summed at each scrape; removed at exit.
            # Named for this process, so that the next daemon removes it if this one is killed first.
            try:
                if multiprocess:
                    _remove_orphaned_metrics(tempfile.gettempdir())
                    self.directory = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
            except OSError as exc:
                raise UsageError(f"cannot create a directory for the workers' metrics: {exc}") from None
            telemetry.enable(self.directory)
            self.exporter.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.exporter.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _serve_here(settings_factory: Callable[[], Settings], options: ServeOptions, sockets: list[socket.socket],
                ready: Callable[[], None]) -> None:
    """One worker in this process: the loop's heartbeat is systemd's readiness, then its watchdog ping."""
    watchdog = systemd.watchdog_interval()
    started = False

    def beat() -> bool:
        nonlocal started
        if not started:
            started = True
            ready()
        elif watchdog is not None:
            systemd.notify("WATCHDOG=1")
        return True

    run_worker(settings_factory, options, sockets, beat=beat,
               interval=min(HEARTBEAT_SECONDS, watchdog or HEARTBEAT_SECONDS))


def bind_sockets(options: ServeOptions, settings: Settings) -> list[socket.socket]:
    """The listening sockets: systemd's, else a Unix socket and/or a TCP port (loopback unless allowed)."""
    passed = systemd.listen_sockets()
    if passed:
        for sock in passed:
            sock.setblocking(False)
        return passed
    if options.socket_path is None and options.port is None:
        raise UsageError("give --socket PATH and/or --port N")
    sockets: list[socket.socket] = []
    try:
        if options.socket_path is not None:
            sockets.append(_unix_socket(options.socket_path, settings))
        if options.port is not None:
            sockets.append(_tcp_socket(options.host or "127.0.0.1", options.port, options.allow_remote))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.setblocking(False)
    return sockets


def _unix_socket(path: str, settings: Settings) -> socket.socket:
    """A listening Unix socket with ``serve_socket_mode`` and ``serve_socket_group`` set before it listens,
    so no client connects through a looser mode in between."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.exists(path) and not _is_socket(path):
            raise UsageError(f"{path} exists and is not a socket; remove it or choose another path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
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
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_socket(host: str, port: int, allow_remote: bool) -> socket.socket:
    _check_host(host, allow_remote)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


_check_host = check_listen_host


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
