"""The short way through for piped ``classify --filter`` lines (spamtl.cli.entry) against the full parser.

Each case runs twice in a fresh process as a mail pipeline runs it, once as it comes and once with the short
way turned off (every line to Typer), and the bytes on stdout and stderr and the exit codes must be the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import blank_database, make_mail, run
from .test_loop import store  # noqa: F401 - the trained module-scoped store fixture

RUNNER = """
import os, sys
import spamtl.cli.entry as entry
if os.environ["FILTER_ENTRY_FULL"] == "1":
    entry._plain_filter = lambda *args: None  # every line to the full parser
try:
    entry.main()
finally:
    with open(os.environ["FILTER_ENTRY_REPORT"], "w") as fh:
        fh.write(f"{'typer' in sys.modules} {len(os.listdir('/proc/self/task'))}")
"""
"""Runs the console entry point and notes whether Typer was loaded and how many threads the process had."""

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store with its schema and no model."""
    with blank_database(tmp_path_factory.mktemp("untrained"), "untrained") as db:
        assert run(db, "init").exit_code == 0
        yield db


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("filter-entry")
    (tmp / "report.toml").write_text("filter_report = true\n")
    (tmp / "small.toml").write_text("max_message_bytes = 300\n")
    (tmp / "broken.toml").write_text("max_message_bytes = 'many'\n")
    return {p.stem: p for p in tmp.iterdir()}


def _spamtl(args: list[str], stdin: bytes, env: dict[str, str], report: Path, *,
            full: bool) -> tuple[int, bytes, str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS and k != "SPAMTL_DATABASE_URL"}
    home = report.parent / "home"  # never the real user's default store or configuration
    environment.update(XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    environment.update(env, FILTER_ENTRY_FULL="1" if full else "0", FILTER_ENTRY_REPORT=str(report))
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], input=stdin, capture_output=True, env=environment,
                          timeout=120)
    # A log line carries its process id and time.
    stderr = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", done.stderr.decode())
    return done.returncode, done.stdout, re.sub(r"spamtl\[\d+\]", "spamtl[PID]", stderr), report.read_text()


MAIL = make_mail("weekly newsletter digest 7", "this week in gardening news roses and tulips",
                 sender="news@garden.example")
BIG = make_mail("long", "word " * 200)

