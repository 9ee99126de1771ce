"""``contrib/postfix/spamtl-filter.sh`` on its own: what it runs, with which arguments, and its exit status.

Stand-ins for spamc, spamtl and sendmail record their arguments and input; Postfix, the daemon and
Dovecot run the script for real in ``tests/delivery/test_postfix_dovecot.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import REPO

SCRIPT = REPO / "contrib" / "postfix" / "spamtl-filter.sh"
INSTALLED_SOCKET = "/run/spamtl/spamd.sock"
INSTALLED_STORE = "sqlite:////var/lib/spamtl/spamtl.sqlite3"
MESSAGE = b"From: news@garden.example\r\nSubject: digest\r\n\r\nroses\r\n"
# Each stand-in writes its arguments (one a line) to NAME.args and its input to NAME.in, then exits $NAME_CODE;
# the filters write the message back with a header on top, as spamc and classify --filter do.
STAND_IN = """#!/bin/sh
name=$(basename "$0")
printf '%s\\n' "$@" > "$(dirname "$0")/$name.args"
cat > "$(dirname "$0")/$name.in"
case $name in
  spamc | spamtl) printf 'X-Spamtl-Status: ham\\r\\n'; cat "$(dirname "$0")/$name.in" ;;
esac
eval "exit \\${${name}_CODE:-0}"
"""

Run = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def filter_script(tmp_path: Path) -> tuple[Run, Path]:
    """The script with spamc, spamtl and sendmail replaced by stand-ins in ``tmp_path``."""
    for name in ("spamc", "spamtl", "sendmail"):
        (tmp_path / name).write_text(STAND_IN)
        (tmp_path / name).chmod(0o755)
    text = SCRIPT.read_text()
    for line in ("SPAMC=/usr/bin/spamc\n", "SPAMTL=/usr/local/bin/spamtl\n", "SENDMAIL=/usr/sbin/sendmail\n"):
        assert line in text, f"{SCRIPT.name} no longer says {line.strip()}: update this test"
        name = line.split("=")[0].lower()
        text = text.replace(line, f"{line.split('=')[0]}={tmp_path / name}\n")
    script = tmp_path / "spamtl-filter.sh"
    script.write_text(text)
    script.chmod(0o755)
    (tmp_path / "tmp").mkdir()

    def run(*args: str, **codes: int) -> subprocess.CompletedProcess[bytes]:
        for name in ("spamc", "spamtl", "sendmail"):
            (tmp_path / f"{name}.args").unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path / "tmp"),
               **{f"{name}_CODE": str(code) for name, code in codes.items()}}
        return subprocess.run([str(script), *args], input=MESSAGE, capture_output=True, env=env, timeout=30)

    return run, tmp_path


def _args(tmp: Path, name: str) -> list[str] | None:
    path = tmp / f"{name}.args"
    return path.read_text().split("\n")[:-1] if path.exists() else None


@pytest.mark.parametrize(("mode", "filter_args"), [
    ("spamc", ["-U", INSTALLED_SOCKET, "-u", "alice@example.org"]),
    ("classify", ["classify", "--db", INSTALLED_STORE, "--filter", "--", "alice@example.org"]),
])
def test_filters_for_the_recipient_and_reinjects_from_the_sender(filter_script: tuple[Run, Path], mode: str,
                                                                 filter_args: list[str]) -> None:
    run, tmp = filter_script
    out = run(mode, "-f", "news@garden.example", "--", "alice@example.org")
    assert out.returncode == 0, out.stderr
    name = "spamc" if mode == "spamc" else "spamtl"
    assert _args(tmp, name) == filter_args
    assert (tmp / f"{name}.in").read_bytes() == MESSAGE
    assert _args(tmp, "sendmail") == ["-G", "-i", "-f", "news@garden.example", "--", "alice@example.org"]
    assert (tmp / "sendmail.in").read_bytes() == b"X-Spamtl-Status: ham\r\n" + MESSAGE  # what the filter wrote
    assert list((tmp / "tmp").iterdir()) == []  # its temporary copy is gone


def test_a_bounce_is_reinjected_with_the_null_sender(filter_script: tuple[Run, Path]) -> None:
    """Postfix's pipe gives the empty sender as an empty argument (null_sender=): it stays empty."""
    run, tmp = filter_script
    assert run("spamc", "-f", "", "--", "-x@example.org").returncode == 0
    assert _args(tmp, "sendmail") == ["-G", "-i", "-f", "", "--", "-x@example.org"]
    assert _args(tmp, "spamc") == ["-U", INSTALLED_SOCKET, "-u", "-x@example.org"]


