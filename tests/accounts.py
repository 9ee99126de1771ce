"""Running spamtl's clients as other local accounts (mail, nobody) against a daemon started by the test.

Used by ``tests/serve/test_socket_clients.py`` and ``tests/delivery/test_imapsieve.py``: the daemon runs as root
(the test), its clients as the unprivileged accounts a mail system uses, so socket modes, groups and
peer credentials are the real ones.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

RUNUSER = shutil.which("runuser")
SPAMC = shutil.which("spamc")


def has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def why_not_as_accounts(*accounts: str) -> str | None:
    """Why tests that run clients as ``accounts`` cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root: the test runs clients as other accounts (runuser)"
    if RUNUSER is None:
        return "runuser is not installed (util-linux)"
    missing = [name for name in accounts if not has_account(name)]
    if missing:
        return f"no local account {', '.join(missing)}"
    return None


def shared_tempdir(prefix: str) -> Path:
    """A new directory other accounts may enter (pytest's own are 0700): for sockets and scripts."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def spamtl_for(account: str, folder: Path) -> Path | None:
    """An executable that runs this checkout's ``spamtl`` and that ``account`` may execute (None: none).

    The test's own ``spamtl`` script when the account can run its interpreter.  Otherwise (the
    interpreter lives under a directory the account cannot enter, such as pyenv's in /root) a
    launcher in ``folder``: a system Python of the same version with this environment's
    site-packages (spamtl tell needs only typer and spamtl itself, both pure Python).
    """
    script = Path(sys.executable).with_name("spamtl")
    if script.exists() and _runs_as(account, [str(script), "--version"]):
        return script
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.access(candidate, os.X_OK) or not _runs_as(account, [candidate, "-c", "pass"]):
            continue
        site = sysconfig.get_paths()["purelib"]
        launcher = folder / "spamtl"
        code = ("import site, sys; n = len(sys.path); site.addsitedir(sys.argv[1]); "
                "sys.path[:] = sys.path[n:] + sys.path[:n]; del sys.argv[1]; sys.argv[0] = 'spamtl'; "
                "from spamtl.cli.entry import main; main()")
        launcher.write_text(f'#!/bin/sh\nexec {candidate} -s -c "{code}" "{site}" "$@"\n')
        launcher.chmod(0o755)
        if _runs_as(account, [str(launcher), "--version"]):
            return launcher
    return None


def _runs_as(account: str, argv: list[str]) -> bool:
    try:
        return subprocess.run([RUNUSER or "runuser", "-u", account, "--", *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def as_account(account: str, argv: list[str], data: bytes = b"", env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as ``account`` (runuser: its uid, its groups) with ``data`` on stdin."""
    prefix = [RUNUSER or "runuser", "-u", account, "--"]
    if env is not None:
        prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run(prefix + argv, input=data, capture_output=True, timeout=timeout)


class SocketDaemon:
    """``spamtl serve --socket PATH ...`` run by the test (as root), stopped with SIGTERM."""

    def __init__(self, db: str, socket_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.socket_path = socket_path
        self.log = socket_path.with_name(socket_path.name + ".log")  # a file: a full pipe would stall the daemon
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spamtl", "serve", "--db", db, "--socket", str(socket_path), "--workers", "1",
                 *args], stdout=subprocess.PIPE, stderr=log, env={**os.environ, **(env or {})})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not re.search(r"listening on unix:", line):
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"daemon did not start: {line!r} {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode
