"""Delivery and learning through the daemon's Unix socket, as the accounts a mail system uses.

The daemon runs as root (the test) with ``--socket-group mail --socket-mode 0660``; its clients run
as ``mail`` (in the socket's group: served) and ``nobody`` (not: kept out by the socket's mode).
Checks the README's per-user recipes (procmail, maildrop: ``spamc -U``), and ``spamtl tell``'s exit
codes against the real daemon: 0 stored, 77 not permitted, 69 daemon down, 75 store failed, 65 too large.
"""

from __future__ import annotations

import pwd
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..accounts import SPAMC, SocketDaemon, as_account, shared_tempdir, spamtl_for, why_not_as_accounts
from ..cli.test_loop import _mails
from ..conftest import REPO, make_mail, write_mbox

_why_not = why_not_as_accounts("mail", "nobody")
pytestmark = [
    pytest.mark.skipif(_why_not is not None, reason=_why_not or ""),
    pytest.mark.skipif(SPAMC is None, reason="spamc is not installed (apt-get install spamc)"),
]
runner = CliRunner()
README_SOCKET = "/run/spamtl/spamd.sock"
SPAM = make_mail("win the lottery now 7", "claim your prize viagra casino golf hotel", sender="x@cheap-7.example")
HAM = make_mail("project meeting 7 alice", "agenda minutes budget review notes", sender="colleague@alice.example")


@pytest.fixture(scope="module")
def place() -> Iterator[dict[str, object]]:
    """A trained store (alice) and a folder other accounts may enter, for sockets and a spamtl they can run."""
    tmp = shared_tempdir("spamtl-socket-")
    try:
        db_path = tmp / "store.sqlite3"
        db = f"sqlite:///{db_path}"
        assert runner.invoke(app, ["init", "--db", db]).exit_code == 0
        spam = write_mbox(tmp / "spam.mbox", _mails(1, "spam", 25))
        ham = write_mbox(tmp / "ham.mbox", _mails(3, "alice", 30))
        assert runner.invoke(app, ["import", "alice", str(spam), "-l", "spam", "--db", db]).exit_code == 0
        assert runner.invoke(app, ["import", "alice", str(ham), "-l", "ham", "--db", db]).exit_code == 0
        trained = runner.invoke(app, ["train", "--db", db], env={"SPAMTL_TARGET_HAM_FPR": "0"})
        assert trained.exit_code == 0, trained.output
        (tmp / "bin").mkdir(mode=0o755)
        spamtl = spamtl_for("mail", tmp / "bin")
        if spamtl is None:
            pytest.skip("the mail account cannot run this checkout's spamtl (nor a system Python of this version)")
        yield {"tmp": tmp, "db": db, "db_path": db_path, "spamtl": str(spamtl)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(place: dict[str, object]) -> Iterator[SocketDaemon]:
    """The deployed daemon: group mail, mode 0660, TELL on, the mail account trusted.  Its store waits at
    most 1 s for a lock, so that a store held by someone else is a quick failure here."""
    tmp = Path(str(place["tmp"]))
    d = SocketDaemon(str(place["db"]), tmp / "spamd.sock", "--socket-group", "mail", "--socket-mode", "0660",
                     "--allow-tell", "--trust", "mail", env={"SPAMTL_BUSY_TIMEOUT": "1"})
    yield d
    assert d.stop() == 0, d.log_text()[-2000:]


def labels(db_path: object, user: str = "alice") -> list[str]:
    con = sqlite3.connect(str(db_path))
    try:
        return [r[0] for r in con.execute(
            "SELECT l.label FROM labels l JOIN users u ON u.id = l.user_id "
            "WHERE u.name = ? AND l.source = 'feedback' ORDER BY l.id", (user,))]
    finally:
        con.close()


def readme_recipe(title: str) -> list[str]:
    """The lines of docs/delivery.md's fenced block that follows the line starting with ``title``."""
    text = (REPO / "docs" / "delivery.md").read_text()
    match = re.search(rf"^{re.escape(title)}[^\n]*\n\n```\n(.*?)```", text, re.M | re.S)
    assert match is not None, f"docs/delivery.md has no recipe block after {title!r}"
    return match.group(1).splitlines()


def header_block(message: bytes) -> str:
    return re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0].decode()


