"""The classify hot path prints exactly what the full command prints, and falls back when it should."""

from __future__ import annotations

import io
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl import fastpath
from spamtl.cli import app
from spamtl.store.db import SCHEMA_REVISION

from .conftest import make_mail
from .test_cli_loop import store  # noqa: F401 - the trained module-scoped store fixture

runner = CliRunner()


def _fast(argv: list[str], stdin: bytes, capsysbinary: pytest.CaptureFixture[bytes],
          monkeypatch: pytest.MonkeyPatch) -> tuple[int | None, bytes, bytes]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = fastpath.run(argv)
    out, err = capsysbinary.readouterr()
    return code, out, err


FAST_PATH_IS_SQLITE = "the fast path reads SQLite files only; other URLs take the full command"


@pytest.mark.sqlite_only(reason=FAST_PATH_IS_SQLITE)
@pytest.mark.parametrize("mode", [["--format", "json"], ["--format", "text"], ["--filter"], []],
                         ids=["json", "text", "filter", "default"])
@pytest.mark.parametrize("user", ["ann", "bob", "stranger"])
def test_fast_path_matches_full_command(store, mode, user, capsysbinary, monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    raw = Path(store["test_mail"]).read_bytes()
    argv = ["classify", user, *mode, "--db", db] + ([] if "--filter" in mode else [str(store["test_mail"])])
    code, out, err = _fast(argv, raw if "--filter" in mode else b"", capsysbinary, monkeypatch)
    full = runner.invoke(app, argv, input=raw if "--filter" in mode else None, catch_exceptions=False)
    assert code == full.exit_code == 0
    assert out == full.stdout_bytes
    assert err.decode() == full.stderr


@pytest.mark.sqlite_only(reason=FAST_PATH_IS_SQLITE)
def test_fast_path_logs_like_the_full_command(store, capsysbinary, monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    before = con.execute("SELECT count(*) FROM classifications").fetchone()[0]
    raw = make_mail("brand new", "never seen before", message_id="fresh-1@example")
    _fast(["classify", "newcomer", "-", "--db", db], raw, capsysbinary, monkeypatch)
    assert con.execute("SELECT count(*) FROM classifications").fetchone()[0] == before + 1
    stored = con.execute("SELECT message_id, size, received_at FROM messages ORDER BY id DESC LIMIT 1").fetchone()
    assert stored[:2] == ("fresh-1@example", len(raw))
    assert len(stored[2]) == len("2026-01-01 00:00:00.000000")
    assert con.execute("SELECT count(*) FROM users WHERE name = 'newcomer'").fetchone()[0] == 1


@pytest.mark.parametrize(
    "argv",
    [["classify", "ann", "--help"], ["classify", "ann", "a", "b"], ["import", "ann", "x"], ["classify"],
     ["classify", "ann", "--format", "csv"], ["classify", "ann", "--db", "postgresql://x/y"]],
    ids=["help", "two-paths", "other-command", "no-user", "bad-format", "not-sqlite"],
)
def test_other_invocations_fall_back(argv: list[str]) -> None:
    assert fastpath.run(argv) is None


@pytest.mark.sqlite_only(reason=FAST_PATH_IS_SQLITE)
def test_problems_fall_back_with_stdin_preserved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "empty.sqlite3"
    sqlite3.connect(db).execute("CREATE TABLE x (y)").connection.commit()  # no schema, no model
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Subject: s\n\nbody")))
    assert fastpath.run(["classify", "ann", "--filter", "--db", f"sqlite:///{db}"]) is None
    assert sys.stdin.buffer.read() == b"Subject: s\n\nbody"  # the full command still gets the message


def test_schema_revision_constants_agree() -> None:
    assert fastpath._SCHEMA_REVISION == SCHEMA_REVISION
