"""Learning from IMAP Junk folders: a real Dovecot with IMAPSieve pipes moved mail to `spamc -L` -> `spamtl serve`.

The test starts `spamtl serve` and Dovecot on free loopback ports with a
throw-away configuration (the README's recipe: Dovecot's "Antispam with
IMAPSieve" howto), moves a message into Junk with imaplib and checks that the
label is stored and the user's score moved; then moves it out (ham).
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli import app

from .conftest import make_mail, write_mbox

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
SIEVE_PLUGIN = Path("/usr/lib/dovecot/modules/sieve/lib90_sieve_imapsieve_plugin.so")
pytestmark = [
    pytest.mark.skipif(DOVECOT is None, reason="dovecot is not installed (apt-get install dovecot-imapd dovecot-sieve)"),
    pytest.mark.skipif(not SIEVE_PLUGIN.exists(), reason="dovecot-sieve is not installed (apt-get install dovecot-sieve)"),
    pytest.mark.skipif(shutil.which("spamc") is None, reason="spamc is not installed (apt-get install spamc)"),
]
runner = CliRunner()
PASSWORD = "secret"

REPORT_SPAM = """require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
if environment :matches "imap.user" "*" { set "username" "${1}"; }
pipe :copy "spamtl-learn-spam.sh" [ "${username}" ];
"""
REPORT_HAM = """require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
if environment :matches "imap.mailbox" "*" { set "mailbox" "${1}"; }
if string "${mailbox}" "Trash" { stop; }
if environment :matches "imap.user" "*" { set "username" "${1}"; }
pipe :copy "spamtl-learn-ham.sh" [ "${username}" ];
"""
LEARN = """#!/bin/sh
# Dovecot runs this with the moved message on stdin and the IMAP user as $1.
exec {spamc} -p {port} -u "$1" -L {label} >> {log} 2>&1
"""
SPAMC = shutil.which("spamc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, port: int, uid: int, gid: int) -> str:
    # As root Dovecot drops to its own users; anyone else runs every process as themselves.
    me = pwd.getpwuid(os.getuid()).pw_name
    internal = "dovecot" if os.getuid() == 0 and _has_user("dovecot") else me
    login = "dovenull" if os.getuid() == 0 and _has_user("dovenull") else internal
    return f"""
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 500)}

