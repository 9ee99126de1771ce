"""Learning from IMAP Junk folders, as deployed: a real Dovecot runs contrib/dovecot's IMAPSieve recipe.

The test uses exactly the files in ``contrib/dovecot/`` (only their paths rewritten to a throw-away
folder), compiles the sieve scripts with ``sievec`` as docs/delivery.md says, and runs Dovecot with its
mail processes (and so the sieve pipes) as the unprivileged ``mail`` account (mail_uid/mail_gid).
``spamtl serve --socket ... --socket-group mail --allow-tell --trust mail`` is started by the test, as
root: the daemon, the only one that opens the store.  Moving a message into Junk with imaplib stores a
spam label and moves the user's score; moving it out stores ham.  When the daemon is down, or refuses
TELL, the move still succeeds, no label is stored, and Dovecot's log says the pipe failed.
"""

from __future__ import annotations

import imaplib
import json
import pwd
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..accounts import SocketDaemon, shared_tempdir, spamtl_for, why_not_as_accounts
from ..conftest import make_mail, write_mbox
from ..dovecot import DOVECOT, PASSWORD, SIEVEC, Dovecot

SIEVE_PLUGIN = Path("/usr/lib/dovecot/modules/sieve/lib90_sieve_imapsieve_plugin.so")
_why_not = why_not_as_accounts("mail", "dovecot")
pytestmark = [
    pytest.mark.skipif(DOVECOT is None,
                       reason="dovecot is not installed (apt-get install dovecot-imapd dovecot-sieve)"),
    pytest.mark.skipif(not SIEVE_PLUGIN.exists() or SIEVEC is None,
                       reason="dovecot-sieve (IMAPSieve, sievec) is not installed (apt-get install dovecot-sieve)"),
    pytest.mark.skipif(_why_not is not None, reason=f"Dovecot's pipes run as the mail account: {_why_not}"),
]
runner = CliRunner()


@pytest.fixture(scope="module")
def mailserver() -> Iterator[dict[str, object]]:
    # Not under pytest's tmp_path: the mail and dovecot accounts must reach these files (pytest's are 0700).
    tmp = shared_tempdir("spamtl-dovecot-")
    server: dict[str, object] = {}
    try:
        db_path = tmp / "spamtl.sqlite3"
        db = f"sqlite:///{db_path}"
        assert runner.invoke(app, ["init", "--db", db]).exit_code == 0
        spam = [make_mail(f"win money {i}", f"cheap pills casino prize {i}", sender=f"p{i}@spam.example")
                for i in range(20)]
        ham = [make_mail(f"meeting {i}", f"agenda budget minutes {i}", sender="boss@work.example") for i in range(20)]
        for label, mails in (("spam", spam), ("ham", ham)):
            box = write_mbox(tmp / f"{label}.mbox", mails)
            assert runner.invoke(app, ["import", "alice", str(box), "-l", label, "--db", db]).exit_code == 0
        assert runner.invoke(app, ["train", "--db", db]).exit_code == 0
        (tmp / "bin").mkdir(mode=0o755)
        spamtl = spamtl_for("mail", tmp / "bin")
        if spamtl is None:
            pytest.skip("the mail account cannot run this checkout's spamtl (nor a system Python of this version)")
        socket_path = tmp / "spamd.sock"

        def start_daemon(*args: str) -> SocketDaemon:
            daemon = SocketDaemon(db, socket_path, "--socket-group", "mail", *args)
            server["daemon"] = daemon
            return daemon

        start_daemon("--allow-tell", "--trust", "mail")
        with Dovecot(tmp, {"alice": tmp / "home" / "alice"}, spamtl=spamtl, socket_path=socket_path) as dovecot:
            server.update(db=db, db_path=db_path, dovecot=dovecot, start_daemon=start_daemon)
            yield server
    finally:
        daemon = server.get("daemon")
        if isinstance(daemon, SocketDaemon):
            daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _score(db: str, raw: bytes) -> float:
    result = runner.invoke(app, ["classify", "alice", "--format", "json", "--db", db], input=raw)
    assert result.exit_code == 0, result.output
    return float(json.loads(result.stdout.splitlines()[-1])["probability"])


def _labels(db_path: Path) -> list[str]:
    con = sqlite3.connect(db_path)
    try:
        return [r[0] for r in con.execute("SELECT l.label FROM labels l WHERE l.source = 'feedback' ORDER BY l.id")]
    finally:
        con.close()


def _wait_for(what: str, found: Callable[[], object], server: dict[str, object], within: float = 30) -> object:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {within} s; dovecot log: {_log(server)[-3000:]}")


