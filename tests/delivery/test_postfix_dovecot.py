"""Mail delivery end to end with the real parts, as deployed: SMTP -> Postfix -> spamtl -> Dovecot -> IMAP -> labels.

The test starts, on loopback with throw-away configurations, what a mail server runs, and stops it all
however the tests end:

- ``spamtl serve`` (``--socket-group mail --allow-tell --trust mail``, and ``--trust spamass-milter``)
  on a trained store;
- Dovecot, its mail processes as the unprivileged ``mail`` account: LMTP delivery to the virtual domain
  example.test with ``contrib/dovecot/91-spamtl-junk.conf`` and ``spamtl-junk.sieve`` (``X-Spam-Flag:
  YES`` into Junk), IMAP with the IMAPSieve recipe (``90-spamtl-imapsieve.conf``: moves teach through
  ``spamtl tell``);
- a Postfix instance of its own (``postfix -c DIR start``, stopped with ``postfix -c DIR stop``): its
  config, queue and data directories and log file in a temp folder, ``inet_interfaces = loopback-only``,
  smtpd on free 127.0.0.1 ports, no transport that sends mail out, ``virtual_transport`` LMTP to the
  test's Dovecot.  Its main.cf and master.cf end with ``contrib/postfix/main.cf`` and
  ``contrib/postfix/master.cf`` as they are, and the pipe runs ``contrib/postfix/spamtl-filter.sh``;
- where Debian's ``spamass-milter`` is installed, the milter path too: main.cf ends with
  ``contrib/postfix/main.cf.milter`` as it is (``smtpd_milters = unix:/spamass/spamass.sock``, a path
  in the chroot of Debian's smtpd, the instance's queue directory), for a chrooted smtpd of its own;
  the milter is started as Debian's service starts it from ``contrib/postfix/spamass-milter.default``,
  as the ``spamass-milter`` account with group ``mail``, a second one with ``-r 5`` added behind one
  more smtpd, and one more smtpd whose milter socket nothing listens on.  Without spamass-milter the
  milter tests are skipped, saying why.

Every contrib file is used as shipped; only the installed paths, the ports and the store owner's
account are rewritten.  Each content filter test runs twice: through the daemon (the ``spamtl``
transport: ``spamc``, as the mail account, which cannot open the store) and through ``spamtl classify
--filter`` (the ``spamtl-classify`` transport, as the store's owner), each on users of its own; the
milter tests have users of their own too.  Mail goes in with smtplib, the delivered copies are read
from the users' Maildirs, and moved with imaplib.

Two things only a test instance needs.  The store's owner, ``spamtl`` in contrib, is ``nobody`` here.
And re-injection: Postfix's set-gid ``postdrop`` trusts a non-default configuration directory
(sendmail's ``MAIL_CONFIG``, which the pipe passes on) from an unprivileged account only when the
system's /etc/postfix/main.cf lists it (``alternate_config_directories``), which a test must not
touch.  So this instance has a ``command_directory`` of its own, where sendmail finds a plain copy of
``postdrop``, and its maildrop and public folders open to every account, as the set-gid program
makes them for a system instance.  On a real server ``/usr/sbin/sendmail`` needs neither.
"""

from __future__ import annotations

import email.utils
import imaplib
import json
import os
import pwd
import re
import shutil
import smtplib
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail.headers import message_identity

from ..accounts import SocketDaemon, as_account, has_account, shared_tempdir, spamtl_for, why_not_as_accounts
from ..cli.test_loop import _mails
from ..conftest import free_port, make_mail, write_mbox
from ..dovecot import (
    CONTRIB,
    DOVECOT,
    INSTALLED_SOCKET,
    INSTALLED_SPAMTL,
    PASSWORD,
    SIEVEC,
    Dovecot,
    install,
    listening,
    program,
    quietly,
    read_text,
)

POSTFIX = program("postfix", "/usr/sbin/postfix")
POSTQUEUE = program("postqueue", "/usr/sbin/postqueue")
SPAMC = program("spamc", "/usr/bin/spamc")
SPAMASS_MILTER = program("spamass-milter", "/usr/sbin/spamass-milter")
MILTER_ACCOUNT = "spamass-milter"  # Debian's: the service runs the milter as it (RUNAS)
DOVECOT_LMTP = Path("/usr/lib/dovecot/lmtp")
SIEVE_PLUGINS = [Path("/usr/lib/dovecot/modules/lib90_sieve_plugin.so"),
                 Path("/usr/lib/dovecot/modules/sieve/lib90_sieve_imapsieve_plugin.so")]
STORE_OWNER = "nobody"  # stands in for contrib's `spamtl` account: the one that may open the store
_why_not = why_not_as_accounts("mail", STORE_OWNER, "postfix", "dovecot")
pytestmark = [
    pytest.mark.skipif(POSTFIX is None or POSTQUEUE is None,
                       reason="postfix is not installed (apt-get install postfix)"),
    pytest.mark.skipif(DOVECOT is None or not DOVECOT_LMTP.exists(),
                       reason="dovecot with LMTP is not installed (apt-get install dovecot-imapd dovecot-lmtpd)"),
    pytest.mark.skipif(SIEVEC is None or not all(p.exists() for p in SIEVE_PLUGINS),
                       reason="dovecot-sieve (Sieve, IMAPSieve, sievec) is not installed "
                              "(apt-get install dovecot-sieve)"),
    pytest.mark.skipif(SPAMC is None, reason="spamc is not installed (apt-get install spamc)"),
    pytest.mark.skipif(_why_not is not None, reason=f"Postfix's pipes and Dovecot run as other accounts: {_why_not}"),
    pytest.mark.sqlite_only(reason="the filter pipe runs as the owner of the store's file; the mail system is "
                                   "under test here, not the store"),
    pytest.mark.slow,
]
runner = CliRunner()
DOMAIN = "example.test"
SENDER = "news@garden.example"
# Per path, two users: the first reads the garden newsletter (ham), the second calls it spam.
USERS = {"spamc": ("alice", "bob"), "classify": ("carol", "dave")}  # the content filter's transports
MILTER_USERS = ("erin", "frank")  # smtpd_milters with spamass-milter
PAIRS = [*USERS.values(), MILTER_USERS]
WAIT = 30.0  # seconds for a delivery or a label; each takes a second or two

