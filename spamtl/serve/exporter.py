"""The daemon's Prometheus endpoint: ``GET /metrics`` on its own port (``serve_metrics``), from one thread.

It runs in the supervisor (or in the one worker of ``serve_workers = 1``), never on the scanning path: a scrape
reads the workers' counter files and two model-version rows, one scrape at a time, and a scraper that stalls
holds only this thread, for at most :data:`READ_SECONDS`.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import signal
import socket
import threading
from typing import Any

from spamtl.errors import UsageError
from spamtl.services import telemetry
from spamtl.settings import check_listen_host
from spamtl.store.engine import store_source

log = logging.getLogger("spamtl.serve.daemon")

READ_SECONDS = 5.0
"""Seconds a scraper has to send its request (the endpoint answers one scrape at a time)."""
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9783`` for IPv6), as ``serve_metrics`` holds it (the setting checked the form)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Exporter:
    """The endpoint, bound at once (a port in use is one line at start) and served by :meth:`start`."""

    def __init__(self, listen: str, database_url: str, allow_remote: bool) -> None:
        host, port = split_host_port(listen)
        check_listen_host(host, allow_remote)
        try:
            self.server = _Server((host, port), socket.AF_INET6 if ":" in host else socket.AF_INET, self._scrape)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        # Opened once, before any fork: it holds no connection between scrapes (each one disposes of it).
        self.engine = store_source(database_url)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> None:
        """Serve from a thread that never takes the stop signals: they stay with the main thread, which blocks
        them while it forks a worker (a signal caught by this thread would reach the new worker too)."""
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="spamtl-metrics", daemon=True)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close_in_child(self) -> None:
        """In a forked worker: let go of the listening socket (the supervisor keeps serving it)."""
        with contextlib.suppress(OSError):
            self.server.socket.close()

    def stop(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(READ_SECONDS + 1)
        self.server.server_close()
        self.engine.dispose()

    def _scrape(self) -> tuple[bytes, str]:
        try:
            return telemetry.exposition(self.engine)
        finally:
            self.engine.dispose()  # no connection stays open between scrapes, nor crosses a fork


class _Server(http.server.HTTPServer):
    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, scrape: Any) -> None:
        self.address_family = family  # read when the socket is made, in super().__init__
        self.scrape = scrape
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback (a scraper that hung up, mostly)."""
        import sys

        log.warning("metrics: a scrape from %s failed: %s", client_address[0], sys.exc_info()[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = READ_SECONDS
    server_version = "spamtl"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"only GET /metrics here\n", "text/plain; charset=utf-8")
            return
        try:
            body, content_type = self.server.scrape()
        except Exception as exc:  # noqa: BLE001 - a failed scrape is a 500, never a dead endpoint
            log.warning("metrics: scrape failed: %s: %s", exc.__class__.__name__, exc)
            self._answer(500, b"scrape failed; see the daemon's log\n", "text/plain; charset=utf-8")
            return
        self._answer(200, body, content_type)

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """No access log: a scrape every few seconds would bury the daemon's own lines."""
