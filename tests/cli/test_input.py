"""What a command reads: a message passed through whole on a usage error; one message or a mailbox."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import make_mail, run, write_mbox


@pytest.mark.parametrize("wrong", [["--format", "yaml"], ["--bogus"]], ids=["parser", "stray-word"])
def test_a_wrong_filter_command_line_passes_a_large_message_through_whole(db_url: str, wrong: list[str]) -> None:
    """Catches a pass-through that writes only the first block it read (64 KiB) of a larger message."""
    raw = make_mail("big", "words " * 50_000)  # about 300 KB: several blocks
    done = subprocess.run([sys.executable, "-m", "spamtl", "classify", "ann", "--filter", *wrong, "--db", db_url],
                          input=raw, capture_output=True, timeout=60)
    assert done.stdout == b"X-Spamtl-Status: error\n" + raw
    assert done.returncode in (1, 2)


def test_feedback_takes_a_gzipped_mbox_as_a_mailbox(db_url: str, tmp_path: Path) -> None:
    """One file is one message unless it is an mbox, plain or gzipped: then each message is labelled."""
    mbox = write_mbox(tmp_path / "junk.mbox", [make_mail("win", "prize casino"), make_mail("pills", "cheap meds")])
    packed = tmp_path / "junk.mbox.gz"
    packed.write_bytes(gzip.compress(mbox.read_bytes()))
    for path in (mbox, packed):
        result = run(db_url, "feedback", "ann", "--spam", str(path))
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0].startswith("Recorded spam for ann: 2 messages (")


@pytest.mark.parametrize("command", [["feedback", "ann", "--spam"], ["explain", "ann"]], ids=["feedback", "explain"])
def test_an_empty_message_is_refused(db_url: str, tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"\n \n")
    for given, stdin in (([], b""), ([str(empty)], None)):
        result = run(db_url, *command, *given, input=stdin)
        assert (result.exit_code, result.stderr) == (1, "Error: the message is empty\n")