@pytest.mark.parametrize("mode", ["spamc", "classify"])
def test_more_than_one_recipient_is_deferred_not_given_one_verdict(filter_script: tuple[Run, Path],
                                                                   mode: str) -> None:
    """Without ``_destination_recipient_limit = 1`` the pipe passes every recipient: exit 75 (Postfix keeps
    the mail and logs the line), nothing filtered or sent."""
    run, tmp = filter_script
    out = run(mode, "-f", "news@garden.example", "--", "alice@example.org", "bob@example.org")
    assert out.returncode == 75
    assert b"2 recipients in one delivery" in out.stderr and b"_destination_recipient_limit = 1" in out.stderr
    assert (_args(tmp, "spamc"), _args(tmp, "spamtl"), _args(tmp, "sendmail")) == (None, None, None)


@pytest.mark.parametrize(("mode", "code", "delivered"), [
    ("spamc", 0, True),
    ("spamc", 69, False),  # spamc without -x passes mail on with exit 0 when the daemon is away: this is worse
    ("spamc", 137, False),  # killed
    ("classify", 1, True),  # an expected error: the message was written out, marked X-Spamtl-Status: error
    ("classify", 2, True),
    ("classify", 70, True),
    ("classify", 137, False),
])
def test_the_filters_exit_status_decides_delivery_or_a_retry(filter_script: tuple[Run, Path], mode: str, code: int,
                                                             delivered: bool) -> None:
    run, tmp = filter_script
    name = "spamc" if mode == "spamc" else "spamtl"
    out = run(mode, "-f", "news@garden.example", "--", "alice@example.org", **{name: code})
    assert (out.returncode, _args(tmp, "sendmail") is not None) == ((0, True) if delivered else (75, False)), out.stderr
    if not delivered:
        assert f"{mode} failed (exit {code}); the mail stays queued".encode() in out.stderr


@pytest.mark.parametrize("code", [1, 75])
def test_a_failed_reinjection_is_retried(filter_script: tuple[Run, Path], code: int) -> None:
    run, _ = filter_script
    out = run("spamc", "-f", "news@garden.example", "--", "alice@example.org", sendmail=code)
    assert out.returncode == 75
    assert f"sendmail failed (exit {code}); the mail stays queued".encode() in out.stderr


@pytest.mark.parametrize("args", [(), ("spamc",), ("filter", "-f", "a@b", "--", "c@d"), ("spamc", "a@b", "--", "c@d"),
                                  ("spamc", "-f", "a@b", "c@d", "e@f"), ("spamc", "-f", "a@b", "--")],
                         ids=["nothing", "mode-only", "unknown-mode", "no-f", "no-dashes", "no-recipient"])
def test_another_command_line_is_a_usage_error(filter_script: tuple[Run, Path], args: tuple[str, ...]) -> None:
    run, tmp = filter_script
    out = run(*args)
    assert out.returncode == 64 and b"usage: spamtl-filter.sh spamc|classify -f SENDER -- RECIPIENT" in out.stderr
    assert (_args(tmp, "spamc"), _args(tmp, "spamtl"), _args(tmp, "sendmail")) == (None, None, None)