# ------------------------------------------------------------------ delivery: spamc PROCESS over the socket
def test_the_mail_account_gets_the_scanned_message_back(daemon: SocketDaemon) -> None:
    out = as_account("mail", [SPAMC or "spamc", "-U", str(daemon.socket_path), "-u", "alice"], SPAM)
    assert out.returncode == 0, out.stderr
    head = header_block(out.stdout)
    assert re.search(r"^X-Spamtl-Status: spam, probability=", head, re.M) and "\nX-Spam-Flag: YES" in head
    assert out.stdout.endswith(SPAM)
    ham = as_account("mail", [SPAMC or "spamc", "-U", str(daemon.socket_path), "-u", "alice"], HAM)
    assert re.search(r"^X-Spamtl-Status: ham, ", header_block(ham.stdout), re.M)
    assert "X-Spam-Flag" not in header_block(ham.stdout)


@pytest.mark.parametrize(("title", "command", "condition"), [
    ("procmail (`~/.procmailrc`)", r"^\| (.+)$", r"^\* (.+)$"),
    ("maildrop (`~/.mailfilter`)", r'^xfilter "(.+)"$', r"^if \(/(.+)/\)$"),
], ids=["procmail", "maildrop"])
def test_readme_per_user_recipes_go_through_the_daemon_and_match_its_headers(
        daemon: SocketDaemon, title: str, command: str, condition: str) -> None:
    """The README's recipe filters through the socket (no store access) and its rule files spam, not ham."""
    lines = readme_recipe(title)
    filters = [m.group(1) for line in lines if (m := re.match(command, line))]
    rules = [m.group(1) for line in lines if (m := re.match(condition, line))]
    assert len(filters) == 1 and len(rules) == 1, lines
    assert README_SOCKET in filters[0] and "spamtl classify" not in filters[0]
    # The recipe as the user runs it; procmail and maildrop match headers case-insensitively.
    shell = filters[0].replace(README_SOCKET, str(daemon.socket_path))
    for raw, is_spam in ((SPAM, True), (HAM, False)):
        out = as_account("mail", ["sh", "-c", shell], raw, env={"LOGNAME": "alice"})
        assert out.returncode == 0 and out.stdout.endswith(raw), out.stderr
        assert "X-Spamtl-Status: " in header_block(out.stdout)
        assert bool(re.search(rules[0], header_block(out.stdout), re.M | re.I)) is is_spam


def test_an_account_outside_the_socket_group_cannot_connect_and_mail_passes_unchanged(daemon: SocketDaemon) -> None:
    out = as_account("nobody", [SPAMC or "spamc", "-U", str(daemon.socket_path), "-u", "alice"], SPAM)
    # spamc without -x: the connection is refused by the socket's mode, and the mail passes through unchanged
    assert (out.returncode, out.stdout) == (0, SPAM), out.stderr


def test_the_store_is_not_readable_by_other_accounts(daemon: SocketDaemon, place: dict[str, object]) -> None:
    # `spamtl init` creates the store 0600, and SQLite gives its -wal and -shm files the same mode.
    db_path = Path(str(place["db_path"]))
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    for path in files:
        assert as_account("nobody", ["test", "-r", str(path)]).returncode != 0, f"{path} is readable by nobody"


# ------------------------------------------------------------------ learning: spamtl tell as the mail account
def tell(place: dict[str, object], socket_path: Path, label: str, raw: bytes,  # type: ignore[no-untyped-def]
         account: str = "mail"):
    return as_account(account, [str(place["spamtl"]), "tell", "--socket", str(socket_path), "--user", "alice",
                                f"--{label}"], raw)


