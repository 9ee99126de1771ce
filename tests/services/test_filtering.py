"""Filter mode as a delivery pipeline runs it: a fresh process per message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..cli.test_loop import store  # noqa: F401 - the trained module-scoped store fixture
from ..conftest import make_mail


def _spamtl(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            stdin_file: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    import os

    environment = {**os.environ, **(env or {})}
    if stdin_file is not None:
        with stdin_file.open("rb") as fh:
            return subprocess.run([sys.executable, "-m", "spamtl", *args], stdin=fh, capture_output=True,
                                  timeout=120, env=environment)
    return subprocess.run([sys.executable, "-m", "spamtl", *args], input=stdin, capture_output=True, timeout=120,
                          env=environment)


def test_an_oversized_message_streams_through_unscanned(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    big = tmp_path / "big.eml"
    with big.open("wb") as fh:
        fh.write(b"From: a@b.example\nSubject: huge\n\n")
        line = b"x" * 1023 + b"\n"
        for _ in range(60 * 1024):  # 60 MiB
            fh.write(line)
    # A child of its own, so that RUSAGE_CHILDREN's peak is this process alone (pytest's other
    # children, if any, are far smaller than the 60 MiB a whole read would take).
    measure = ("import resource, subprocess, sys\n"
               "with open(sys.argv[1], 'rb') as fh:\n"
               "    done = subprocess.run(sys.argv[2:], stdin=fh, stdout=subprocess.PIPE)\n"
               "sys.stdout.buffer.write(done.stdout)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
               "sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", measure, str(big), sys.executable, "-m", "spamtl", "classify", "ann",
                           "--filter", "--db", str(store["db"])], capture_output=True, timeout=300)
    assert done.returncode == 0
    out = done.stdout
    assert out.startswith(b"X-Spamtl-Status: skipped, larger than 512000 bytes\nFrom: a@b.example\n")
    assert len(out) == big.stat().st_size + len(b"X-Spamtl-Status: skipped, larger than 512000 bytes\n")
    assert out.endswith(b"x" * 1023 + b"\n")
    peak_kib = int(done.stderr.decode().strip().splitlines()[-1])
    assert peak_kib < 40 * 1024 + _baseline_kib(store), f"peak RSS {peak_kib} KiB: the message was held in memory"


def _baseline_kib(store) -> int:  # type: ignore[no-untyped-def]  # noqa: F811
    """Peak RSS of the same command on a one-line message."""
    measure = ("import resource, subprocess, sys\n"
               "subprocess.run(sys.argv[1:], input=b'Subject: x\\n\\nhi\\n', stdout=subprocess.DEVNULL)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "spamtl", "classify", "ann",
                           "--filter", "--db", str(store["db"])], capture_output=True, timeout=120)
    return int(done.stdout.decode().strip())


def test_the_header_id_round_trips_through_feedback(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    raw = make_mail("round trip", "a message to correct later", message_id="rt-1@example.org")
    tagged = _spamtl("classify", "cat", "--filter", "--db", db, stdin=raw)
    assert tagged.returncode == 0 and tagged.stderr == b""
    status = tagged.stdout.split(b"\n", 1)[0].decode()
    short = status.split("id=")[1].split(",")[0]
    assert len(short) == 12
    # The delivered copy (with spamtl's headers) is the same message: feedback by the header's id finds it ...
    fb = _spamtl("feedback", "cat", "--spam", "--id", short, "--format", "json", "--db", db)
    assert fb.returncode == 0, fb.stderr
    assert json.loads(fb.stdout)["sha256"].startswith(short)
    # ... and feeding back the delivered copy itself adds no second message.
    again = _spamtl("feedback", "cat", "--spam", "-", "--format", "json", "--db", db, stdin=tagged.stdout)
    assert json.loads(again.stdout)["sha256"].startswith(short)
    by_mid = _spamtl("feedback", "cat", "--spam", "--id", "<rt-1@example.org>", "--db", db)
    assert by_mid.returncode == 0, by_mid.stderr
    # A correction sticks: the same message, with or without spamtl's headers, is now cat's label.
    for body in (raw, tagged.stdout):
        verdict = _spamtl("classify", "cat", "-", "--format", "json", "--db", db, stdin=body)
        row = json.loads(verdict.stdout)
        assert row["verdict"] == "spam" and row["reason"] == "label"


def test_ambiguous_or_short_ids_are_refused(store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    short = _spamtl("feedback", "cat", "--spam", "--id", "abc", "--db", db)
    assert short.returncode == 1
    assert short.stderr.decode() == "Error: no stored message has id or Message-ID 'abc'; pass the message itself\n"


def test_cold_classify_imports_no_orm_no_migrations_no_solvers(store) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The filter path reads and logs through SQLAlchemy Core statements only (spamtl.store.statements)."""
    code = ("import sys, runpy; sys.argv = ['spamtl', 'classify', 'ann', '--filter', '--db', sys.argv[1]]\n"
            "try:\n runpy.run_module('spamtl', run_name='__main__')\nexcept SystemExit:\n pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'sklearn', 'scipy')\n"
            "             or m.startswith(('sqlalchemy.orm', 'spamtl.store.queries', 'spamtl.store.schema'))),"
            " file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(store["db"])], input=make_mail("hi", "there"),
                          capture_output=True, timeout=120)
    assert done.stdout.startswith(b"X-Spamtl-Status: ")
    assert done.stderr.decode().strip().splitlines()[-1] == "[]"


