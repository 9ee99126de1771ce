"""Run the web application under uvicorn on a socket bound here (a bad address is one clear line)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from spamtl.errors import UsageError
from spamtl.settings import Settings, check_listen_host
from spamtl.web.app import create_app

__all__ = ["run", "bind"]


def bind(listen: str, allow_remote: bool) -> socket.socket:
    """A listening TCP socket on ``listen`` (HOST:PORT), loopback unless ``allow_remote``."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    check_listen_host(host, allow_remote)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: a response's last segment must not wait for the browser's
        # delayed ACK on a kept-alive connection (asyncio sets it only on sockets it creates itself).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def run(settings: Settings, engine: Any, *, allow_remote: bool = False,
        announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM (requests in flight finish); the caller checked the store's schema."""
    sock = bind(settings.web_listen, allow_remote)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"spamtl web: http://{shown}:{port}/ (log in with a token from `spamtl users token NAME`)")
    config = uvicorn.Config(create_app(settings, engine), log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
