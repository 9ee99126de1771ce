"""A throw-away Dovecot running contrib/dovecot's files as deployed (not a test module).

``tests/delivery/test_imapsieve.py`` (IMAP with the IMAPSieve recipe) and ``tests/delivery/test_postfix_dovecot.py`` (the same,
and LMTP with Sieve at delivery) start it alike: everything in a folder of its own, IMAP (and LMTP) on
free loopback ports, its users in a passwd-file with Maildirs, its mail processes as the unprivileged
``mail`` account (so the sieve pipes run as it), contrib's conf.d files included as an administrator
would, and the sieve scripts compiled with ``sievec`` as docs/delivery.md says.  Only the installed paths in
the contrib files are rewritten.

Also the small helpers those tests share: finding a program, installing a contrib file, reading a log
that may not be there yet, waiting for a port, and a stop command that must not fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .accounts import has_account
from .conftest import REPO, free_port

CONTRIB = REPO / "contrib"
PASSWORD = "secret"  # every user's


def program(name: str, *places: str) -> str | None:
    """``name`` on PATH, else the first of ``places`` that is executable (None: neither)."""
    return shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)


DOVECOT = program("dovecot", "/usr/sbin/dovecot")
SIEVEC = program("sievec", "/usr/bin/sievec")

# Where the contrib files say things are installed, and so what the tests rewrite.
INSTALLED_SIEVE_DIR = "/etc/dovecot/sieve"
INSTALLED_SPAMTL = "/usr/local/bin/spamtl"
INSTALLED_SOCKET = "/run/spamtl/spamd.sock"


def install(source: Path, target: Path, replacements: dict[str, str], mode: int) -> str:
    """Copy a contrib file, rewriting only what ``replacements`` names (each must be there)."""
    text = source.read_text()
    for old, new in replacements.items():
        assert old in text, f"{source.relative_to(REPO)} no longer says {old!r}: update the test's rewriting"
        text = text.replace(old, new)
    target.write_text(text)
    target.chmod(mode)
    return text


def read_text(path: Path) -> str:
    """The file's text ("" while it is not there)."""
    return path.read_text(errors="replace") if path.exists() else ""


