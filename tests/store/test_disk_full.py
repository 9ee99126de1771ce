"""A full disk under the store: the daemon keeps scanning, and a teach that could not be stored says so.

The store lives on a small tmpfs mounted by the test (root only); the rest of the space is taken by a
filler file, as a full /var would be.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import run_sql
from ..serve.test_daemon import SPAM, Daemon, labels, store  # noqa: F401 - fixture

pytestmark = pytest.mark.sqlite_only(reason="puts the SQLite file on a small filesystem")


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs (skipped with the reason where the machine does not let us mount one)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    where = Path(tempfile.mkdtemp(prefix="spamtl-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):  # big blocks, then what is left
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_a_teach_on_a_full_disk_fails_visibly_and_scanning_goes_on(store: dict[str, object],  # noqa: F811
                                                                    small_disk: Path) -> None:
    source = Path(str(store["db"]).removeprefix("sqlite:///"))
    with sqlite3.connect(source) as src, sqlite3.connect(small_disk / "store.sqlite3") as dst:
        src.backup(dst)  # the whole store, WAL included
    db = f"sqlite:///{small_disk / 'store.sqlite3'}"
    d = Daemon(db, small_disk, "--workers", "1", "--allow-tell")
    try:
        assert b"\r\nSpam: True ; " in d.request("CHECK", SPAM, user="alice")  # WAL and SHM now exist
        before = labels(db, "alice")
        fill(small_disk)
        taught = subprocess.run([sys.executable, "-m", "spamtl", "tell", "--port", str(d.port), "--user", "alice",
                                 "--ham"], input=SPAM, capture_output=True, timeout=120)
        assert taught.returncode == 75, taught
        assert taught.stderr.decode().startswith("Error: spamtl serve answered 75"), taught.stderr
        assert len(taught.stderr.decode().strip().splitlines()) == 1
        # Still scanning: every check is answered with a score (its verdict cannot be logged, and is not).
        for _ in range(5):
            assert b"\r\nSpam: True ; " in d.request("CHECK", SPAM, user="alice")
        os.remove(small_disk / "filler")
        assert labels(db, "alice") == before  # nothing half-stored
        assert run_sql(db, "PRAGMA integrity_check")[0][0] == "ok"
        again = subprocess.run([sys.executable, "-m", "spamtl", "tell", "--port", str(d.port), "--user", "alice",
                                "--ham"], input=SPAM, capture_output=True, timeout=120)
        assert again.returncode == 0, again
        assert labels(db, "alice")[-1][1] == "ham"
    finally:
        code, err = d.stop()
    assert code == 0, err
