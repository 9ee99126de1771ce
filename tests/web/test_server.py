"""The web server's listening socket: loopback by default, and no delayed-ACK stall on kept-alive pages."""

from __future__ import annotations

import socket

import pytest

from spamtl.errors import UsageError

pytest.importorskip("uvicorn", reason="the web extra is not installed")

from spamtl.web.server import bind  # noqa: E402


def test_accepted_connections_send_without_waiting_for_acks() -> None:
    listener = bind("127.0.0.1:0", allow_remote=False)
    try:
        client = socket.create_connection(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        try:  # Nagle off: a response's last segment goes out at once, not after the browser's delayed ACK
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()


def test_a_port_in_use_is_one_clear_error() -> None:
    listener = bind("127.0.0.1:0", allow_remote=False)
    try:
        port = listener.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            bind(f"127.0.0.1:{port}", allow_remote=False).close()
    finally:
        listener.close()