# Where contrib/postfix says things are installed, and so what the test rewrites (Dovecot's: tests/dovecot.py).
INSTALLED_FILTER = "/usr/local/bin/spamtl-filter.sh"
INSTALLED_STORE = "sqlite:////var/lib/spamtl/spamtl.sqlite3"
INSTALLED_MILTER_SOCKET = "/var/spool/postfix/spamass/spamass.sock"  # contrib's SOCKET, in Postfix's chroot


def _why_no_milter() -> str | None:
    """Why the milter path cannot run here (None: it can)."""
    if SPAMASS_MILTER is None:
        return "spamass-milter is not installed (apt-get install spamass-milter)"
    if not has_account(MILTER_ACCOUNT):
        return f"spamass-milter is installed but there is no {MILTER_ACCOUNT} account to run it as"
    return None


def _address(user: str) -> str:
    return f"{user}@{DOMAIN}"


def _train(folder: Path) -> tuple[str, Path]:
    """A trained store at folder/spamtl.sqlite3 for every pair of users (newsletters ham for the first of
    each pair, spam for the second); per-user cutoffs off, so every user keeps the global 0.90 / 0.50."""
    db_path = folder / "spamtl.sqlite3"
    db = f"sqlite:///{db_path}"
    assert runner.invoke(app, ["init", "--db", db]).exit_code == 0
    for reads, refuses in PAIRS:
        for user in (reads, refuses):
            newsletters = _mails(2, "newsletter", 15)
            spam = _mails(1, "spam", 25) + (newsletters if user == refuses else [])
            ham = _mails(3, user, 30) + (newsletters if user == reads else [])
            for label, mails in (("spam", spam), ("ham", ham)):
                box = write_mbox(folder / f"{user}-{label}.mbox", mails)
                result = runner.invoke(app, ["import", _address(user), str(box), "-l", label, "--db", db])
                assert result.exit_code == 0, result.output
                box.unlink()
    result = runner.invoke(app, ["train", "--db", db], env={"SPAMTL_TARGET_HAM_FPR": "0"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return db, db_path


# ------------------------------------------------------------------ Postfix
def _postfix_main_cf(tmp: Path, lmtp_port: int) -> str:
    """The test instance's own main.cf (contrib/postfix/main.cf is appended to it)."""
    users = ", ".join(f"{_address(u)}={u}" for pair in PAIRS for u in pair)
    return f"""# A throw-away instance: everything under {tmp}, loopback only, no transport that sends mail out.
compatibility_level = 3.6
queue_directory = {tmp}/queue
data_directory = {tmp}/data
command_directory = {tmp}/sbin
maillog_file = {tmp}/maillog
maillog_file_prefixes = {tmp}
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
recipient_delimiter = +
myorigin = $mydomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost =
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = inline:{{ {users} }}
virtual_transport = lmtp:inet:[127.0.0.1]:{lmtp_port}
local_transport = error:this test's Postfix delivers nothing locally
relay_transport = error:this test's Postfix sends no mail out
default_transport = error:this test's Postfix sends no mail out

"""


# The services Postfix itself needs (no smtp client: nothing can leave), then contrib's master.cf.
POSTFIX_MASTER_CF = """# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd

"""
SMTP_SERVICE = re.compile(r"^smtp(\s+inet\s.*\n(?:[ \t]+\S.*\n)*)", re.M)


def _postfix_master_cf(contrib: str, ports: dict[str, int]) -> str:
    """contrib's master.cf with its smtp service on the spamc path's port, and the same service again on
    the classify path's port with ``content_filter=spamtl-classify:dummy`` (as its comment says).

    With a ``milter`` port (main.cf then has contrib's smtpd_milters), a third smtpd there as Debian's
    master.cf has it (chrooted: the milter's socket is named inside the chroot), without a content
    filter; a fourth on the ``milter-reject`` port whose smtpd_milters is the milter run with ``-r 5``
    (:data:`REJECT_SOCKET`), and a fifth on the ``milter-down`` port whose milter's socket nothing
    listens on (:data:`ABSENT_SOCKET`).  The content filter's two get ``-o smtpd_milters=``: a server
    runs one path or the other."""
    match = SMTP_SERVICE.search(contrib)
    assert match is not None, "contrib/postfix/master.cf has no `smtp inet ... smtpd` service"
    service = match.group(1)
    hook = "content_filter=spamtl:dummy"
    assert hook in service, f"contrib/postfix/master.cf's smtp service no longer says {hook}"
    milter = ""
    if "milter" in ports:
        service += "  -o smtpd_milters=\n"
        milter = f"127.0.0.1:{ports['milter']} inet  n       -       y       -       -       smtpd\n"
        for port, socket in (("milter-reject", REJECT_SOCKET), ("milter-down", ABSENT_SOCKET)):
            milter += (f"127.0.0.1:{ports[port]} inet  n       -       y       -       -       smtpd\n"
                       f"  -o smtpd_milters=unix:/spamass/{socket}\n")
    classify = service.replace(hook, "content_filter=spamtl-classify:dummy")
    return (contrib[:match.start()] + f"127.0.0.1:{ports['spamc']}{service}"
            + f"127.0.0.1:{ports['classify']}{classify}" + milter + contrib[match.end():])


def _command_directory(sbin: Path) -> None:
    """Postfix's commands for the test instance: the system's, but a plain copy of postdrop (see above)."""
    sbin.mkdir(mode=0o755)
    for command in [*Path("/usr/sbin").glob("post*"), Path("/usr/sbin/sendmail")]:
        (sbin / command.name).symlink_to(command)
    (sbin / "postdrop").unlink()
    shutil.copy(Path("/usr/sbin/postdrop"), sbin / "postdrop")  # shutil.copy keeps no set-gid bit
    (sbin / "postdrop").chmod(0o755)


@dataclass
class MailSystem:
    tmp: Path
    db: str
    db_path: Path
    daemon: SocketDaemon
    dovecot: Dovecot
    smtp_ports: dict[str, int]
    postfix_dir: Path
    milters: list[Milter]  # contrib's and the -r 5 one; none where spamass-milter cannot run (why_no_milter)
    why_no_milter: str | None

    def postfix_log(self) -> str:
        return read_text(self.postfix_dir / "maillog")

    def dovecot_log(self) -> str:
        return self.dovecot.log_text()

    def logs(self) -> str:
        queue = subprocess.run([POSTQUEUE or "postqueue", "-c", str(self.postfix_dir / "conf"), "-p"],
                               capture_output=True, text=True, timeout=30).stdout
        milter = "".join(f"\n--- spamass-milter -p {m.socket.name}:\n{m.log_text()[-1000:]}" for m in self.milters)
        return (f"\n--- postfix queue:\n{queue}\n--- postfix log:\n{self.postfix_log()[-4000:]}"
                f"\n--- dovecot log:\n{self.dovecot_log()[-3000:]}\n--- daemon log:\n{self.daemon.log_text()[-2000:]}"
                + milter)

    def flush(self) -> None:
        subprocess.run([POSTQUEUE or "postqueue", "-c", str(self.postfix_dir / "conf"), "-f"],
                       capture_output=True, timeout=30)

    def wait(self, what: str, found: Callable[[], object], within: float = WAIT) -> object:
        """Poll ``found`` until it is true; Postfix's queue is flushed every few seconds meanwhile."""
        deadline = time.monotonic() + within
        flushed = time.monotonic()
        while True:
            if value := found():
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within:.0f} s{self.logs()}")
            if time.monotonic() - flushed > 5:
                self.flush()
                flushed = time.monotonic()
            time.sleep(0.1)

    def send(self, path: str, raw: bytes, recipients: list[str], sender: str = SENDER) -> None:
        """One SMTP transaction into the path's smtpd (an empty ``sender`` is the null sender, a bounce)."""
        with smtplib.SMTP("127.0.0.1", self.smtp_ports[path], timeout=30) as smtp:
            refused = smtp.sendmail(sender, recipients, raw)
        assert refused == {}, refused

    def maildir(self, user: str) -> Path:
        return self.tmp / "home" / user / "Maildir"

    def copies(self, user: str, message_id: str) -> list[tuple[str, bytes]]:
        """(folder, bytes) of each copy of the message in the user's INBOX and Junk."""
        needle = f"message-id: <{message_id}>".encode()
        found = []
        for folder, path in (("INBOX", self.maildir(user)), ("Junk", self.maildir(user) / ".Junk")):
            for sub in ("new", "cur"):
                try:
                    names = os.listdir(path / sub)
                except FileNotFoundError:
                    continue
                for name in names:
                    try:
                        data = (path / sub / name).read_bytes()
                    except FileNotFoundError:  # Dovecot moved it from new to cur meanwhile: seen next time
                        continue
                    if needle in data.lower():
                        found.append((folder, data))
        return found

    def delivered(self, user: str, message_id: str, before: list[tuple[str, bytes]] | None = None) -> tuple[str, bytes]:
        """Wait for a copy of the message for the user that is not one of ``before``: its (folder, bytes)."""
        seen = {data for _, data in before or []}

        def new() -> list[tuple[str, bytes]]:
            return [c for c in self.copies(user, message_id) if c[1] not in seen]

        found = self.wait(f"new copy of <{message_id}> for {user}", new)
        assert isinstance(found, list) and len(found) == 1, f"{len(found)} new copies of <{message_id}> for {user}"
        return found[0]

    def mark(self) -> tuple[int, int]:
        """Where the Postfix and Dovecot logs end now (see :func:`_no_delivery_problems`)."""
        return len(self.postfix_log()), len(self.dovecot_log())

    def imap(self, user: str) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.dovecot.imap_port)
        try:
            imap.login(_address(user), PASSWORD)
        except imaplib.IMAP4.error as exc:
            raise AssertionError(f"{exc}{self.logs()}") from None
        return imap

    def move(self, user: str, message_id: str, source: str, target: str) -> bytes:
        """MOVE the user's newest copy of the message from ``source`` to ``target``; its bytes as IMAP gives them."""
        imap = self.imap(user)
        try:
            assert imap.select(source)[0] == "OK"
            _, data = imap.uid("SEARCH", "HEADER", "Message-ID", f"<{message_id}>")
            uids = data[0].split()
            assert uids, f"no <{message_id}> in {user}'s {source}"
            uid = uids[-1].decode()
            _, fetched = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next(part[1] for part in fetched if isinstance(part, tuple))
            assert imap.uid("MOVE", uid, target)[0] == "OK"
            return bytes(raw)
        finally:
            imap.logout()

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(query, params).fetchall()
        finally:
            con.close()

    def feedback(self, user: str) -> list[tuple[str, str]]:
        """The user's feedback labels, oldest first: (label, sha256 of the labelled message)."""
        rows = self.sql("SELECT l.label, m.sha256 FROM labels l JOIN users u ON u.id = l.user_id "
                        "JOIN messages m ON m.id = l.message_id WHERE u.name = ? AND l.source = 'feedback' "
                        "ORDER BY l.id", _address(user))
        return [(str(label), str(sha)) for label, sha in rows]

    def verdicts(self, user: str, short_id: str) -> list[tuple[str, str]]:
        """The user's classification rows of the message with this id: (verdict, sha256)."""
        rows = self.sql("SELECT c.verdict, m.sha256 FROM classifications c JOIN users u ON u.id = c.user_id "
                        "JOIN messages m ON m.id = c.message_id WHERE u.name = ? AND m.sha256 LIKE ? "
                        "ORDER BY c.id", _address(user), short_id + "%")
        return [(str(verdict), str(sha)) for verdict, sha in rows]


