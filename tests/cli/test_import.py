"""End to end through the CLI: init, import, users, and the expected failures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import count_rows, make_mail, write_mbox
from .test_progress import without_stage_lines

runner = CliRunner()


def run(db_url: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db_url], input=input, catch_exceptions=False)


def users_json(db_url: str) -> list[dict[str, object]]:
    result = run(db_url, "users", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row in rows:  # the cutoff columns are tested in tests/services/test_cutoffs.py
        assert {row.pop("spam_cutoff"), row.pop("ham_cutoff"), row.pop("cutoff_source")} == {0.9, 0.5, "global setting"}
    return rows


@pytest.fixture
def mail_tree(tmp_path: Path) -> dict[str, Path]:
    spam = [make_mail(f"cheap pills {i}", f"buy now offer {i}", sender=f"x{i}@spam.example") for i in range(6)]
    ham = [make_mail(f"meeting {i}", f"agenda item {i}", sender="boss@work.example") for i in range(4)]
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, raw in enumerate(ham[:2]):
        (maildir / "cur" / f"{i}:2,S").write_bytes(raw)
    (maildir / "new" / "2").write_bytes(ham[2])
    eml = tmp_path / "one.eml"
    eml.write_bytes(ham[3])
    mbox = write_mbox(tmp_path / "spam.mbox", spam[:3])
    gz = tmp_path / "more.mbox.gz"
    gz.write_bytes(gzip.compress(write_mbox(tmp_path / "tmp.mbox", spam[3:]).read_bytes()))
    return {"maildir": maildir, "eml": eml, "mbox": mbox, "gz": gz}


def test_import_users_and_idempotence(blank_db_url: str, mail_tree: dict[str, Path]) -> None:
    db = blank_db_url
    result = run(db, "init")
    assert result.exit_code == 0 and "Database ready" in result.stdout
    out = run(db, "import", "ann", str(mail_tree["maildir"]), str(mail_tree["eml"]), "--label", "ham",
              "--group", "staff")
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == "ann (ham): 4 imported, 0 already known, 0 relabelled, 0 unreadable"
    out = run(db, "import", "ann", str(mail_tree["mbox"]), str(mail_tree["gz"]), "-l", "spam")
    assert "6 imported" in out.stdout
    assert users_json(db) == [{"user": "ann", "group": "staff", "ham": 4, "spam": 6}]

    again = run(db, "import", "ann", str(mail_tree["mbox"]), str(mail_tree["gz"]), "-l", "spam", "--format", "json")
    summary = json.loads(again.stdout)
    assert (summary["imported"], summary["already_known"], summary["relabelled"]) == (0, 6, 0)

    relabel = run(db, "import", "ann", str(mail_tree["eml"]), "-l", "spam")
    assert "0 imported, 0 already known, 1 relabelled" in relabel.stdout
    assert users_json(db) == [{"user": "ann", "group": "staff", "ham": 3, "spam": 7}]

    # Another user shares messages but not labels; messages are stored once.
    run(db, "import", "bob", str(mail_tree["mbox"]), "-l", "ham")
    assert users_json(db)[1] == {"user": "bob", "group": None, "ham": 3, "spam": 0}
    assert count_rows(db, "messages") == 10
    text_table = run(db, "users").stdout.splitlines()
    assert text_table[0].split() == ["user", "group", "ham", "spam", "cutoff", "source"]
    assert text_table[1].split() == ["ann", "staff", "3", "7", "0.9000", "global", "setting"]


def test_interrupted_import_keeps_committed_chunks(db_url: str, tmp_path: Path) -> None:
    from datetime import datetime

    from spamtl.progress import NoProgress
    from spamtl.services.importing import ImportInterrupted, import_mail
    from spamtl.store.engine import make_engine

    mbox = write_mbox(tmp_path / "m.mbox", [make_mail(f"s{i}", f"b{i}") for i in range(10)])
    calls = []

    class InterruptAfterTwoChunks(NoProgress):
        def advance(self, n: int = 1) -> None:
            calls.append(n)
            if len(calls) == 2:
                raise KeyboardInterrupt

    engine = make_engine(db_url)
    with pytest.raises(ImportInterrupted) as info:
        import_mail(engine, user="u", paths=[str(mbox)], label="spam", now=datetime(2026, 1, 1), chunk_size=3,
                    progress=InterruptAfterTwoChunks())
    assert info.value.summary.imported == 6
    assert users_json(db_url) == [{"user": "u", "group": None, "ham": 0, "spam": 6}]
    summary = import_mail(engine, user="u", paths=[str(mbox)], label="spam", now=datetime(2026, 1, 1))
    assert (summary.imported, summary.known) == (4, 6)


def test_unreadable_file_is_reported(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "good.eml").write_bytes(make_mail("hi", "there"))
    (folder / "bad.gz").write_bytes(b"\x1f\x8b garbage")
    result = run(db_url, "import", "ann", str(folder), "-l", "ham")
    assert result.exit_code == 0
    assert "1 imported" in result.stdout and "1 unreadable" in result.stdout
    assert f"unreadable: {folder / 'bad.gz'}: corrupt gzip data" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "ann", "/no/such/file.mbox", "-l", "spam"], "Error: no such file or directory: /no/such/file.mbox"),
        (["import", " ", "{eml}", "-l", "spam"], "Error: the user name ' ' starts or ends with a space"),
    ],
    ids=["missing-file", "empty-user"],
)
def test_expected_errors_are_one_line(db_url: str, tmp_path: Path, args: list[str], message: str) -> None:
    eml = tmp_path / "x.eml"
    eml.write_bytes(make_mail("a", "b"))
    result = run(db_url, *[a.format(eml=eml) for a in args])
    assert result.exit_code == 1
    assert result.stderr.strip() == message
    assert "Traceback" not in result.output


def test_unknown_label_is_a_usage_error(db_url: str, tmp_path: Path) -> None:
    result = run(db_url, "import", "ann", str(tmp_path), "--label", "eggs")
    assert result.exit_code == 2
    assert "'eggs' is not one of 'spam', 'ham'" in result.stderr


def test_database_without_schema_needs_init(blank_db_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(blank_db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    result = run(blank_db_url, "users")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: the database is empty; run `spamtl init` to create or upgrade it"


@pytest.mark.sqlite_only(reason="a missing or garbage database file exists only for SQLite")
def test_missing_or_garbage_database_file(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'none.sqlite3'}"
    result = run(missing, "users")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: no database at {tmp_path / 'none.sqlite3'}; run `spamtl init` first"
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"\x00garbage" * 1000)
    result = run(f"sqlite:///{garbage}", "users")
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "not a database" in result.stderr


@pytest.mark.sqlite_only(reason="SQLite locks the whole file; PostgreSQL locks rows and waits")
def test_locked_database_is_one_line(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAMTL_BUSY_TIMEOUT", "0.2")
    eml = tmp_path / "x.eml"
    eml.write_bytes(make_mail("a", "b"))
    import sqlite3

    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run(db_url, "import", "ann", str(eml), "-l", "ham")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: the database is locked by another process; try again later"


def test_env_variable_selects_database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAMTL_DATABASE_URL", db_url)
    result = runner.invoke(app, ["users", "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_default_database_lives_in_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spamtl.settings import default_database_url

    monkeypatch.delenv("SPAMTL_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_database_url() == f"sqlite:///{tmp_path / 'xdg' / 'spamtl' / 'spamtl.sqlite3'}"
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "xdg" / "spamtl" / "spamtl.sqlite3").exists()


@pytest.mark.sqlite_only(reason="SQLite's max_page_count stands in for a full disk; PostgreSQL has no equivalent")
def test_a_full_disk_says_how_many_labels_were_saved(db_url: str, tmp_path: Path) -> None:
    """SQLite's page limit stands in for a full disk: the same SQLITE_FULL error, without filling one."""
    import random

    from sqlalchemy import event

    from spamtl.errors import DatabaseError
    from spamtl.services.importing import import_mail
    from spamtl.store.engine import make_engine

    from ..conftest import NOW

    rng = random.Random(0)
    box = write_mbox(tmp_path / "big.mbox", [make_mail(f"note {i}", f"{rng.getrandbits(40_000):x}")
                                             for i in range(300)])  # ~10 KB each, incompressible
    engine = make_engine(db_url)
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 150}")

    engine.dispose()
    with pytest.raises(DatabaseError) as caught:
        import_mail(engine, user="ann", paths=[str(box)], label="ham", now=NOW, chunk_size=50)
    message = str(caught.value)
    assert message.startswith("database error: database or disk is full") or message.startswith("the disk is full")
    saved = int(message.split("; ")[-1].split(" labels were saved")[0])
    assert 0 < saved < 300 and saved % 50 == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM labels").scalar() == saved