def _move(server: dict[str, object], source: str, target: str, raw: bytes | None = None) -> None:
    """MOVE the newest message of ``source`` to ``target`` as alice, over IMAP (APPEND ``raw`` to ``source`` first)."""
    imap = imaplib.IMAP4("127.0.0.1", _dovecot(server).imap_port)
    try:
        try:
            imap.login("alice", PASSWORD)
        except imaplib.IMAP4.error as exc:
            raise AssertionError(f"{exc}: {_log(server)[-3000:]}") from None
        if raw is not None:
            assert imap.append(source, None, None, raw)[0] == "OK"
        imap.select(source)
        _, data = imap.uid("SEARCH", "ALL")
        uid = data[0].split()[-1].decode()
        assert imap.uid("MOVE", uid, target)[0] == "OK"  # the move itself never fails because learning did
    finally:
        imap.logout()


def _dovecot(server: dict[str, object]) -> Dovecot:
    dovecot = server["dovecot"]
    assert isinstance(dovecot, Dovecot)
    return dovecot


def _log(server: dict[str, object]) -> str:
    return _dovecot(server).log_text()


def test_moving_into_junk_teaches_spam_and_out_teaches_ham(mailserver: dict[str, object]) -> None:
    db, db_path = str(mailserver["db"]), Path(str(mailserver["db_path"]))
    raw = make_mail("garden newsletter", "roses tulips weekly digest", sender="news@garden.example",
                    message_id="garden-1@example").replace(b"\n", b"\r\n")
    log_before = len(_log(mailserver))
    before = _score(db, raw)
    start = len(_labels(db_path))
    _move(mailserver, "INBOX", "Junk", raw=raw)
    _wait_for("spam label", lambda: _labels(db_path)[start:] == ["spam"], mailserver)
    after_spam = _score(db, raw)
    assert after_spam > before
    _move(mailserver, "Junk", "INBOX")
    _wait_for("ham label", lambda: _labels(db_path)[start:] == ["spam", "ham"], mailserver)
    assert _score(db, raw) < after_spam
    _move(mailserver, "INBOX", "Junk")
    _wait_for("spam label again", lambda: _labels(db_path)[start:] == ["spam", "ham", "spam"], mailserver)
    _move(mailserver, "Junk", "Trash")  # out of Junk into Trash teaches nothing (report-ham.sieve stops)
    _move(mailserver, "INBOX", "Junk", raw=raw.replace(b"garden-1@", b"garden-2@"))  # the next teach: a marker
    _wait_for("spam label of the marker", lambda: len(_labels(db_path)) - start == 4, mailserver)
    assert _labels(db_path)[start:] == ["spam", "ham", "spam", "spam"]
    # Compiled in advance (sievec), nothing to complain about: no error or warning in Dovecot's log.
    assert not re.findall(r"^.*(?:Error|Warning|Fatal|Panic): .*$", _log(mailserver)[log_before:], re.M)


@pytest.mark.parametrize(("daemon_args", "code", "reason"), [
    (None, 69, "cannot connect to spamtl serve at {socket}: No such file or directory (is it running?)"),
    (("--trust", "mail"), 77, "spamtl serve answered 77 (EX_NOPERM): TELL is not enabled on this daemon"),
    (("--allow-tell",), 77, "spamtl serve answered 77 (EX_NOPERM): uid={mail_uid}(mail) may not teach alice's filter"),
], ids=["daemon-down", "tell-off", "not-trusted"])
def test_a_failed_teach_is_in_dovecots_log_never_silent(mailserver: dict[str, object],
                                                        daemon_args: tuple[str, ...] | None, code: int,
                                                        reason: str) -> None:
    """The move succeeds, nothing is stored, and Dovecot's log has spamtl tell's error line, the learn
    script's exit code and the failed sieve pipe."""
    db_path = Path(str(mailserver["db_path"]))
    start_daemon = mailserver["start_daemon"]
    assert callable(start_daemon)
    daemon = mailserver["daemon"]
    assert isinstance(daemon, SocketDaemon)
    assert daemon.stop() == 0
    try:
        if daemon_args is not None:
            start_daemon(*daemon_args)
        labels_before = _labels(db_path)
        log_before = len(_log(mailserver))
        raw = make_mail(f"lost correction {code} {daemon_args}", "a message the user calls spam",
                        message_id=f"lost-{len(labels_before)}-{code}@example").replace(b"\n", b"\r\n")
        _move(mailserver, "INBOX", "Junk", raw=raw)
        failed = re.compile(r"^.*: Error: sieve: failed to execute to program `spamtl-learn\.sh'.*$", re.M)
        _wait_for("failed pipe in the log", lambda: failed.findall(_log(mailserver)[log_before:]), mailserver)
        log = _log(mailserver)[log_before:]
        assert re.search(rf"program exec:\S*/spamtl-learn\.sh \(\d+\): Terminated with non-zero exit code {code}$",
                         log, re.M), log
        said = reason.format(socket=daemon.socket_path, mail_uid=pwd.getpwnam("mail").pw_uid)
        assert re.search(rf": Error: Error: {re.escape(said)}", log), log  # spamtl tell's own line
        assert _labels(db_path) == labels_before
    finally:
        current = mailserver["daemon"]
        assert isinstance(current, SocketDaemon)
        current.stop()
        start_daemon("--allow-tell", "--trust", "mail")