def one_error_line(out) -> str:  # type: ignore[no-untyped-def]
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and out.stdout == b"", out
    return str(lines[0])


def test_tell_as_the_trusted_mail_account_stores_the_label(daemon: SocketDaemon, place: dict[str, object]) -> None:
    raw = make_mail("garden newsletter 31", "roses tulips weekly digest", sender="news@garden.example")
    before = labels(place["db_path"])
    out = tell(place, daemon.socket_path, "spam", raw)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    assert labels(place["db_path"]) == [*before, "spam"]
    out = tell(place, daemon.socket_path, "ham", raw)
    assert out.returncode == 0 and labels(place["db_path"])[-1] == "ham"


def test_tell_through_a_socket_the_account_may_not_open_is_77(daemon: SocketDaemon, place: dict[str, object]) -> None:
    out = tell(place, daemon.socket_path, "spam", SPAM, account="nobody")
    assert out.returncode == 77
    assert one_error_line(out).startswith(f"Error: cannot connect to spamtl serve at {daemon.socket_path}: "
                                          "Permission denied")


def test_tell_when_the_store_fails_is_75_and_stores_nothing(daemon: SocketDaemon, place: dict[str, object]) -> None:
    """The red-team case (a full disk answered 75, spamc said "already learned", exit 0): here a store
    held locked by another writer; the answer is 75 and spamtl tell says so."""
    before = labels(place["db_path"])
    blocker = sqlite3.connect(str(place["db_path"]), timeout=10, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        out = tell(place, daemon.socket_path, "spam", make_mail("locked 1", "while the store is locked"))
    finally:
        blocker.rollback()
        blocker.close()
    assert out.returncode == 75, out
    assert one_error_line(out).startswith("Error: spamtl serve answered 75 (EX_TEMPFAIL): ")
    assert labels(place["db_path"]) == before


def test_tell_of_a_message_over_the_daemons_limit_is_65(daemon: SocketDaemon, place: dict[str, object]) -> None:
    big = make_mail("large", "x" * 600_000)  # max_message_bytes is 512,000 by default
    out = tell(place, daemon.socket_path, "spam", big)
    assert out.returncode == 65
    assert one_error_line(out) == ("Error: spamtl serve answered 65 (EX_DATAERR): message larger than 512000 bytes; "
                                   "not scanned")


def test_tell_not_enabled_not_trusted_and_daemon_down(place: dict[str, object]) -> None:
    tmp = Path(str(place["tmp"]))
    before = labels(place["db_path"])
    raw = make_mail("garden newsletter 32", "roses tulips weekly digest", sender="news@garden.example")
    no_tell = SocketDaemon(str(place["db"]), tmp / "no-tell.sock", "--socket-group", "mail", "--trust", "mail")
    try:
        out = tell(place, no_tell.socket_path, "spam", raw)
        assert out.returncode == 77
        assert one_error_line(out) == ("Error: spamtl serve answered 77 (EX_NOPERM): TELL is not enabled on this "
                                       "daemon (serve_allow_tell / serve --allow-tell)")
    finally:
        assert no_tell.stop() == 0
    out = tell(place, no_tell.socket_path, "spam", raw)  # stopped: the socket is gone
    assert out.returncode == 69
    assert one_error_line(out) == (f"Error: cannot connect to spamtl serve at {no_tell.socket_path}: "
                                   "No such file or directory (is it running?)")
    untrusted = SocketDaemon(str(place["db"]), tmp / "untrusted.sock", "--socket-group", "mail", "--allow-tell")
    try:
        out = tell(place, untrusted.socket_path, "spam", raw)
        assert out.returncode == 77
        mail_uid = pwd.getpwnam("mail").pw_uid
        assert one_error_line(out) == (f"Error: spamtl serve answered 77 (EX_NOPERM): uid={mail_uid}(mail) may not "
                                       "teach alice's filter")
    finally:
        assert untrusted.stop() == 0
    assert labels(place["db_path"]) == before
