"""``spamtl tell`` against a scripted daemon: exit 0 only on a confirmation, one line and a code otherwise.

The real daemon, the mail account and Dovecot are in ``tests/serve/test_socket_clients.py`` and
``tests/delivery/test_imapsieve.py``; here every answer a daemon can give (or fail to give) is scripted.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.serve import protocol as proto

runner = CliRunner()
MAIL = b"From: a@example.org\r\nSubject: cheap pills\r\n\r\nbuy now\r\n"


class FakeDaemon:
    """Listens on a Unix socket (or loopback TCP); answers each connection with the next scripted reply.

    A reply of None closes the connection without an answer; ``"hang"`` reads the request and never answers.
    """

    def __init__(self, tmp: Path, replies: list[bytes | str | None], tcp: bool = False) -> None:
        if tcp:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address: list[str] = ["--port", str(self.sock.getsockname()[1])]
        else:
            path = str(tmp / "fake.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.address = ["--socket", path]
        self.sock.listen(8)
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for reply in self.replies:
            conn, _ = self.sock.accept()
            with conn:
                self.requests.append(_read_request(conn))
                if reply == "hang":
                    self.release.wait(30)
                elif reply is not None:
                    assert isinstance(reply, bytes)
                    conn.sendall(reply)

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        block = conn.recv(65536)
        if not block:
            return data
        data += block
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    length = int(next(line.split(":", 1)[1] for line in head.split("\r\n")
                      if line.lower().startswith("content-length")))
    while len(data) - len(head) - 4 < length:
        block = conn.recv(65536)
        if not block:
            break
        data += block
    return data


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[FakeDaemon] = []

    def start(*replies: bytes | str | None, tcp: bool = False) -> FakeDaemon:
        daemon = FakeDaemon(tmp_path, list(replies), tcp=tcp)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def tell(*args: str, raw: bytes = MAIL):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["tell", *args], input=raw)


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    return str(lines[0])


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_confirmed_teach_exits_0_and_sends_what_spamc_sends(fake, tcp: bool) -> None:  # type: ignore[no-untyped-def]
    daemon = fake(b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\n\r\n", tcp=tcp)
    result = tell(*daemon.address, "--user", "alice", "--spam")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert daemon.requests == [proto.tell_request("alice", "spam", MAIL)]
    assert daemon.requests == [b"TELL SPAMC/1.5\r\nContent-length: %d\r\nUser: alice\r\n"
                               b"Message-class: spam\r\nSet: local\r\n\r\n%s" % (len(MAIL), MAIL)]


def test_forget_needs_didremove(fake) -> None:  # type: ignore[no-untyped-def]
    daemon = fake(b"SPAMD/1.5 0 EX_OK\r\nDidRemove: local\r\n\r\n", b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\n\r\n")
    assert tell(*daemon.address, "--user", "alice", "--forget").exit_code == 0
    assert b"\r\nRemove: local\r\n" in daemon.requests[0] and b"Message-class" not in daemon.requests[0]
    result = tell(*daemon.address, "--user", "alice", "--forget")
    assert result.exit_code == 76
    assert one_error_line(result) == ("Error: spamtl serve answered 0 (EX_OK) without DidRemove: local or "
                                      "Spamtl-Label (not confirmed)")


@pytest.mark.parametrize(("label", "reply"), [
    ("spam", b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: spam\r\n\r\n"),
    ("ham", b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: ham\r\n\r\n"),
    ("forget", b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: none\r\n\r\n"),
], ids=["spam", "ham", "forget"])
def test_already_learned_is_success(fake, label: str, reply: bytes) -> None:  # type: ignore[no-untyped-def]
    """The daemon omits DidSet when the user already had the label (spamc: "already un/learned"); its
    Spamtl-Label says the label is stored, so the teach succeeded."""
    daemon = fake(reply)
    result = tell(*daemon.address, "--user", "alice", f"--{label}")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(("label", "reply", "line"), [
    ("spam", b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\nSpamtl-Label: ham\r\n\r\n",
     "Error: spamtl serve answered 0 (EX_OK) with Spamtl-Label: ham (not spam: not stored)"),
    ("ham", b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: none\r\n\r\n",
     "Error: spamtl serve answered 0 (EX_OK) with Spamtl-Label: none (not ham: not stored)"),
    ("forget", b"SPAMD/1.5 0 EX_OK\r\nDidRemove: local\r\nSpamtl-Label: spam\r\n\r\n",
     "Error: spamtl serve answered 0 (EX_OK) with Spamtl-Label: spam (not none: not stored)"),
], ids=["spam", "ham", "forget"])
def test_a_label_other_than_asked_is_never_success(  # type: ignore[no-untyped-def]
        fake, label: str, reply: bytes, line: str) -> None:
    daemon = fake(reply)
    result = tell(*daemon.address, "--user", "alice", f"--{label}")
    assert result.exit_code == 76
    assert one_error_line(result) == line


@pytest.mark.parametrize(("reply", "code", "line"), [
    # the red-team case: the store's disk full; Debian's spamc said "already un/learned" and exited 0
    (b"SPAMD/1.5 75 database error\r\n\r\n", 75, "Error: spamtl serve answered 75 (EX_TEMPFAIL): database error"),
    (b"SPAMD/1.5 0 EX_OK\r\n\r\n", 76,
     "Error: spamtl serve answered 0 (EX_OK) without DidSet: local or Spamtl-Label (not confirmed)"),
    (b"SPAMD/1.5 77 uid=8(mail) may not teach alice's filter\r\n\r\n", 77,
     "Error: spamtl serve answered 77 (EX_NOPERM): uid=8(mail) may not teach alice's filter"),
    (b"SPAMD/1.5 65 message larger than 512000 bytes; not scanned\r\n\r\n", 65,
     "Error: spamtl serve answered 65 (EX_DATAERR): message larger than 512000 bytes; not scanned"),
    (b"SPAMD/1.5 67 bad user name\r\n\r\n", 67, "Error: spamtl serve answered 67 (EX_NOUSER): bad user name"),
    (b"HTTP/1.1 200 OK\r\n\r\n", 76, "Error: not a spamd answer: 'HTTP/1.1 200 OK'"),
    (None, 75, "Error: spamtl serve at {where} closed the connection without an answer"),
], ids=["store-failed", "ok-without-didset", "not-permitted", "too-large", "bad-user", "not-spamd", "no-answer"])
def test_a_teach_that_fails_is_one_line_and_its_code(  # type: ignore[no-untyped-def]
        fake, reply: bytes | None, code: int, line: str) -> None:
    daemon = fake(reply)
    result = tell(*daemon.address, "--user", "alice", "--spam")
    assert result.exit_code == code
    assert one_error_line(result) == line.format(where=daemon.address[1])


def test_no_answer_in_time_is_temporary(fake) -> None:  # type: ignore[no-untyped-def]
    daemon = fake("hang")
    result = tell(*daemon.address, "--user", "alice", "--ham", "--timeout", "0.3")
    assert result.exit_code == 75
    assert one_error_line(result) == f"Error: no answer from spamtl serve at {daemon.address[1]} within 0.3 s"


def test_unreachable_daemon_is_69(tmp_path: Path) -> None:
    result = tell("--socket", str(tmp_path / "none.sock"), "--user", "alice", "--spam")
    assert result.exit_code == 69
    assert one_error_line(result) == (f"Error: cannot connect to spamtl serve at {tmp_path / 'none.sock'}: "
                                      "No such file or directory (is it running?)")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # a socket file nobody listens on: a daemon that died
    stale.close()
    result = tell("--socket", str(tmp_path / "stale.sock"), "--user", "alice", "--spam")
    assert result.exit_code == 69 and "Connection refused (is it running?)" in one_error_line(result)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = tell("--port", str(port), "--user", "alice", "--spam")
    assert result.exit_code == 69 and f"127.0.0.1:{port}: Connection refused" in one_error_line(result)


@pytest.mark.parametrize(("args", "line"), [
    (["--spam", "--ham", "--port", "7830"], "Error: say exactly one of --spam, --ham or --forget"),
    (["--port", "7830"], "Error: say exactly one of --spam, --ham or --forget"),
    (["--spam"], "Error: give the daemon's address: --socket PATH or --port N (not both)"),
    (["--spam", "--socket", "S", "--port", "7830"],
     "Error: give the daemon's address: --socket PATH or --port N (not both)"),
], ids=["two-labels", "no-label", "no-address", "both-addresses"])
def test_usage_errors_exit_2(args: list[str], line: str) -> None:
    result = tell("--user", "alice", *args)
    assert result.exit_code == 2
    assert one_error_line(result) == line


def test_empty_and_oversized_messages_are_not_sent(fake) -> None:  # type: ignore[no-untyped-def]
    daemon = fake()  # answers nothing: no connection may be made
    result = tell(*daemon.address, "--user", "alice", "--spam", raw=b"")
    assert result.exit_code == 65 and one_error_line(result) == "Error: no message on standard input; nothing learned"
    result = tell(*daemon.address, "--user", "alice", "--spam", raw=MAIL + b"x" * (64 * 2**20 + 1 - len(MAIL)))
    assert result.exit_code == 65 and one_error_line(result) == f"Error: message larger than {64 * 2**20} bytes; not sent"
    assert daemon.requests == []


def test_a_user_name_that_would_break_the_header_is_refused(fake) -> None:  # type: ignore[no-untyped-def]
    daemon = fake()
    result = tell(*daemon.address, "--user", "alice\r\nSet: local", "--spam")
    assert result.exit_code == 67 and one_error_line(result).startswith("Error: bad user name 'alice")
    assert daemon.requests == []


def test_tell_stays_light() -> None:
    """Run once per moved message: no numpy, SQLAlchemy, scikit-learn, nor the rest of the command line."""
    heavy = ("numpy", "scipy", "sklearn", "sqlalchemy", "spamtl.cli.app", "spamtl.settings", "spamtl.features")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "spamtl", "tell", "--help"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0 and out.stdout.startswith("Usage: spamtl tell [OPTIONS]"), out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "spamtl.cli.tell" in imported
    assert not [m for m in imported if m.split(".")[0] in heavy or m in heavy]


def test_the_script_passes_the_code_on_and_the_command_line_lists_tell(fake) -> None:  # type: ignore[no-untyped-def]
    """`spamtl tell` (the light path in spamtl.cli.entry) passes the code on; `spamtl --help` lists the command."""
    daemon = fake(b"SPAMD/1.5 75 database error\r\n\r\n")
    out = subprocess.run([sys.executable, "-m", "spamtl", "tell", *daemon.address, "--user", "alice", "--spam"],
                         input=MAIL, capture_output=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (
        75, b"", b"Error: spamtl serve answered 75 (EX_TEMPFAIL): database error\n")
    assert "Example: spamtl tell " in runner.invoke(app, ["tell", "--help"]).stdout
    assert re.search(r"^  tell +Teach the daemon's filter", runner.invoke(app, ["--help"]).stdout, re.M)
