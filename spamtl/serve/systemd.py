"""What a daemon says to and takes from systemd: passed sockets, readiness, status and the watchdog.

No dependency on libsystemd: the protocol is an environment variable and a
datagram (``sd_notify(3)``, ``sd_listen_fds(3)``).  Outside systemd every call
here does nothing.
"""

from __future__ import annotations

import os
import socket

__all__ = ["listen_sockets", "notify", "watchdog_interval"]


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by socket activation (``LISTEN_PID``/``LISTEN_FDS``), if they are for this process.

    The variables are removed, so that processes this one starts do not take the sockets for theirs.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=3 + i) for i in range(count)]


def notify(*states: str) -> bool:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``... to ``$NOTIFY_SOCKET``; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