first_valid_gid = 0
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {tmp}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {tmp}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_sieve
}}
plugin {{
  sieve_plugins = sieve_imapsieve sieve_extprograms
  imapsieve_mailbox1_name = Junk
  imapsieve_mailbox1_causes = COPY
  imapsieve_mailbox1_before = file:{tmp}/sieve/report-spam.sieve
  imapsieve_mailbox2_name = *
  imapsieve_mailbox2_from = Junk
  imapsieve_mailbox2_causes = COPY
  imapsieve_mailbox2_before = file:{tmp}/sieve/report-ham.sieve
  sieve_pipe_bin_dir = {tmp}/sieve
  sieve_global_extensions = +vnd.dovecot.pipe +vnd.dovecot.environment
}}
"""


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def mailserver() -> Iterator[dict[str, object]]:
    # Not under pytest's tmp_path: Dovecot's own users must reach the files (pytest's folders are 0700).
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-dovecot-"))
    tmp.chmod(0o755)
    db_path = tmp / "spamtl.sqlite3"
    db = f"sqlite:///{db_path}"
    assert runner.invoke(app, ["init", "--db", db]).exit_code == 0
    spam = [make_mail(f"win money {i}", f"cheap pills casino prize {i}", sender=f"p{i}@spam.example") for i in range(20)]
    ham = [make_mail(f"meeting {i}", f"agenda budget minutes {i}", sender="boss@work.example") for i in range(20)]
    for label, mails in (("spam", spam), ("ham", ham)):
        box = write_mbox(tmp / f"{label}.mbox", mails)
        assert runner.invoke(app, ["import", "alice", str(box), "-l", label, "--db", db]).exit_code == 0
    assert runner.invoke(app, ["train", "--db", db]).exit_code == 0
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # Dovecot refuses mail user root: the mail user is nobody
        uid, gid = pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid
    daemon = subprocess.Popen([sys.executable, "-m", "spamtl", "serve", "--db", db, "--port", "0", "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=(tmp / "serve.log").open("wb"))
    assert daemon.stdout is not None
    spamd_port = int(daemon.stdout.readline().decode().rsplit(":", 1)[1].split()[0])
    home = tmp / "home" / "alice"
    (home / "Maildir").mkdir(parents=True)
    (tmp / "sieve").mkdir()
    (tmp / "sieve" / "report-spam.sieve").write_text(REPORT_SPAM)
    (tmp / "sieve" / "report-ham.sieve").write_text(REPORT_HAM)
    for label in ("spam", "ham"):
        script = tmp / "sieve" / f"spamtl-learn-{label}.sh"
        script.write_text(LEARN.format(spamc=SPAMC, port=spamd_port, label=label, log=tmp / "learn.log"))
        script.chmod(0o755)
    (tmp / "learn.log").touch()
    (tmp / "passwd").write_text(f"alice:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}::\n")
    for path in [home.parent, home, home / "Maildir", tmp / "learn.log"]:
        os.chown(path, uid, gid)
    port = _free_port()
    conf = tmp / "dovecot.conf"
    conf.write_text(_config(tmp, port, uid, gid))
    (tmp / "run").mkdir()
    (tmp / "state").mkdir()
    assert DOVECOT is not None
    with (tmp / "start.err").open("wb") as err:  # the daemon keeps its stdio: no pipes, or run() waits forever
        started = subprocess.run([DOVECOT, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, timeout=30)
    assert started.returncode == 0, _read(tmp / "start.err") + _read(tmp / "dovecot.log")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("dovecot did not listen: " + _read(tmp / "dovecot.log")) from None
                time.sleep(0.1)
        yield {"db": db, "db_path": db_path, "port": port, "tmp": tmp}
    finally:
        subprocess.run([DOVECOT, "-c", str(conf), "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _score(db: str, raw: bytes) -> float:
    result = runner.invoke(app, ["classify", "alice", "--format", "json", "--db", db], input=raw)
    assert result.exit_code == 0, result.output
    import json

    return float(json.loads(result.stdout.splitlines()[-1])["probability"])


def _labels(db_path: Path) -> list[str]:
    con = sqlite3.connect(db_path)
    try:
        return [r[0] for r in con.execute("SELECT l.label FROM labels l WHERE l.source = 'feedback' ORDER BY l.id")]
    finally:
        con.close()


def _wait_for_labels(server: dict[str, object], n: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _labels(Path(str(server["db_path"])))
        if len(found) >= n:
            return found
        time.sleep(0.2)
    tmp = Path(str(server["tmp"]))
    raise AssertionError(f"no label after 30 s; dovecot log: {_read(tmp / 'dovecot.log')[-2000:]} "
                         f"learn log: {_read(tmp / 'learn.log')[-2000:]}")


def test_moving_into_junk_teaches_spam_and_out_teaches_ham(mailserver: dict[str, object]) -> None:
    db = str(mailserver["db"])
    raw = make_mail("garden newsletter", "roses tulips weekly digest", sender="news@garden.example",
                    message_id="garden-1@example").replace(b"\n", b"\r\n")
    before = _score(db, raw)
    imap = imaplib.IMAP4("127.0.0.1", int(str(mailserver["port"])))
    try:
        try:
            imap.login("alice", PASSWORD)
        except imaplib.IMAP4.error as exc:
            raise AssertionError(f"{exc}: {_read(Path(str(mailserver['tmp'])) / 'dovecot.log')[-3000:]}") from None
        assert imap.append("INBOX", None, None, raw)[0] == "OK"
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", "ALL")
        uid = data[0].split()[-1].decode()
        typ, _ = imap.uid("MOVE", uid, "Junk")
        assert typ == "OK"
        assert _wait_for_labels(mailserver, 1) == ["spam"]
        after_spam = _score(db, raw)
        assert after_spam > before
        imap.select("Junk")
        typ, data = imap.uid("SEARCH", "ALL")
        uid = data[0].split()[-1].decode()
        assert imap.uid("MOVE", uid, "INBOX")[0] == "OK"
        assert _wait_for_labels(mailserver, 2) == ["spam", "ham"]
        assert _score(db, raw) < after_spam
    finally:
        imap.logout()
