"""Who is at the other end of a daemon connection, and whom they may act for.

spamd's protocol names the user in a ``User:`` header that any client can
write, so the header alone decides nothing.  The daemon asks the kernel who
the client is instead:

- on a Unix socket, the peer's credentials (``SO_PEERCRED``: the uid of the
  process that connected);
- on loopback TCP, the owner of the client's socket, asked of the kernel by the
  connection's addresses (sock_diag, as ``ss`` does; else its socket table in
  ``/proc/net/tcp``, as identd does): a local client's socket is the one whose
  local end is our peer and whose remote end is us;
- on TCP from another host, only its address.

A client may act for a user (store the verdicts of its CHECK/PROCESS requests
under that user, and, with ``serve_allow_tell``, teach that user's filter) when
it is *trusted* (root, the daemon's own account, an account listed in
``serve_trusted`` such as the MTA's or Dovecot's, or an address in
``serve_trusted_networks``) or when its account's login name *is* that user
(``spamc -u "$LOGNAME"`` from a per-user recipe).  Everyone else is scored but
leaves no trace in the store.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Peer", "Policy", "peer_of", "tcp_owner"]

_PROC_TCP = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}


@dataclass(frozen=True)
class Peer:
    """A connected client: the local account behind it (if known) and, over TCP, its address."""

    uid: int | None
    address: str | None = None

    @property
    def key(self) -> str:
        """What per-client limits count by: the account where known, else the address."""
        if self.uid is not None:
            return f"uid:{self.uid}"
        return f"address:{self.address}" if self.address else "unknown"

    def describe(self) -> str:
        """For log lines: ``uid=1000(alice)``, ``address=192.0.2.7`` or ``unknown``."""
        if self.uid is not None:
            name = login_name(self.uid)
            return f"uid={self.uid}({name})" if name else f"uid={self.uid}"
        return f"address={self.address}" if self.address else "unknown"


def login_name(uid: int) -> str | None:
    """The account name of ``uid`` (None when no account has it)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def peer_of(sock: Any) -> Peer:
    """The client on ``sock`` (a connected socket, or asyncio's TransportSocket around one)."""
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return Peer(uid=None)
        _pid, uid, _gid = struct.unpack("3i", creds)
        return Peer(uid=uid)
    try:
        remote = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return Peer(uid=None)
    address = _plain_address(remote[0])
    if not ipaddress.ip_address(address).is_loopback:
        return Peer(uid=None, address=address)
    return Peer(uid=tcp_owner(sock.family, remote, local), address=address)


def _plain_address(host: str) -> str:
    """``::ffff:127.0.0.1`` (an IPv4 client of an IPv6 socket) as ``127.0.0.1``."""
    parsed = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _proc_hex(family: int, host: str, port: int) -> str:
    """An endpoint as the kernel prints it in /proc/net/tcp*: each 32-bit word of the address in the
    machine's byte order as 8 hex digits, then ``:`` and the port as 4 hex digits."""
    packed = socket.inet_pton(family, host.split("%", 1)[0])
    words = "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


def tcp_owner(family: int, client: tuple[Any, ...], server: tuple[Any, ...]) -> int | None:
    """The uid owning the local TCP socket connected from ``client`` to ``server`` (None: not found).

    Both endpoints are (host, port, ...) as ``getpeername``/``getsockname`` give them on the server's
    socket.  Asks the kernel for that one socket (sock_diag over netlink, as ``ss`` does: a lookup
    by address, microseconds); where that is unavailable, scans the socket table in /proc (which
    grows with every open connection on the machine).
    """
    found = _sock_diag_owner(family, client, server)
    return found if found is not False else _proc_owner(family, client, server)


_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_TCP_LISTEN = 10
_NO_COOKIE = 0xFFFFFFFF


def _sockid(family: int, client: tuple[Any, ...], server: tuple[Any, ...]) -> bytes:
    """``struct inet_diag_sockid`` of the client's end: its address and port first (network order)."""
    src = socket.inet_pton(family, client[0].split("%", 1)[0]).ljust(16, b"\0")
    dst = socket.inet_pton(family, server[0].split("%", 1)[0]).ljust(16, b"\0")
    return struct.pack("!HH16s16s", client[1], server[1], src, dst)


def _sock_diag_owner(family: int, client: tuple[Any, ...], server: tuple[Any, ...]) -> int | None | bool:
    """The owner by sock_diag: a uid, None when the kernel knows no such socket, False when it cannot be asked."""
    try:
        wanted = _sockid(family, client, server)
        request = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + wanted
                   + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
        header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)  # NLM_F_REQUEST
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as netlink:
            netlink.settimeout(1.0)
            netlink.send(header + request)
            answer = netlink.recv(8192)
    except (OSError, AttributeError, ValueError):
        return False
    if len(answer) < 16 + 4 + 48 + 20 or struct.unpack_from("=H", answer, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return None  # an error message: no such socket
    state = answer[17]
    # The socket found must be that connection itself: a listener on the client's port would also match.
    if state == _TCP_LISTEN or answer[20:20 + 36] != wanted:
        return None
    return int(struct.unpack_from("=I", answer, 16 + 4 + 48 + 12)[0])


def _proc_owner(family: int, client: tuple[Any, ...], server: tuple[Any, ...]) -> int | None:
    """The owner by the socket table in /proc/net/tcp*: the row whose local address is ``client`` and
    whose remote address is ``server``."""
    try:
        wanted = (_proc_hex(family, client[0], client[1]), _proc_hex(family, server[0], server[1]))
        with open(_PROC_TCP[family], encoding="ascii") as table:
            next(table, None)  # the column names
            for line in table:
                fields = line.split()
                if len(fields) > 7 and fields[1] == wanted[0] and fields[2] == wanted[1]:
                    return int(fields[7])
    except (OSError, KeyError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class Policy:
    """Whom each client may act for (see the module docstring)."""

    trusted_uids: frozenset[int]
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_tell: bool = False

    @classmethod
    def from_settings(cls, *, trusted: tuple[str, ...], trusted_networks: tuple[str, ...],
                      allow_tell: bool) -> Policy:
        """Resolve account names to uids now (a name no account has is an error, not silently nobody)."""
        uids = {0, os.getuid()}
        for account in trusted:
            account = account.strip()
            if account.isdigit():
                uids.add(int(account))
                continue
            try:
                uids.add(pwd.getpwnam(account).pw_uid)
            except KeyError:
                raise ValueError(f"serve_trusted: no local account {account!r}") from None
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_networks)
        return cls(trusted_uids=frozenset(uids), trusted_networks=networks, allow_tell=allow_tell)

    def is_trusted(self, peer: Peer) -> bool:
        """Acts for every user: a trusted account (whatever the transport) or a trusted network."""
        if peer.uid is not None and peer.uid in self.trusted_uids:
            return True
        if peer.address is not None and self.trusted_networks:
            address = ipaddress.ip_address(peer.address)
            return any(address in network for network in self.trusted_networks)
        return False

    def may_act_for(self, peer: Peer, user: str) -> bool:
        """Whether ``peer`` may store verdicts (and, with allow_tell, labels) for ``user``."""
        if self.is_trusted(peer):
            return True
        return peer.uid is not None and login_name(peer.uid) == user