def _probability(out: bytes) -> str:
    status = out.split(b"\n", 1)[0].decode()
    assert status.startswith("X-Spamtl-Status: "), status
    return next(v for v in status.split(", ") if v.startswith("probability="))


def test_an_address_extension_is_the_users_own_mail(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """recipient_delimiter: mail for ann+news is scored with ann's part and logged under ann, and no user
    ann+news appears even with auto_create_users; without the setting ann+news is a stranger."""
    from ..conftest import count_rows

    db = str(store["db"])
    raw = Path(store["test_mail"]).read_bytes()
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config")}  # never the real user's configuration
    ann = _spamtl("classify", "--filter", "ann", "--db", db, stdin=raw, env=home)
    stranger = _spamtl("classify", "--filter", "ann+news", "--db", db, stdin=raw, env=home)
    assert _probability(ann.stdout) != _probability(stranger.stdout)  # ann calls this newsletter spam

    before = count_rows(db, "classifications", "WHERE user_id = (SELECT id FROM users WHERE name = 'ann')")
    extended = _spamtl("classify", "--filter", "ann+news", "--db", db, stdin=raw,
                       env={**home, "SPAMTL_RECIPIENT_DELIMITER": "+", "SPAMTL_AUTO_CREATE_USERS": "true"})
    assert extended.returncode == 0 and extended.stderr == b"", extended.stderr
    assert _probability(extended.stdout) == _probability(ann.stdout)
    assert count_rows(db, "classifications", "WHERE user_id = (SELECT id FROM users WHERE name = 'ann')") == before + 1
    assert count_rows(db, "users", "WHERE name = 'ann+news'") == 0


def test_a_user_named_with_the_delimiter_keeps_their_name(db_url: str, tmp_path: Path) -> None:
    """Postfix looks the whole address up first: a user really named eve+lists@ stays theirs; any other
    extension of eve's address is eve's."""
    from spamtl.services.classify import open_reader
    from spamtl.settings import Settings
    from spamtl.store.engine import make_engine

    from ..conftest import run, write_mbox

    mbox = write_mbox(tmp_path / "ham.mbox", [make_mail("hello", "a letter")])
    assert run(db_url, "import", "eve+lists@example.org", str(mbox), "-l", "ham").exit_code == 0
    engine = make_engine(db_url)
    try:
        for delimiters, asked, meant in [
                ("+", "eve+lists@example.org", "eve+lists@example.org"),
                ("+", "eve+shop@example.org", "eve@example.org"),
                ("+-", "eve-shop@example.org", "eve@example.org"),
                ("", "eve+shop@example.org", "eve+shop@example.org")]:
            reader = open_reader(engine, Settings(database_url=db_url, recipient_delimiter=delimiters))
            try:
                assert reader.recipient(asked) == meant, (delimiters, asked)
            finally:
                reader.store.close()
    finally:
        engine.dispose()