@pytest.mark.sqlite_only(reason="a damaged database file exists only for SQLite")
@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
@pytest.mark.parametrize("command", [["users"], ["train"], ["models"], ["evaluate"], ["classify", "ann", "{eml}"],
                                     ["feedback", "ann", "--spam", "{eml}"], ["import", "ann", "{eml}", "-l", "ham"]],
                         ids=lambda c: c[0] if isinstance(c, list) else c)
def test_a_damaged_database_is_one_line(db_url: str, tmp_path: Path, command: list[str], damage: str) -> None:
    eml = tmp_path / "x.eml"
    eml.write_bytes(make_mail("a", "b"))
    assert run(db_url, "import", "ann", str(eml), "-l", "ham").exit_code == 0
    path = Path(db_url.removeprefix("sqlite:///"))
    data = bytearray(path.read_bytes())
    if damage == "overwritten":
        data[100:4000] = b"\xff" * 3900  # the schema page is garbage
    else:
        data = data[:3000]  # cut inside the first page
    path.write_bytes(bytes(data))
    for wal in path.parent.glob(path.name + "-*"):
        wal.unlink()
    result = run(db_url, *[str(eml) if a == "{eml}" else a for a in command])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: the database file is damaged"), result.stderr


@pytest.mark.parametrize("command", [["import", "ann", "-l", "spam"], ["feedback", "ann", "--spam"]],
                         ids=["import", "feedback"])
def test_an_mbox_of_one_from_line_is_reported_unreadable(db_url: str, tmp_path: Path, command: list[str]) -> None:
    box = tmp_path / "only-a-separator.mbox"
    box.write_bytes(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n")
    result = run(db_url, *command[:2], str(box), *command[2:])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].endswith(", 1 unreadable")
    assert without_stage_lines(result.stderr) == (
        f"  unreadable: {box}#1: empty message: an mbox `From ` line with nothing after it\n")