def listening(port: int, what: Callable[[], str]) -> None:
    """Wait until something listens on 127.0.0.1:``port``; after 20 s fail, saying ``what()`` (a log)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on 127.0.0.1:{port}: {what()}") from None
            time.sleep(0.1)


def quietly(argv: list[str]) -> None:
    """Run a stop command; its failure must not keep the next one from running."""
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass


class Dovecot:
    """Dovecot with its configuration, passwd-file, sockets, state, log and sieve scripts in ``folder``.

    ``users`` maps each login to its home (made, with a Maildir, owned by ``mail``); every password is
    :data:`PASSWORD`.  IMAP on :attr:`imap_port` with contrib's IMAPSieve recipe
    (``90-spamtl-imapsieve.conf``, ``report-spam.sieve``, ``report-ham.sieve``, and ``spamtl-learn.sh``
    running ``spamtl`` on ``socket_path``).  With ``lmtp``, LMTP on :attr:`lmtp_port` too, with Sieve at
    delivery (``91-spamtl-junk.conf``, ``spamtl-junk.sieve``) and ``postmaster`` as its postmaster_address.

    ``with Dovecot(...) as dovecot:`` starts it and stops it, or call :meth:`start` and, in a ``finally``,
    :meth:`stop`: either way it is stopped however far :meth:`start` got.
    """

    def __init__(self, folder: Path, users: dict[str, Path], *, spamtl: Path, socket_path: Path,
                 lmtp: bool = False, postmaster: str | None = None) -> None:
        self.folder = folder
        self.users = users
        self.spamtl = spamtl
        self.socket_path = socket_path
        self.lmtp = lmtp
        self.postmaster = postmaster
        self.imap_port = free_port()
        self.lmtp_port = free_port()  # listened on only with lmtp
        self.conf = folder / "dovecot.conf"
        self.log = folder / "dovecot.log"
        self.sieve = folder / "sieve"  # contrib's /etc/dovecot/sieve

    def __enter__(self) -> Dovecot:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return read_text(self.log)

    def start(self) -> None:
        """Install contrib's files, make the users, write the configuration, compile the sieve scripts,
        start Dovecot and wait until it listens."""
        self.folder.mkdir(mode=0o755, exist_ok=True)
        for name in ("conf.d", "run", "state", "sieve"):
            (self.folder / name).mkdir(mode=0o755)
        recipes = ["90-spamtl-imapsieve.conf", *(["91-spamtl-junk.conf"] if self.lmtp else [])]
        for name in recipes:
            install(CONTRIB / "dovecot" / name, self.folder / "conf.d" / name, {INSTALLED_SIEVE_DIR: str(self.sieve)},
                    0o644)
        scripts = ["report-spam.sieve", "report-ham.sieve", *(["spamtl-junk.sieve"] if self.lmtp else [])]
        for name in scripts:
            install(CONTRIB / "dovecot" / name, self.sieve / name, {}, 0o644)
        install(CONTRIB / "dovecot" / "spamtl-learn.sh", self.sieve / "spamtl-learn.sh",
                {INSTALLED_SPAMTL: str(self.spamtl), INSTALLED_SOCKET: str(self.socket_path)}, 0o755)
        mail = pwd.getpwnam("mail")
        passwd = []
        for login, home in self.users.items():
            (home / "Maildir").mkdir(parents=True)
            for path in (home, home / "Maildir"):
                os.chown(path, mail.pw_uid, mail.pw_gid)
            passwd.append(f"{login}:{{PLAIN}}{PASSWORD}::::{home}::\n")
        (self.folder / "passwd").write_text("".join(passwd))
        self.conf.write_text(self.config(recipes))
        # As docs/delivery.md says: the mail account cannot write the sieve folder, so compile the scripts there.
        for name in scripts:
            compiled = subprocess.run([SIEVEC or "sievec", "-c", str(self.conf), str(self.sieve / name)],
                                      capture_output=True, text=True, timeout=60)
            assert compiled.returncode == 0, compiled.stderr
            assert (self.sieve / name.replace(".sieve", ".svbin")).exists()
        with (self.folder / "start.err").open("wb") as err:  # the daemon keeps its stdio: no pipes, or run() waits
            started = subprocess.run([DOVECOT or "dovecot", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, timeout=30)
        assert started.returncode == 0, read_text(self.folder / "start.err") + self.log_text()
        for port in [self.imap_port, *([self.lmtp_port] if self.lmtp else [])]:
            listening(port, self.log_text)

    def stop(self) -> None:
        """Stop Dovecot (harmless when it does not run; a failure to stop is not raised)."""
        if self.conf.exists():
            quietly([DOVECOT or "dovecot", "-c", str(self.conf), "stop"])

    def config(self, includes: list[str]) -> str:
        """IMAP (and LMTP) on loopback ports, the users in a passwd-file, mail processes as ``mail``, then
        contrib's conf.d files ``includes``, included as an administrator would."""
        mail = pwd.getpwnam("mail")
        login = "dovenull" if has_account("dovenull") else "dovecot"
        postmaster = f"postmaster_address = {self.postmaster}\n" if self.postmaster else ""
        lmtp = f"""service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
""" if self.lmtp else ""
        include = "".join(f"!include {self.folder}/conf.d/{name}\n" for name in includes)
        return f"""
base_dir = {self.folder}/run
state_dir = {self.folder}/state
log_path = {self.log}
protocols = imap{" lmtp" if self.lmtp else ""}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = {login}
{postmaster}mail_uid = {mail.pw_name}
mail_gid = {mail.pw_gid}
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.folder}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.folder}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{lmtp}service anvil {{
  chroot =
}}
{include}"""