# id, argv (DB: the trained store's URL, UNTRAINED: a store without a model, CFG-x: a config file), stdin, env
CASES = [
    ("plain", ["classify", "--filter", "ann", "--db", "DB"], MAIL, {}),
    ("db-from-environment", ["classify", "--filter", "bob"], MAIL, {"SPAMTL_DATABASE_URL": "DB"}),
    ("db-option-equal-to-environment", ["classify", "--db", "DB", "--filter", "cat"], MAIL,
     {"SPAMTL_DATABASE_URL": "DB"}),
    ("db-inline", ["classify", "--filter", "--db=DB", "ann"], MAIL, {}),
    ("report", ["classify", "--filter", "--report", "ann", "--db", "DB"], MAIL, {}),
    ("exit-code", ["classify", "--filter", "--exit-code", "ann", "--db", "DB"], MAIL, {}),
    ("exit-code-report-json", ["classify", "--exit-code", "--format", "json", "--filter", "--report", "bob",
                               "--db", "DB"], MAIL, {}),
    ("config", ["--config", "CFG-report", "classify", "--filter", "ann", "--db", "DB"], MAIL, {}),
    ("config-inline", ["--config=CFG-report", "classify", "--filter", "cat", "--db", "DB"], MAIL, {}),
    ("config-from-environment", ["classify", "--filter", "ann", "--db", "DB"], MAIL,
     {"SPAMTL_CONFIG": "CFG-report"}),
    ("broken-config", ["--config", "CFG-broken", "classify", "--filter", "ann", "--db", "DB"], MAIL, {}),
    ("broken-config-exit-code", ["--config", "CFG-broken", "classify", "--filter", "--exit-code", "ann",
                                 "--db", "DB"], MAIL, {}),
    ("unknown-user", ["classify", "--filter", "zed", "--db", "DB"], MAIL, {}),
    ("bad-user-name", ["classify", "--filter", "a\tb", "--db", "DB"], MAIL, {}),
    ("user-named-like-an-option", ["classify", "--filter", "--help", "--db", "DB"], MAIL, {}),
    ("a-path-argument", ["classify", "--filter", "ann", "msg.eml", "--db", "DB"], MAIL, {}),
    ("oversized", ["--config", "CFG-small", "classify", "--filter", "ann", "--db", "DB"], BIG, {}),
    ("oversized-exit-code", ["classify", "--filter", "--exit-code", "ann", "--db", "DB"], BIG,
     {"SPAMTL_MAX_MESSAGE_BYTES": "300"}),
    ("empty-input", ["classify", "--filter", "ann", "--db", "DB"], b"", {}),
    ("not-mail", ["classify", "--filter", "--exit-code", "ann", "--db", "DB"], b"\x00\x01 not mail\n", {}),
    ("no-model", ["classify", "--filter", "ann", "--db", "UNTRAINED"], MAIL, {}),
    ("no-model-exit-code", ["classify", "--filter", "--exit-code", "ann", "--db", "UNTRAINED"], MAIL, {}),
    ("bad-db-url", ["classify", "--filter", "ann", "--db", "nosuchdriver://x"], MAIL, {}),
    ("empty-db-value", ["classify", "--filter", "ann", "--db", ""], MAIL, {"SPAMTL_DATABASE_URL": ""}),
    ("recipe-form", ["classify", "--filter", "--db", "DB", "--", "ann"], MAIL, {}),
    ("recipe-form-all-options", ["--config", "CFG-report", "classify", "--db=DB", "--filter", "--exit-code",
                                 "--", "bob"], MAIL, {}),
    ("recipe-form-user-like-an-option", ["classify", "--filter", "--db", "DB", "--", "--help"], MAIL, {}),
    ("recipe-form-no-user", ["classify", "--filter", "--exit-code", "--db", "DB", "--"], MAIL, {}),
    # Lines that go to the full parser either way: the same answer, and the parser's.
    ("word-before-double-dash", ["classify", "--filter", "ann", "--db", "DB", "--", "x"], MAIL, {}),
    ("value-then-double-dash", ["classify", "--filter", "--exit-code", "--db", "--", "ann"], MAIL, {}),
    ("unknown-option-before-double-dash", ["classify", "--filter", "-x", "--db", "DB", "--", "ann"], MAIL, {}),
    ("bad-format", ["classify", "--filter", "--exit-code", "--format", "yaml", "ann", "--db", "DB"], MAIL, {}),
    ("no-user", ["classify", "--filter", "--db", "DB"], MAIL, {}),
    ("repeated-option", ["classify", "--filter", "--report", "--report", "ann", "--db", "DB"], MAIL, {}),
    ("value-like-an-option", ["classify", "--filter", "--db", "--report", "ann"], MAIL, {}),
]
PARSER_ONLY = {"bad-format", "no-user", "repeated-option", "value-like-an-option", "recipe-form-no-user",
               "word-before-double-dash", "value-then-double-dash", "unknown-option-before-double-dash"}


def _fill(word: str, names: dict[str, str]) -> str:
    """``word`` with the placeholders of :data:`CASES` replaced (also after ``=``)."""
    for key, value in names.items():
        word = value if word == key else word.replace(f"={key}", f"={value}")
    return word


