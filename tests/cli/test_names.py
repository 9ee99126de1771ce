"""User and group names: validated, never read as options, and never created by a typo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.errors import UsageError
from spamtl.settings import validate_name

from ..conftest import make_mail, write_mbox

runner = CliRunner()


@pytest.mark.parametrize(("name", "why"), [
    ("", "must not be empty"),
    ("a" * 256, "longer than 255 characters"),
    ("ann\nX-Spam-Flag: NO", "control characters"),
    ("ann\x1b[31m", "control characters"),
    (" ann", "starts or ends with a space"),
    ("--help", "starts with '-'"),
    ("-x", "starts with '-'"),
])
def test_bad_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        validate_name(name)


@pytest.mark.parametrize("name", ["ann", "alice@example.org", "Zoë Müller", "a" * 255, "x-ray"])
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


def test_import_refuses_a_bad_name_in_one_line(db_url: str, tmp_path: Path) -> None:
    box = write_mbox(tmp_path / "m.mbox", [make_mail("a", "b")])
    result = runner.invoke(app, ["import", "bad\tname", str(box), "-l", "ham", "--db", db_url])
    assert result.exit_code == 1
    assert result.stderr == "Error: the user name 'bad\\tname' has control characters; use printable characters only\n"


def test_moving_a_user_to_another_group_is_explicit(db_url: str, tmp_path: Path) -> None:
    box = write_mbox(tmp_path / "m.mbox", [make_mail("a", "b")])
    assert runner.invoke(app, ["import", "ann", str(box), "-l", "ham", "--group", "staff", "--db", db_url]).exit_code == 0
    other = write_mbox(tmp_path / "n.mbox", [make_mail("c", "d")])
    moved = runner.invoke(app, ["import", "ann", str(other), "-l", "ham", "--group", "board", "--db", db_url])
    assert moved.exit_code == 1
    assert moved.stderr == "Error: ann is in group 'staff'; add --move-group to move them to 'board'\n"
    users = runner.invoke(app, ["users", "--format", "json", "--db", db_url])
    assert '"group": "staff"' in users.stdout
    again = runner.invoke(app, ["import", "ann", str(other), "-l", "ham", "--group", "board", "--move-group",
                                "--db", db_url])
    assert again.exit_code == 0
    assert '"group": "board"' in runner.invoke(app, ["users", "--format", "json", "--db", db_url]).stdout


@pytest.mark.parametrize("user", ["--help", "-h", "--version", "-"])
def test_an_option_like_user_in_filter_mode_still_passes_the_mail(db_url: str, user: str) -> None:
    """A recipe like `spamtl classify $LOGNAME --filter` must never print help instead of the mail."""
    raw = b"From: a@b.example\nSubject: hi\n\nbody\n"
    done = subprocess.run([sys.executable, "-m", "spamtl", "classify", user, "--filter", "--db", db_url],
                          input=raw, capture_output=True, timeout=60)
    assert done.stdout == b"X-Spamtl-Status: error\n" + raw
    assert done.returncode in (1, 2)
    assert done.stderr.decode().startswith("Error:") or "Usage" in done.stderr.decode()


def test_a_stray_word_in_filter_mode_still_passes_the_mail(db_url: str) -> None:
    raw = b"Subject: hi\n\nbody\n"
    done = subprocess.run([sys.executable, "-m", "spamtl", "classify", "ann", "--filter", "--bogus", "--db", db_url],
                          input=raw, capture_output=True, timeout=60)
    assert done.stdout == b"X-Spamtl-Status: error\n" + raw and done.returncode == 1
    assert done.stderr.decode() == ("Error: --filter reads one message from stdin; unexpected '--bogus' "
                                    "(message passed through unfiltered)\n")