def _start_postfix(tmp: Path, filter_script: Path, ports: dict[str, int], lmtp_port: int) -> None:
    conf = tmp / "conf"
    conf.mkdir(mode=0o755)
    (tmp / "queue").mkdir(mode=0o755)  # postfix start makes its folders in it
    (tmp / "data").mkdir(mode=0o700)
    os.chown(tmp / "data", pwd.getpwnam("postfix").pw_uid, -1)
    _command_directory(tmp / "sbin")
    contrib_main = (CONTRIB / "postfix" / "main.cf").read_text()
    if "milter" in ports:  # as shipped: the socket's path is inside the chroot, the queue directory
        contrib_main += "\n" + (CONTRIB / "postfix" / "main.cf.milter").read_text()
    (conf / "main.cf").write_text(_postfix_main_cf(tmp, lmtp_port) + contrib_main)
    master = install(CONTRIB / "postfix" / "master.cf", conf / "contrib-master.cf",
                     {INSTALLED_FILTER: str(filter_script), "user=spamtl": f"user={STORE_OWNER}"}, 0o644)
    (conf / "master.cf").write_text(POSTFIX_MASTER_CF + _postfix_master_cf(master, ports))
    started = subprocess.run([POSTFIX or "postfix", "-c", str(conf), "start"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr + read_text(tmp / "maillog")
    # What the system's set-gid postdrop would let every account do (see the module's docstring).
    (tmp / "queue" / "maildrop").chmod(0o1733)
    (tmp / "queue" / "public").chmod(0o711)


REJECT_SOCKET = "reject.sock"  # beside contrib's spamass.sock: the milter with -r 5 added
ABSENT_SOCKET = "absent.sock"  # where no milter listens: the milter down


class Milter:
    """Debian's spamass-milter as its service starts it from ``contrib/postfix/spamass-milter.default``
    (installed with only its two socket paths rewritten): the file sourced by ``sh`` as the init script
    does, the milter run as ``spamass-milter -p SOCKET OPTIONS`` (in the foreground, not ``-f``) as the
    ``spamass-milter`` account with group ``mail`` added (``adduser spamass-milter mail``), its socket's
    folder made and given to that account, and SOCKETMODE and SOCKETOWNER set on the socket.  The
    socket is ``spamass/NAME`` in ``queue``, the Postfix instance's queue directory and so its smtpd's
    chroot, where main.cf.milter's ``unix:/spamass/spamass.sock`` names contrib's.  ``options`` go
    before OPTIONS' ``--`` (the milter's own, as the file says)."""

    def __init__(self, folder: Path, queue: Path, daemon_socket: Path, name: str = "spamass.sock",
                 options: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.socket = queue / "spamass" / name
        self.daemon_socket = daemon_socket
        self.options = options
        self.log = folder / f"spamass-milter-{name}.log"  # its usage errors; it logs the rest to syslog
        self.proc: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        return read_text(self.log)

    def start(self) -> None:
        defaults = self.folder / f"spamass-milter-{self.socket.name}.default"
        install(CONTRIB / "postfix" / "spamass-milter.default", defaults,
                {INSTALLED_SOCKET: str(self.daemon_socket), INSTALLED_MILTER_SOCKET: str(self.socket)}, 0o644)
        read = subprocess.run(["sh", "-c", '. "$1" && printf "%s\\0" "$SOCKET" "$SOCKETOWNER" "$SOCKETMODE" $OPTIONS',
                               "sh", str(defaults)], capture_output=True, text=True, timeout=30)
        assert read.returncode == 0, read.stderr
        socket, owner, mode, *options = read.stdout.split("\0")[:-1]
        assert socket == str(self.socket) and "--" in options, (socket, options)
        options[options.index("--"):options.index("--")] = self.options
        account = pwd.getpwnam(MILTER_ACCOUNT)
        self.socket.parent.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.socket.parent, account.pw_uid, account.pw_gid)
        groups = [*os.getgrouplist(MILTER_ACCOUNT, account.pw_gid), pwd.getpwnam("mail").pw_gid]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([SPAMASS_MILTER or "spamass-milter", "-p", socket, *options],
                                         user=account.pw_uid, group=account.pw_gid, extra_groups=groups,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/")
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, f"spamass-milter exited {self.proc.returncode}: {self.log_text()}"
            assert time.monotonic() < deadline, f"spamass-milter made no socket within 20 s: {self.log_text()}"
            time.sleep(0.05)
        self.socket.chmod(int(mode, 8))
        user, _, group = owner.partition(":")
        shutil.chown(self.socket, user, group or None)

    def terminate(self) -> None:
        """Ask the milter to stop (SIGTERM), without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        """Stop the milter and wait until it has (harmless when it does not run)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def mailsystem() -> Iterator[MailSystem]:
    # Not under pytest's tmp_path: mail, nobody, postfix and dovecot must reach these files (pytest's are 0700).
    tmp = shared_tempdir("spamtl-delivery-")
    daemon: SocketDaemon | None = None
    dovecot: Dovecot | None = None
    milters: list[Milter] = []
    why_no_milter = _why_no_milter()
    try:
        for folder in ("store", "bin", "run", "postfix"):
            (tmp / folder).mkdir(mode=0o755)
        db, db_path = _train(tmp / "store")
        # The store belongs to its owner alone (the classify pipe's account); the mail account cannot open it.
        owner = pwd.getpwnam(STORE_OWNER)
        (tmp / "store").chmod(0o700)
        for path in [tmp / "store", *(tmp / "store").iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        assert as_account("mail", ["test", "-r", str(db_path)]).returncode != 0
        spamtl = spamtl_for("mail", tmp / "bin")
        if spamtl is None or spamtl_for(STORE_OWNER, tmp / "bin") != spamtl:
            pytest.skip("the mail and nobody accounts cannot run this checkout's spamtl (nor a system Python of "
                        "this version)")
        socket_path = tmp / "run" / "spamd.sock"
        # New mailboxes registered as contrib/systemd/spamtl.service does; the milter's account (the spamc it
        # runs) trusted as contrib/postfix/spamass-milter.default says; a log line per verdict (whom it was for).
        daemon = SocketDaemon(db, socket_path, "--socket-group", "mail", "--allow-tell", "--trust", "mail",
                              *(["--trust", MILTER_ACCOUNT] if why_no_milter is None else []),
                              env={"SPAMTL_AUTO_CREATE_USERS": "true", "SPAMTL_LOG_LEVEL": "info",
                                   "SPAMTL_RECIPIENT_DELIMITER": "+"})  # as Postfix's main.cf here
        filter_script = tmp / "bin" / "spamtl-filter.sh"
        install(CONTRIB / "postfix" / "spamtl-filter.sh", filter_script,
                {f"SOCKET={INSTALLED_SOCKET}\n": f"SOCKET={socket_path}\n", "SPAMC=/usr/bin/spamc\n": f"SPAMC={SPAMC}\n",
                 f"SPAMTL={INSTALLED_SPAMTL}\n": f"SPAMTL={spamtl}\n",
                 f"STORE={INSTALLED_STORE}\n": f"STORE={db}\n"}, 0o755)
        homes = {_address(user): tmp / "home" / user for pair in PAIRS for user in pair}
        dovecot = Dovecot(tmp / "dovecot", homes, spamtl=spamtl, socket_path=socket_path, lmtp=True,
                          postmaster=f"postmaster@{DOMAIN}")
        dovecot.start()
        smtp_ports = {"spamc": free_port(), "classify": free_port()}
        if why_no_milter is None:
            smtp_ports.update({"milter": free_port(), "milter-reject": free_port(), "milter-down": free_port()})
        _start_postfix(tmp / "postfix", filter_script, smtp_ports, dovecot.lmtp_port)
        if why_no_milter is None:
            for name, options in (("spamass.sock", ()), (REJECT_SOCKET, ("-r", "5"))):
                milters.append(Milter(tmp / "run", tmp / "postfix" / "queue", socket_path, name, options))
                milters[-1].start()
        system = MailSystem(tmp=tmp, db=db, db_path=db_path, daemon=daemon, dovecot=dovecot, smtp_ports=smtp_ports,
                            postfix_dir=tmp / "postfix", milters=milters, why_no_milter=why_no_milter)
        for service, port in smtp_ports.items():  # not milter-down's: each connection logs a warning there
            if service != "milter-down":
                listening(port, system.postfix_log)
        yield system
    finally:
        # Whatever got started, however far the set-up got (each stop is harmless when nothing runs).
        for milter in milters:  # libmilter looks at its stop flag every 5 s: meanwhile, stop the rest
            milter.terminate()
        if (tmp / "postfix" / "conf" / "main.cf").exists():
            quietly([POSTFIX or "postfix", "-c", str(tmp / "postfix" / "conf"), "stop"])
        if dovecot is not None:
            dovecot.stop()
        if daemon is not None:
            daemon.stop()
        for milter in milters:
            milter.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=list(USERS))
def path(request: pytest.FixtureRequest) -> str:
    """The spamc path (the daemon) or the classify path (spamtl classify --filter)."""
    return str(request.param)


# ------------------------------------------------------------------ reading delivered copies
def _headers(raw: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of every header field of the message, in order."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    fields = re.split(r"\n(?![ \t])", head)
    return [(f.split(":", 1)[0], " ".join(f.split(":", 1)[1].split())) for f in fields if ":" in f]


def _all(raw: bytes, name: str) -> list[str]:
    return [value for key, value in _headers(raw) if key.lower() == name.lower()]


def _status(raw: bytes) -> tuple[str, str, bool]:
    """Verdict, id and whether the user's label decided, from the copy's one X-Spamtl-Status header."""
    values = _all(raw, "X-Spamtl-Status")
    assert len(values) == 1, f"X-Spamtl-Status {values}: the message went through the filter {len(values)} times"
    match = re.fullmatch(r"(spam|ham|unsure), .*\bid=([0-9a-f]{12})(, label)?", values[0])
    assert match is not None, values[0]
    return match.group(1), match.group(2), match.group(3) is not None


def _newsletter(tag: str) -> tuple[bytes, str]:
    """A garden newsletter with a Message-ID of its own, as a mail client sends it (CRLF)."""
    message_id = f"{tag}-{uuid.uuid4().hex[:12]}@garden.example"
    raw = make_mail("weekly newsletter digest 99", "this week in gardening news roses tulips",
                    sender=SENDER, message_id=message_id,
                    extra_headers=f"Date: {email.utils.formatdate()}\n")
    return raw.replace(b"\n", b"\r\n"), message_id


def _assert_filed(user: str, folder: str, raw: bytes, verdict: str, *, label: bool = False) -> str:
    """The copy's verdict, that Sieve filed it by X-Spam-Flag, and that it came from the envelope sender."""
    said, short_id, by_label = _status(raw)
    assert (said, by_label) == (verdict, label), f"{user}: {_all(raw, 'X-Spamtl-Status')}"
    assert _all(raw, "X-Spam-Flag") == (["YES"] if verdict == "spam" else []), f"{user}: {_headers(raw)[:8]}"
    assert folder == ("Junk" if verdict == "spam" else "INBOX"), f"{user}'s {verdict} copy is in {folder}"
    return short_id


def _no_delivery_problems(system: MailSystem, since: tuple[int, int]) -> None:
    """Nothing deferred or bounced, no warning from Postfix's programs and no error or warning from Dovecot
    since ``since`` (:meth:`MailSystem.mark`)."""
    postfix = system.postfix_log()[since[0]:]
    problems = [line for line in postfix.splitlines()
                if re.search(r"status=(?:deferred|bounced)|: (?:warning|error|fatal|panic): ", line)]
    assert problems == [], "\n".join(problems)
    dovecot = system.dovecot_log()[since[1]:]
    assert not re.findall(r"^.*(?:Error|Warning|Fatal|Panic): .*$", dovecot, re.M), dovecot[-3000:]


# ------------------------------------------------------------------ the tests
def test_each_recipient_gets_their_own_verdict(mailsystem: MailSystem, path: str) -> None:
    """One SMTP transaction to two local recipients: each copy carries its recipient's verdict, filed by
    it (Junk for spam), sent on from the original envelope sender, filtered exactly once; each user has
    the verdict in their classification log.  One recipient is written in capitals (Postfix keeps the
    case; the pipe's flags fold it, as Dovecot folds user names)."""
    since = mailsystem.mark()
    reads, refuses = USERS[path]
    raw, message_id = _newsletter(f"two-{path}")
    mailsystem.send(path, raw, [_address(reads), _address(refuses).upper()])
    for user, verdict in ((reads, "ham"), (refuses, "spam")):
        folder, copy = mailsystem.delivered(user, message_id)
        short_id = _assert_filed(user, folder, copy, verdict)
        assert _all(copy, "Return-Path") == [f"<{SENDER}>"], f"{user}: {_headers(copy)[:6]}"
        assert [v for v, _ in mailsystem.verdicts(user, short_id)] == [verdict], user
    _no_delivery_problems(mailsystem, since)


def test_mail_to_an_address_extension_is_the_users(mailsystem: MailSystem) -> None:
    """recipient_delimiter = + in Postfix and in spamtl: mail to bob+lists@ reaches bob's mailbox with bob's
    verdict (he calls the newsletter spam), logged under him, and registers no user of its own although
    the daemon registers new mailboxes (auto_create_users)."""
    since = mailsystem.mark()
    _, refuses = USERS["spamc"]
    raw, message_id = _newsletter("extension")
    mailsystem.send("spamc", raw, [f"{refuses}+lists@{DOMAIN}"])
    folder, copy = mailsystem.delivered(refuses, message_id)
    short_id = _assert_filed(refuses, folder, copy, "spam")
    assert [v for v, _ in mailsystem.verdicts(refuses, short_id)] == ["spam"]
    assert mailsystem.sql("SELECT name FROM users WHERE name LIKE ?", f"{refuses}+%") == []
    _no_delivery_problems(mailsystem, since)


def test_a_bounce_stays_a_bounce(mailsystem: MailSystem, path: str) -> None:
    """A delivery status notification (null envelope sender) is re-injected with a null sender: it
    reaches its recipient as a bounce, and nothing it causes can go back to its sender."""
    since = mailsystem.mark()
    reads, _ = USERS[path]
    raw, message_id = _newsletter(f"bounce-{path}")
    mailsystem.send(path, raw, [_address(reads)], sender="")
    folder, copy = mailsystem.delivered(reads, message_id)
    _assert_filed(reads, folder, copy, "ham")
    assert _all(copy, "Return-Path") == ["<>"], _headers(copy)[:6]
    _no_delivery_problems(mailsystem, since)


def _history(system: MailSystem, user: str, short_id: str) -> dict[str, object]:
    result = runner.invoke(app, ["history", _address(user), "--format", "json", "-n", "1000", "--db", system.db])
    assert result.exit_code == 0, result.output
    entries = [e for e in json.loads(result.stdout)["entries"] if e["id"] == short_id]
    assert entries, f"spamtl history {user} does not list {short_id}: {result.stdout[:2000]}"
    return dict(entries[-1])  # newest first: the last is the delivery's verdict


def _assert_label_matches(system: MailSystem, user: str, labels: list[str], short_id: str, verdict: str) -> None:
    """The user's feedback labels are ``labels``, the latest on the message whose verdict the delivered copy
    carries (the user's classification row with the copy's id), and spamtl history shows it corrected."""
    stored = system.wait(f"labels {labels} for {user}", lambda: (f := system.feedback(user))
                         and [label for label, _ in f] == labels and f)
    assert isinstance(stored, list)
    label, sha256 = stored[-1]
    rows = system.verdicts(user, short_id)
    assert rows and rows[0][0] == verdict, f"{user} has no {verdict} verdict with id {short_id}: {rows}"
    assert sha256 == rows[0][1], (f"{user}'s {label} label is on message {sha256[:12]}, not on {short_id}, "
                                  f"the message whose verdict the delivered copy carries")
    entry = _history(system, user, short_id)
    assert (entry["verdict"], entry["label"], entry["outcome"]) == (verdict, label, "corrected"), entry


def test_corrections_by_moving_mail_stick_to_the_delivered_copy(mailsystem: MailSystem, path: str,
                                                                tmp_path: Path) -> None:
    """Moving a delivered copy into Junk (and back out) over IMAP teaches spam (ham) through the
    IMAPSieve recipe; the label is on the message whose verdict the copy carries, history shows the
    correction, and the next copy of the same mail gets the user's label, on either path."""
    since = mailsystem.mark()
    reads, refuses = USERS[path]
    raw, message_id = _newsletter(f"moved-{path}")
    mailsystem.send(path, raw, [_address(reads), _address(refuses)])
    folder, copy = mailsystem.delivered(reads, message_id)
    read_id = _assert_filed(reads, folder, copy, "ham")
    folder, copy = mailsystem.delivered(refuses, message_id)
    refused_id = _assert_filed(refuses, folder, copy, "spam")

    # Into Junk: spam, for the one who reads the newsletter; out of Junk: ham, for the one who did not.
    fetched = mailsystem.move(reads, message_id, "INBOX", "Junk")
    _assert_label_matches(mailsystem, reads, ["spam"], read_id, "ham")
    mailsystem.move(refuses, message_id, "Junk", "INBOX")
    _assert_label_matches(mailsystem, refuses, ["ham"], refused_id, "spam")
    # The copy as the IMAP client has it (trace headers on top, CRLF) is the labelled message.
    copy_file = tmp_path / "copy.eml"
    copy_file.write_bytes(fetched)
    result = runner.invoke(app, ["classify", _address(reads), str(copy_file), "--format", "json",
                                 "--db", mailsystem.db])
    assert result.exit_code == 0, result.output
    said = json.loads(result.stdout.splitlines()[-1])
    assert (said["verdict"], said["reason"]) == ("spam", "label"), said

    # The next copy of the same mail: each user's label decides, and Sieve files it by that.
    before = {user: mailsystem.copies(user, message_id) for user in (reads, refuses)}
    mailsystem.send(path, raw, [_address(reads), _address(refuses)])
    folder, copy = mailsystem.delivered(reads, message_id, before[reads])
    _assert_filed(reads, folder, copy, "spam", label=True)
    folder, copy = mailsystem.delivered(refuses, message_id, before[refuses])
    _assert_filed(refuses, folder, copy, "ham", label=True)

    # Back out of Junk (the newest copy): ham again, and the copy after that is ham by that label.
    mailsystem.move(reads, message_id, "Junk", "INBOX")
    mailsystem.wait(f"the ham label of {reads}",
                    lambda: [label for label, _ in mailsystem.feedback(reads)] == ["spam", "ham"])
    before[reads] = mailsystem.copies(reads, message_id)
    mailsystem.send(path, raw, [_address(reads)])
    folder, copy = mailsystem.delivered(reads, message_id, before[reads])
    _assert_filed(reads, folder, copy, "ham", label=True)
    _no_delivery_problems(mailsystem, since)


# ------------------------------------------------------------------ the milter path (spamass-milter)
SPAM_STATUS = re.compile(r"(Yes|No), score=(-?\d+\.\d) required=5\.0 tests=([A-Z_]+(?:,[A-Z_]+)*) autolearn=no "
                         r"version=spamtl-\S+")


@pytest.fixture
def milter(mailsystem: MailSystem) -> Milter:
    """The milter path (contrib's milter): skipped, saying why, where spamass-milter cannot run."""
    if not mailsystem.milters:
        pytest.skip(mailsystem.why_no_milter or "spamass-milter did not start")
    return mailsystem.milters[0]


def _milter_status(user: str, raw: bytes) -> tuple[str, float, list[str]]:
    """Yes or No, the score and the tests of the copy's one X-Spam-Status (the daemon's, by the milter)."""
    values = _all(raw, "X-Spam-Status")
    assert len(values) == 1, f"{user}: X-Spam-Status {values}"
    match = SPAM_STATUS.fullmatch(values[0])
    assert match is not None, f"{user}: {values[0]}"
    return match.group(1), float(match.group(2)), match.group(3).split(",")


def _assert_milter_filed(user: str, folder: str, raw: bytes, verdict: str) -> tuple[str, float, list[str]]:
    """The copy has the daemon's X-Spam-* headers for the verdict, as the milter writes them (Flag for
    spam only, Level empty and so left out below one point), no X-Spamtl-Status (the milter takes only
    X-Spam-* fields from spamc's answer), and Sieve filed it by X-Spam-Flag."""
    said, score, tests = _milter_status(user, raw)
    is_spam = verdict == "spam"
    assert (said == "Yes") == is_spam, f"{user}: {verdict} copy says {said}, score={score}"
    assert score >= 5.0 if is_spam else score < 5.0, f"{user}: {verdict} scores {score}"
    if verdict == "ham":
        assert score <= 0.0, f"{user}: ham scores {score}"
    assert _all(raw, "X-Spam-Flag") == (["YES"] if is_spam else []), f"{user}: {_headers(raw)}"
    assert _all(raw, "X-Spam-Level") == (["*" * min(int(score), 50)] if score >= 1 else []), f"{user}: {_headers(raw)}"
    assert _all(raw, "X-Spamtl-Status") == [], f"{user}: {_headers(raw)}"
    assert folder == ("Junk" if is_spam else "INBOX"), f"{user}'s {verdict} copy is in {folder}"
    return said, score, tests


def _daemon_verdict(system: MailSystem, short_id: str, user: str | None = None) -> dict[str, str]:
    """The daemon's one verdict log line for the message with this id (for this user, or for anyone), as
    a dict (user, verdict, probability, ...): the message was scanned once."""
    lines = [line for line in system.daemon.log_text().splitlines()
             if " event=verdict " in line and f" id={short_id} " in line and (user is None or f" user={user} " in line)]
    assert len(lines) == 1, f"{len(lines)} scans of {short_id} for {user or 'anyone'}: {lines}{system.logs()}"
    return dict(re.findall(r"(\w+)=(\S+)", lines[0]))


def _mail(tag: str, kind: str) -> tuple[bytes, str, str]:
    """A mail like those the users imported (``kind`` spam, or ``frank`` for his colleague's), not one of
    them, with a Message-ID and Date of its own, and the sender its From address (the milter shows spamc
    the envelope sender): its bytes, Message-ID and sender."""
    message_id = f"{tag}-{uuid.uuid4().hex[:12]}@example.org"
    raw = _mails(14, kind, 1)[0].replace(
        b"MIME-Version: ", f"Message-ID: <{message_id}>\nDate: {email.utils.formatdate()}\nMIME-Version: ".encode(), 1)
    sender = re.search(rb"^From: (\S+)$", raw, re.M)
    assert sender is not None
    return raw.replace(b"\n", b"\r\n"), message_id, sender.group(1).decode()


def test_milter_one_recipient_gets_their_verdict(mailsystem: MailSystem, milter: Milter) -> None:
    """Through smtpd_milters (contrib/postfix/main.cf.milter, spamass-milter.default): a message with one
    recipient is scanned once, as that recipient (the whole address, in lower case: FRANK@ is frank's),
    gets their verdict in the daemon's X-Spam-* headers and is filed by it; the recipient's
    classification row is that message, the one the delivered copy is (the milter's X-Envelope-* and
    Received fields, which spamc sees, are trace fields).  Moving the copy into Junk labels that
    message, and the next copy gets the label."""
    since = mailsystem.mark()
    reads, refuses = MILTER_USERS
    raw, message_id = _newsletter("milter-one")
    sha256 = message_identity(raw)[1]
    for user, verdict, rcpt in ((reads, "ham", _address(reads)), (refuses, "spam", _address(refuses).upper())):
        mailsystem.send("milter", raw, [rcpt])
        folder, copy = mailsystem.delivered(user, message_id)
        _assert_milter_filed(user, folder, copy, verdict)
        assert message_identity(copy)[1] == sha256, f"{user}'s copy is not the message sent: {copy[:600]!r}"
        assert mailsystem.verdicts(user, sha256[:12]) == [(verdict, sha256)], user
        assert _daemon_verdict(mailsystem, sha256[:12], _address(user))["verdict"] == verdict

    mailsystem.move(reads, message_id, "INBOX", "Junk")
    _assert_label_matches(mailsystem, reads, ["spam"], sha256[:12], "ham")
    before = mailsystem.copies(reads, message_id)
    mailsystem.send("milter", raw, [_address(reads)])
    folder, copy = mailsystem.delivered(reads, message_id, before)
    _, _, tests = _assert_milter_filed(reads, folder, copy, "spam")
    assert "SPAMTL_USER_LABEL" in tests, tests
    _no_delivery_problems(mailsystem, since)


def test_milter_several_recipients_get_one_verdict(mailsystem: MailSystem, milter: Milter) -> None:
    """One SMTP transaction to erin (who reads the newsletter) and frank (who calls it spam): the milter
    scans it once, as its -u user (spamass-milter: no labels, the shared model), and both copies carry
    that one verdict, filed alike; neither recipient has a verdict of it in the store, spamass-milter
    has (auto_create_users, as contrib/systemd's unit sets it, registered that name)."""
    since = mailsystem.mark()
    raw, message_id = _newsletter("milter-two")
    sha256 = message_identity(raw)[1]
    mailsystem.send("milter", raw, [_address(user) for user in MILTER_USERS])
    said = _daemon_verdict(mailsystem, sha256[:12])  # one scan, for anyone
    assert said["user"] == MILTER_ACCOUNT, said
    statuses = []
    for user in MILTER_USERS:
        folder, copy = mailsystem.delivered(user, message_id)
        _assert_milter_filed(user, folder, copy, said["verdict"])
        statuses.append(_all(copy, "X-Spam-Status"))
        assert mailsystem.verdicts(user, sha256[:12]) == [], user
    assert statuses[0] == statuses[1], statuses
    logged = mailsystem.sql("SELECT c.verdict FROM classifications c JOIN users u ON u.id = c.user_id "
                            "JOIN messages m ON m.id = c.message_id WHERE u.name = ? AND m.sha256 = ?",
                            MILTER_ACCOUNT, sha256)
    assert logged == [(said["verdict"],)], logged
    _no_delivery_problems(mailsystem, since)


def test_milter_refuses_spam_at_smtp_time_with_r(mailsystem: MailSystem, milter: Milter) -> None:
    """The milter with ``-r 5`` added (as spamass-milter.default says, before the ``--``): mail whose score
    for its recipient is 5 or more, the daemon's spam, is refused at the end of DATA with 550 5.7.1:
    nothing is queued or delivered, and the recipient has the verdict.  A ham of the same recipient
    through the same milter is delivered."""
    since = mailsystem.mark()
    _, refuses = MILTER_USERS
    raw, message_id, sender = _mail("milter-r-spam", "spam")
    sha256 = message_identity(raw)[1]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mailsystem.send("milter-reject", raw, [_address(refuses)], sender=sender)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 Blocked by SpamAssassin")
    assert _daemon_verdict(mailsystem, sha256[:12], _address(refuses))["verdict"] == "spam"
    mailsystem.wait(f"{refuses}'s verdict of {sha256[:12]}",  # written within 0.05 s of the answer
                    lambda: mailsystem.verdicts(refuses, sha256[:12]) == [("spam", sha256)], within=5)
    assert re.search(r"milter-reject: END-OF-MESSAGE .*: 5\.7\.1 Blocked by SpamAssassin;",
                     mailsystem.postfix_log()[since[0]:]), mailsystem.logs()

    raw, ham_id, sender = _mail("milter-r-ham", refuses)
    mailsystem.send("milter-reject", raw, [_address(refuses)], sender=sender)
    folder, copy = mailsystem.delivered(refuses, ham_id)
    said_ham, score, _ = _milter_status(refuses, copy)
    assert (said_ham, folder) == ("No", "INBOX") and score < 5.0, (said_ham, score, folder)
    assert mailsystem.copies(refuses, message_id) == []
    queue = subprocess.run([POSTQUEUE or "postqueue", "-c", str(mailsystem.postfix_dir / "conf"), "-p"],
                           capture_output=True, text=True, timeout=30).stdout
    assert "Mail queue is empty" in queue, queue
    _no_delivery_problems(mailsystem, since)


def test_milter_down_mail_is_delivered_unscanned(mailsystem: MailSystem, milter: Milter) -> None:
    """main.cf.milter's milter_default_action = accept: with no milter on the socket, smtpd takes the mail
    all the same and it is delivered unscanned (no X-Spam-* field, so INBOX), as spamc passes mail on
    when the daemon is down; Postfix logs why."""
    since = mailsystem.mark()
    _, refuses = MILTER_USERS
    raw, message_id = _newsletter("milter-down")
    mailsystem.send("milter-down", raw, [_address(refuses)])
    folder, copy = mailsystem.delivered(refuses, message_id)
    assert [name for name, _ in _headers(copy) if name.lower().startswith("x-spam")] == [], _headers(copy)
    assert folder == "INBOX", folder
    assert mailsystem.verdicts(refuses, message_identity(raw)[1][:12]) == []
    log = mailsystem.postfix_log()[since[0]:]
    assert re.search(rf"warning: connect to Milter service unix:/spamass/{ABSENT_SOCKET}: No such file", log), log