@pytest.mark.parametrize(("args", "stdin", "env"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_piped_filter_line_gives_what_the_full_parser_gives(
        store: dict[str, object], untrained: str, files: dict[str, Path], tmp_path: Path,  # noqa: F811
        args: list[str], stdin: bytes, env: dict[str, str], request: pytest.FixtureRequest) -> None:
    names = {"DB": str(store["db"]), "UNTRAINED": untrained, **{f"CFG-{k}": str(v) for k, v in files.items()}}
    argv, environment = [_fill(w, names) for w in args], {k: _fill(v, names) for k, v in env.items()}
    short = _spamtl(argv, stdin, environment, tmp_path / "short", full=False)
    full = _spamtl(argv, stdin, environment, tmp_path / "full", full=True)
    assert short[:3] == full[:3]
    assert full[3].startswith("True ")  # the comparison ran the full parser
    is_parser_only = request.node.callspec.id in PARSER_ONLY
    assert short[3].startswith(str(is_parser_only)), "the short way was not (or wrongly) taken"
    assert short[1].startswith(b"X-Spamtl-") or short[1] == b""  # the message came out (marked) either way


def test_what_the_cases_show(store: dict[str, object], files: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """The comparison is only as good as its cases: some of them must hit each outcome."""
    db = str(store["db"])
    code, out, err, _ = _spamtl(["classify", "--filter", "--exit-code", "--report", "ann", "--db", db], MAIL, {},
                                tmp_path / "r1", full=False)
    assert code in (0, 1, 2) and b"\nX-Spamtl-Report: " in out.split(b"\n\n", 1)[0] and err == ""
    code, out, err, _ = _spamtl(["--config", str(files["broken"]), "classify", "--filter", "--exit-code", "ann",
                                 "--db", db], MAIL, {}, tmp_path / "r2", full=False)
    assert (code, out) == (3, b"X-Spamtl-Status: error\n" + MAIL)
    assert err.startswith("Error: ") and err.endswith("(message passed through unfiltered)\n")
    code, out, err, _ = _spamtl(["classify", "--filter", "ann", "--db", db], BIG, {"SPAMTL_MAX_MESSAGE_BYTES": "300"},
                                tmp_path / "r3", full=False)
    assert (code, out, err) == (0, b"X-Spamtl-Status: skipped, larger than 300 bytes\n" + BIG, "")


def test_a_filter_process_starts_no_blas_threads(store: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    """One message has no use for a BLAS thread pool: its threads only cost CPU time as numpy loads."""
    for full in (False, True):
        _, out, _, report = _spamtl(["classify", "--filter", "ann", "--db", str(store["db"])], MAIL, {},
                                    tmp_path / f"threads{full}", full=full)
        assert out.startswith(b"X-Spamtl-Status: ") and report.split() == [str(full), "1"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["classify", "--filter", "--", "ann"], {"--filter": ""}),  # a recipe's own `--`
    (["classify", "--filter", "ann", "--", "x"], None),  # a word before it
    (["classify", "--filter", "--db", "--", "ann"], None),  # `--` as a value
    (["classify", "--", "--filter", "ann"], None),  # --filter as a user name
    (["--config", "c.toml", "--config", "d.toml", "classify", "--filter", "ann"], None),
    (["classify", "--filter", "--db", "u", "--db", "v", "ann"], None),
    (["classify", "--filter=yes", "ann"], None),
    (["classify", "--filter", "--format", "JSON", "ann"], None),
    (["classify", "--filter", "--db=-x", "ann"], None),
    (["--config=c.toml", "classify", "--filter", "--db", "u", "--format=json", "ann", "x", "y"],
     {"--config": "c.toml", "--filter": "", "--db": "u", "--format": "json"}),
    (["classify", "--exit-code", "--report", "ann", "--filter", "--db", ""],
     {"--exit-code": "", "--report": "", "--filter": "", "--db": ""}),
])
def test_which_lines_take_the_short_way(argv: list[str], expected: dict[str, str] | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from spamtl.cli import entry

    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    short = entry._short_line(argv)
    assert (None if short is None else entry._plain_filter(*short)) == expected


def _blocked_on_stdin(pid: int) -> bool:
    """The process waits in a read of its (empty) stdin pipe."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()  # pipe_read, anon_pipe_read (6.x), pipe_wait (old)
    except OSError:
        return False
    return wchan.endswith("pipe_read") or wchan == "pipe_wait"


@pytest.mark.parametrize("full", [False, True], ids=["short-way", "full-parser"])
@pytest.mark.parametrize("exit_code", [False, True], ids=["plain", "exit-code"])
def test_ctrl_c_while_waiting_for_the_message_is_aborted_not_a_traceback(
        store: dict[str, object], tmp_path: Path, full: bool, exit_code: bool) -> None:  # noqa: F811
    """Ctrl-C at a filter line typed by hand ends it as Typer ends every other command: exit 130 (the
    shell's code for SIGINT, never a verdict's), no traceback, the short way and the full parser alike."""
    import signal
    import time

    args = ["classify", "--filter", "ann", "--db", str(store["db"]), *(["--exit-code"] if exit_code else [])]
    environment = dict(os.environ, FILTER_ENTRY_FULL="1" if full else "0",
                       FILTER_ENTRY_REPORT=str(tmp_path / "report"))
    process = subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    try:
        deadline = time.monotonic() + 60
        while not _blocked_on_stdin(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _blocked_on_stdin(process.pid), "the filter never waited for its message"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out, err.decode()) == (130, b"", "")
