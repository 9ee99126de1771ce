"""The SQLite store holds everyone's mail: its files are the owner's alone (or a chosen group's), whatever the umask."""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

pytestmark = pytest.mark.sqlite_only(reason="file permissions of a SQLite store")
runner = CliRunner()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _init(path: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["init", "--db", f"sqlite:///{path}", *args], catch_exceptions=False)


def _modes(path: Path) -> dict[str, int]:
    """The permission bits of the store and of its -wal and -shm files (those that exist)."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return {f.name.removeprefix(path.name) or "db": stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()}


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277], ids=["umask-022", "umask-000", "umask-277"])
def test_a_new_store_and_its_wal_files_are_the_owners_alone(tmp_path: Path, mask: int) -> None:
    from spamtl.store.engine import make_engine

    path = tmp_path / "store" / "spamtl.sqlite3"
    with umask(mask):
        result = _init(path)
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        assert _modes(path) == {"db": 0o600}
        # Opening it creates -wal and -shm, with the database file's bits whatever the umask.
        engine = make_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
                assert _modes(path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
        finally:
            engine.dispose()


def test_init_warns_about_a_store_every_account_can_read_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "spamtl.sqlite3"
    with umask(0o022):
        assert _init(path).exit_code == 0
        path.chmod(0o644)  # as an older spamtl left it under umask 022, or a careless copy
        result = _init(path)
        assert result.exit_code == 0
        assert result.stderr == (f"warning: {path} is open to every account on this machine (mode 0644), and it "
                                 f"holds everyone's mail; run `chmod 600 {path}`, or `spamtl init --group GROUP` to "
                                 "share it with one group\n")
        assert _modes(path) == {"db": 0o644}  # never changed unasked
        path.chmod(0o600)
        assert _init(path).stderr == ""


def test_init_group_shares_the_store_with_one_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    path = folder / "spamtl.sqlite3"
    with umask(0o022):
        result = _init(path, "--group", group)
        assert result.exit_code == 0
        assert _modes(path) == {"db": 0o660} and path.stat().st_gid == os.getgid()
        # Members could not create the -wal and -shm files in a folder that is not theirs: said, not changed.
        assert result.stderr == (f"warning: the store is shared with group {group}, but its folder is not: SQLite "
                                 f"creates the -wal and -shm files beside it, so run `chgrp {group} {folder} && "
                                 f"chmod 2770 {folder}`\n")
        folder.chmod(0o2770)
        assert _init(path).stderr == ""
        # An existing private store is shared when asked.
        private = folder / "private.sqlite3"
        assert _init(private).exit_code == 0 and _modes(private) == {"db": 0o600}
        assert _init(private, "--group", group).exit_code == 0 and _modes(private) == {"db": 0o660}


def test_init_group_errors(tmp_path: Path) -> None:
    result = _init(tmp_path / "x.sqlite3", "--group", "no-such-group-here")
    assert (result.exit_code, result.stderr) == (1, "Error: no group 'no-such-group-here' on this machine\n")
    assert not (tmp_path / "x.sqlite3").exists()
    result = runner.invoke(app, ["init", "--db", "postgresql+psycopg://u@127.0.0.1:1/x", "--group", "mail"])
    assert (result.exit_code, result.stderr) == (
        1, "Error: --group applies to a SQLite file only (a database server has its own roles)\n")
