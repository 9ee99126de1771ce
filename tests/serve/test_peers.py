"""Who may teach whom: TELL off by default; a client stores and teaches only for itself unless trusted.

The daemon runs as root (the test); its clients run as other local accounts with runuser, so the
peer credentials (SO_PEERCRED on the Unix socket, the socket's owner on loopback TCP) are real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from spamtl.serve.peers import Peer, Policy, _proc_owner, _sock_diag_owner, peer_of, tcp_owner

from ..accounts import SPAMC, as_account, has_account, shared_tempdir, why_not_as_accounts
from .test_daemon import SPAM, Daemon, labels, logged, probabilities, store  # noqa: F401 - fixture

needs_accounts = pytest.mark.skipif(why_not_as_accounts("nobody", "mail") is not None or SPAMC is None,
                                    reason=why_not_as_accounts("nobody", "mail") or "spamc is not installed")
pytestmark = pytest.mark.sqlite_only(reason="reads the daemon's store file directly")


def spam_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n")[1] if answer.startswith(b"SPAMD/1.5 0") else answer


# ------------------------------------------------------------------ identity
def test_a_loopback_tcp_client_is_known_by_its_account() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client, conn:
            assert tcp_owner(socket.AF_INET, conn.getpeername(), conn.getsockname()) == os.getuid()
            assert peer_of(conn) == Peer(uid=os.getuid(), address="127.0.0.1")
            # No such connection (the server's own port as a client's, towards port 1): nobody, not the
            # listener on that port.
            assert tcp_owner(socket.AF_INET, conn.getsockname(), (conn.getpeername()[0], 1)) is None


def test_a_unix_socket_client_is_known_by_its_credentials(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "s"))
            conn, _ = server.accept()
            with conn:
                assert peer_of(conn) == Peer(uid=os.getuid())


@needs_accounts
def test_another_accounts_tcp_connection_is_known_by_that_account() -> None:
    nobody = 65534 if not has_account("nobody") else __import__("pwd").getpwnam("nobody").pw_uid
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        holder = subprocess.Popen(["runuser", "-u", "nobody", "--", "bash", "-c",
                                   f"exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 5"])
        try:
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                assert peer_of(conn).uid == nobody
                # Both ways of asking the kernel agree (sock_diag first; the /proc table where it is missing).
                ends = (socket.AF_INET, conn.getpeername(), conn.getsockname())
                assert _sock_diag_owner(*ends) == _proc_owner(*ends) == nobody
        finally:
            holder.kill()
            holder.wait()


def test_the_policy_trusts_accounts_networks_and_each_user_for_themselves() -> None:
    policy = Policy.from_settings(trusted=("mail",), trusted_networks=("192.0.2.0/24",), allow_tell=True)
    mail = __import__("pwd").getpwnam("mail").pw_uid
    assert policy.may_act_for(Peer(uid=mail), "alice")
    assert policy.may_act_for(Peer(uid=0), "alice")
    assert policy.may_act_for(Peer(uid=None, address="192.0.2.7"), "alice")
    assert not policy.may_act_for(Peer(uid=None, address="198.51.100.7"), "alice")
    assert not policy.may_act_for(Peer(uid=None), "alice")
    nobody = __import__("pwd").getpwnam("nobody").pw_uid
    assert policy.may_act_for(Peer(uid=nobody), "nobody")
    assert not policy.may_act_for(Peer(uid=nobody), "alice")
    with pytest.raises(ValueError, match="no local account 'no-such-account-xyz'"):
        Policy.from_settings(trusted=("no-such-account-xyz",), trusted_networks=(), allow_tell=False)


# ------------------------------------------------------------------ TELL
def test_tell_is_refused_unless_enabled(store: dict[str, object]) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    try:
        before = labels(str(store["db"]), "carol")
        answer = d.request("TELL", SPAM, user="carol", Message_class="spam", Set="local")
        assert answer.startswith(b"SPAMD/1.5 77 TELL is not enabled on this daemon"), answer
        assert labels(str(store["db"]), "carol") == before
    finally:
        code, err = d.stop()
    assert code == 0, err


@needs_accounts
@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_another_local_account_cannot_teach_a_users_filter_or_store_under_them(
        store: dict[str, object], via: str) -> None:  # noqa: F811
    db = str(store["db"])
    open_socket = shared_tempdir("spamtl-trust-") / "spamd.sock"  # a folder and socket anyone may reach
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1", "--allow-tell", "--socket-mode", "0666",
               "--socket", str(open_socket))
    where = ["-p", str(d.port)] if via == "tcp" else ["-U", str(open_socket)]
    try:
        score_before = spam_line(d.request("CHECK", SPAM, user="alice"))
        before = labels(db, "alice")
        out = as_account("nobody", [SPAMC or "spamc", *where, "-u", "alice", "-L", "ham"], SPAM)
        assert labels(db, "alice") == before, out
        assert spam_line(d.request("CHECK", SPAM, user="alice")) == score_before
        # Scored for nobody, but not stored under alice: no verdict row for this message.
        probe = SPAM.replace(b"win the lottery now 99", f"probe {via} from nobody".encode())
        checked = as_account("nobody", [SPAMC or "spamc", *where, "-u", "alice", "-c"], probe)
        assert checked.returncode == 1 and b"/" in checked.stdout, checked  # spam, with a score
        marker = SPAM.replace(b"win the lottery now 99", f"marker {via} from root".encode())
        d.request("CHECK", marker, user="alice")
        assert logged(db, "alice", 1, subject=f"marker {via} from root")
        assert probabilities(db, "alice", subject=f"probe {via} from nobody") == []
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert "may not teach alice's filter" in err and "uid=65534(nobody)" in err, err


@needs_accounts
@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_an_account_teaches_its_own_filter_and_a_trusted_account_everyones(
        store: dict[str, object], via: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("SPAMTL_AUTO_CREATE_USERS", "true")  # "nobody" is new to the store: TELL may register it
    # The mail system's account differs in uid and gid where it can (Dovecot's), so a peer's gid taken
    # for its uid is caught.
    mail_account = "dovecot" if has_account("dovecot") else "mail"
    db = str(store["db"])
    open_socket = shared_tempdir("spamtl-trust-") / "spamd.sock"
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1", "--allow-tell", "--trust", mail_account,
               "--socket-mode", "0666", "--socket", str(open_socket))
    where = ["-p", str(d.port)] if via == "tcp" else ["-U", str(open_socket)]
    try:
        own = as_account("nobody", [SPAMC or "spamc", *where, "-u", "nobody", "-L", "spam"], SPAM)
        assert own.returncode == 0 and labels(db, "nobody")[-1][1] == "spam", own
        before = len(labels(db, "bob"))
        trusted = as_account(mail_account, [SPAMC or "spamc", *where, "-u", "bob", "-L", "spam"], SPAM)
        assert trusted.returncode == 0 and len(labels(db, "bob")) == before + 1, trusted
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_default_user_scores_requests_without_a_user_header_only(store: dict[str, object]) -> None:  # noqa: F811
    db = str(store["db"])
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1", "--default-user", "bob")
    try:
        for user in (None, "carol"):
            subject = f"default user probe {user}"
            d.request("CHECK", SPAM.replace(b"win the lottery now 99", subject.encode()), user=user)
            assert logged(db, user or "bob", 1, subject=subject), user
        assert probabilities(db, "bob", subject="default user probe carol") == []
        assert probabilities(db, "carol", subject="default user probe None") == []
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_a_recipient_with_an_address_extension_is_scored_logged_and_taught_as_its_user(
        store: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """recipient_delimiter: bob+lists is bob (Postfix delivers it to bob), unless the store knows bob+lists;
    even with auto_create_users no user bob+lists appears."""
    monkeypatch.setenv("SPAMTL_RECIPIENT_DELIMITER", "+")
    monkeypatch.setenv("SPAMTL_AUTO_CREATE_USERS", "true")
    db = str(store["db"])
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1", "--allow-tell")
    try:
        subject = "address extension probe"
        probe = SPAM.replace(b"win the lottery now 99", subject.encode())
        d.request("CHECK", probe, user="bob+lists")
        d.request("CHECK", probe, user="bob")
        assert len(logged(db, "bob", 2, subject=subject)) == 2
        taught = len(labels(db, "bob"))
        assert d.request("TELL", probe, user="bob+lists", Message_class="ham", Set="local").startswith(b"SPAMD/1.5 0")
        assert len(labels(db, "bob")) == taught + 1
        assert users_named(db, "bob+lists") == 0
    finally:
        code, err = d.stop()
    assert code == 0, err
    logged_values = probabilities(db, "bob", subject=subject)
    assert logged_values[0] == logged_values[1]  # the same slice scored both


def users_named(db: str, name: str) -> int:
    import sqlite3

    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return int(con.execute("SELECT count(*) FROM users WHERE name = ?", (name,)).fetchone()[0])
    finally:
        con.close()


# ------------------------------------------------------------------ per-client limits
@needs_accounts
def test_an_untrusted_client_may_hold_only_so_many_connections(store: dict[str, object]) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1", "--max-per-client", "2")
    try:
        script = (f"for fd in 3 4 5; do eval \"exec $fd<>/dev/tcp/127.0.0.1/{d.port}\"; "
                  "printf 'CHECK SPAMC/1.5\\r\\n' >&$fd; sleep 0.2; done; "
                  "timeout 3 head -c 200 <&5")
        out = as_account("nobody", ["bash", "-c", script], timeout=30)
        assert out.stdout == b"SPAMD/1.5 75 too many connections from this client; try again later\r\n\r\n", out
        # root is trusted: the limit does not apply to the mail system's own account.
        held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(4)]
        try:
            for sock in held:
                sock.sendall(b"CHECK SPAMC/1.5\r\n")
            time.sleep(0.2)
            assert d.exchange(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
        finally:
            for sock in held:
                sock.close()
    finally:
        code, err = d.stop()
    assert code == 0, err
