"""Output people read right: both cutoffs wherever a verdict is shown, input that is
not mail skipped (never a confident verdict), unknown users said, feedback that creates no user
unasked, and bogofilter's exit codes on request."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spamtl.mail.headers import add_headers, not_mail_reason
from spamtl.services.classify import Verdict, skip_reason

from ..cli.test_loop import (
    _mails,
    run,
    store,  # noqa: F401 - the trained module-scoped store fixture
)
from ..conftest import count_rows, make_mail, write_mbox

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
NOT_MAIL = {
    "empty": (b"", "empty message"),
    "whitespace": (b" \r\n\t\n\n", "empty message"),
    "envelope-only": (b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n", "empty message"),
    "png": (PNG, "not mail: binary data"),
    "text": (b"Dear diary,\ntoday I wrote no headers.\n", "not mail: no header fields"),
    "blank-line-first": (b"\nSubject: after an empty header section\n\nbody\n", "not mail: no header fields"),
    "json": (b'{"subject": "x"}\n', "not mail: no header fields"),
}
MAIL = {
    "plain": b"Subject: hi\n\nbody\n",
    "crlf-envelope": b"From x@y Thu Jan  1 00:00:00 2004\r\nFrom: a@b.example\r\n\r\nbody\r\n",
    "leading-ws": b" NO\nSubject: x\n\nbody",
    "no-body": b"Subject: only a header",
    # Damage after a first field is still mail: a sender must not get unscanned delivery with a NUL or a junk line.
    "nul-in-header": b"Received: from x\nSubject: \x00\x00 win money\n\nbody\n",
    "junk-line-in-header": b"Received: from x\nthis is no field\nSubject: y\n\nbody\n",
    "binary-body": b"From: a@b.example\n\n" + PNG,
}
SPAM_LOOKING = _mails(9, "spam", 1)[0]


@pytest.mark.parametrize(("raw", "reason"), NOT_MAIL.values(), ids=NOT_MAIL.keys())
def test_what_is_not_mail(raw: bytes, reason: str) -> None:
    assert not_mail_reason(raw) == reason
    assert skip_reason(raw) == reason  # the one decision the CLI and the daemon call


@pytest.mark.parametrize("raw", MAIL.values(), ids=MAIL.keys())
def test_what_is_mail_even_damaged(raw: bytes) -> None:
    assert not_mail_reason(raw) is None and skip_reason(raw) is None


def _verdict(verdict: str = "ham", reason: str = "model") -> Verdict:
    return Verdict(user="ann" * 80, origin="<stdin>", message_id="x" * 900, sha256="3f2c9a1b7e4d" + "0" * 52,
                   verdict=verdict, probability=0.8035, model_version=123456, spam_cutoff=0.9837, ham_cutoff=0.85,
                   reason=reason)


STATUS = re.compile(r"(spam|ham|unsure), probability=(?P<p>[01]\.\d{4}), spam_cutoff=(?P<spam>[01]\.\d{4}), "
                    r"ham_cutoff=(?P<ham>[01]\.\d{4}), version=\d+, id=[0-9a-f]{12}(, label)?")


@pytest.mark.parametrize("reason", ["model", "label"])
def test_status_header_has_both_cutoffs_on_one_short_line(reason: str) -> None:
    value = _verdict("unsure", reason).header_value()
    match = STATUS.fullmatch(value)
    assert match and (match["spam"], match["ham"]) == ("0.9837", "0.8500")
    assert len(value) < 200 and "\n" not in value and "ann" not in value  # no user or Message-ID in it
    # A reader of the format before the ham cutoff was shown (the first "cutoff=") still gets the spam cutoff.
    assert value.split("cutoff=", 1)[1].split(",", 1)[0] == "0.9837"


def test_json_has_both_cutoffs() -> None:
    shown = _verdict().as_dict()
    assert (shown["spam_cutoff"], shown["ham_cutoff"]) == (0.9837, 0.85)


@pytest.fixture
def ann_cutoffs(store: dict[str, object]) -> Iterator[str]:  # noqa: F811
    """ann's cutoffs set as a trained model could set them (ham 0.85), undone afterwards."""
    db = str(store["db"])
    assert run(db, "cutoffs", "set", "ann", "--spam", "0.9837", "--ham", "0.85").exit_code == 0
    yield db
    assert run(db, "cutoffs", "unset", "ann").exit_code == 0


def test_every_verdict_shown_carries_both_cutoffs(ann_cutoffs: str, store: dict[str, object],  # noqa: F811
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, mail = ann_cutoffs, str(store["test_mail"])
    text = run(db, "classify", "ann", mail)
    assert "spam cutoff 0.9837, ham cutoff 0.8500" in text.stdout, text.stdout
    shown = json.loads(run(db, "classify", "ann", mail, "--format", "json").stdout)
    assert (shown["spam_cutoff"], shown["ham_cutoff"]) == (0.9837, 0.85)
    log = tmp_path / "spamtl.log"
    monkeypatch.setenv("SPAMTL_LOG_DESTINATION", str(log))
    monkeypatch.setenv("SPAMTL_LOG_LEVEL", "info")
    tagged = run(db, "classify", "ann", "--filter", input=Path(mail).read_bytes())
    status = tagged.stdout.splitlines()[0].removeprefix("X-Spamtl-Status: ")
    assert STATUS.fullmatch(status) and "spam_cutoff=0.9837, ham_cutoff=0.8500" in status, status
    assert "cutoff=0.9837 ham_cutoff=0.8500" in log.read_text()  # the log line too ("cutoff" kept: the spam one)
    explained = run(db, "explain", "ann", mail)
    assert "spam cutoff 0.9837, ham cutoff 0.8500 from set by administrator" in explained.stdout, explained.stdout
    reviewed = run(db, "review", "ann", "-n", "3")
    assert reviewed.stdout.startswith("ann's cutoffs: spam 0.9837, ham 0.8500"), reviewed.stdout
    items = json.loads(run(db, "review", "ann", "-n", "3", "--format", "json").stdout)
    assert items and all((i["spam_cutoff"], i["ham_cutoff"]) == (0.9837, 0.85) for i in items)


@pytest.mark.parametrize(("raw", "reason"), NOT_MAIL.values(), ids=NOT_MAIL.keys())
def test_filter_passes_what_is_not_mail_through_as_skipped(store: dict[str, object], raw: bytes,  # noqa: F811
                                                          reason: str) -> None:
    db = str(store["db"])
    before = count_rows(db, "classifications"), count_rows(db, "messages")
    result = run(db, "classify", "ann", "--filter", input=raw)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout_bytes == add_headers(raw, [("X-Spamtl-Status", f"skipped, {reason}")])
    assert (count_rows(db, "classifications"), count_rows(db, "messages")) == before  # nothing logged


def test_filter_still_scores_damaged_mail(store: dict[str, object]) -> None:  # noqa: F811
    raw = MAIL["nul-in-header"] + SPAM_LOOKING
    status = run(str(store["db"]), "classify", "ann", "--filter", input=raw).stdout_bytes.split(b"\n", 1)[0]
    assert STATUS.fullmatch(status.decode().removeprefix("X-Spamtl-Status: ")), status


def test_files_and_mailboxes_report_skipped_entries(store: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    db = str(store["db"])
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    result = run(db, "classify", "ann", str(empty))
    assert (result.exit_code, result.stdout) == (0, f"{empty}: skipped (empty message)\n")
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "1.eml").write_bytes(SPAM_LOOKING)
    (folder / "2.png").write_bytes(PNG)
    (folder / "3.eml").write_bytes(b"\n\n")
    before = count_rows(db, "classifications")
    lines = run(db, "classify", "ann", str(folder)).stdout.splitlines()
    assert [line.split(": ", 1)[1].split(" ", 1)[0] for line in sorted(lines)] == ["spam", "skipped", "skipped"]
    assert f"{folder / '2.png'}: skipped (not mail: binary data)" in lines
    shown = run(db, "classify", "ann", str(folder), "--format", "json").stdout
    rows = [json.loads(line) for line in shown.splitlines()]
    skipped = sorted((r["origin"], r["skip_reason"]) for r in rows if r["verdict"] == "skipped")
    assert skipped == [(str(folder / "2.png"), "not mail: binary data"), (str(folder / "3.eml"), "empty message")]
    assert count_rows(db, "classifications") == before + 2  # only the mail, once per run
    # An mbox entry without headers (read as a message, unlike a whole file that is not mail), and stdin.
    box = tmp_path / "box.mbox"
    box.write_bytes(b"From a Thu Jan  1 00:00:00 2004\nno headers at all\n\n"
                    b"From b Thu Jan  1 00:00:00 2004\n" + SPAM_LOOKING)
    lines = run(db, "classify", "ann", str(box)).stdout.splitlines()
    assert lines[0] == f"{box}#1: skipped (not mail: no header fields)" and ": spam (probability" in lines[1]
    assert run(db, "classify", "ann", input=b"").stdout == "<stdin>: skipped (empty message)\n"
    assert count_rows(db, "classifications") == before + 3


UNKNOWN = "spamtl: unknown user 'bbo'; scored with the shared model, verdicts not stored (see spamtl users)\n"


def test_an_unknown_user_is_said_once_on_stderr_and_in_the_log(store: dict[str, object], tmp_path: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db, raw = str(store["db"]), Path(store["test_mail"]).read_bytes()
    assert run(db, "classify", "ann", "--filter", input=raw).stderr == ""  # a known user: nothing
    # The default log goes to stderr at level warning: the log line is the one line there.
    said = run(db, "classify", "bbo", "--filter", input=raw).stderr
    assert said.count("\n") == 1 and "level=warning event=unknown_user user=bbo" in said, said
    log = tmp_path / "spamtl.log"
    monkeypatch.setenv("SPAMTL_LOG_DESTINATION", str(log))
    for args in (["classify", "bbo", "--filter"], ["classify", "bbo"]):
        result = run(db, *args, input=raw)
        assert (result.exit_code, result.stderr) == (0, UNKNOWN)
    assert log.read_text().count("event=unknown_user user=bbo") == 2
    monkeypatch.setenv("SPAMTL_LOG_DESTINATION", "none")
    assert run(db, "classify", "bbo", "--filter", input=raw).stderr == UNKNOWN


def test_feedback_creates_a_user_only_when_asked(store: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    from datetime import datetime

    from spamtl.errors import UnknownUserError
    from spamtl.services.feedback import record_feedback
    from spamtl.settings import Settings
    from spamtl.store.engine import make_engine

    db = str(store["db"])
    settings, engine = Settings(database_url=db), make_engine(db)
    raw = make_mail("told by a daemon", "a message nobody stored yet")
    counts = [count_rows(db, t) for t in ("users", "messages", "labels")]
    try:
        with pytest.raises(UnknownUserError, match="no user 'newbie' in the store"):
            record_feedback(engine, settings, user="newbie", label="spam", raw=raw, now=datetime(2026, 1, 1),
                            create_user=False)  # the daemon's TELL without auto_create_users
        assert [count_rows(db, t) for t in ("users", "messages", "labels")] == counts  # nothing stored
        known = record_feedback(engine, settings, user="ann", label="ham", raw=raw, now=datetime(2026, 1, 1),
                                create_user=False)
        assert known.user_created is False and known.label == "ham"
    finally:
        engine.dispose()
    message = tmp_path / "m.eml"
    message.write_bytes(raw)
    result = run(db, "feedback", "newbie", "--spam", str(message))  # an administrator, on purpose: created
    assert result.exit_code == 0
    assert result.stderr == "note: new user 'newbie' registered by this label (see spamtl users)\n"
    assert count_rows(db, "users") == counts[0] + 1


@pytest.fixture
def cat_at(store: dict[str, object]) -> Iterator[object]:  # noqa: F811
    """Set cat's cutoffs so that any message gets the verdict asked for; undone afterwards."""
    db = str(store["db"])

    def at(verdict: str) -> None:
        spam, ham = {"spam": ("0.000001", "0"), "ham": ("1", "0.999999"), "unsure": ("1", "0")}[verdict]
        assert run(db, "cutoffs", "set", "cat", "--spam", spam, "--ham", ham).exit_code == 0

    yield at
    run(db, "cutoffs", "unset", "cat")


@pytest.mark.parametrize(("verdict", "code"), [("spam", 0), ("ham", 1), ("unsure", 2)])
def test_exit_code_is_the_verdict_on_request(store: dict[str, object], cat_at, verdict: str,  # noqa: F811
                                             code: int) -> None:
    db, mail = str(store["db"]), str(store["test_mail"])
    cat_at(verdict)
    result = run(db, "classify", "cat", mail, "--exit-code")
    assert (result.exit_code, result.stdout.split(": ", 1)[1].split(" ", 1)[0]) == (code, verdict)
    assert run(db, "classify", "cat", mail).exit_code == 0  # only on request
    tagged = run(db, "classify", "cat", "--filter", "--exit-code", input=Path(mail).read_bytes())
    assert tagged.exit_code == code and tagged.stdout.startswith(f"X-Spamtl-Status: {verdict}, ")
    assert run(db, "classify", "cat", "--filter", input=Path(mail).read_bytes()).exit_code == 0


def test_exit_code_for_skipped_and_errors(store: dict[str, object], tmp_path: Path,  # noqa: F811
                                          blank_db_url: str) -> None:
    db = str(store["db"])
    assert run(db, "classify", "cat", "--exit-code", input=b"").exit_code == 1  # skipped: delivered as ham
    assert run(db, "classify", "cat", "--filter", "--exit-code", input=b"").exit_code == 1
    big = b"Subject: big\n\n" + b"x" * 600_000
    oversized = run(db, "classify", "cat", "--filter", "--exit-code", input=big)
    assert oversized.exit_code == 1 and oversized.stdout.startswith("X-Spamtl-Status: skipped, larger than")
    # Errors: 3, never a verdict's code (no database here; in filter mode the mail still comes out).
    raw = make_mail("hello", "words")
    failed = run(blank_db_url, "classify", "cat", "--exit-code", input=raw)
    assert failed.exit_code == 3 and failed.stderr.startswith("Error: ")
    filtered = run(blank_db_url, "classify", "cat", "--filter", "--exit-code", input=raw)
    assert (filtered.exit_code, filtered.stdout_bytes) == (3, add_headers(raw, [("X-Spamtl-Status", "error")]))
    # More than one message: refused before anything is classified.
    before = count_rows(db, "classifications")
    two = write_mbox(tmp_path / "two.mbox", [raw, make_mail("again", "more words")])
    refused = run(db, "classify", "cat", str(two), "--exit-code")
    assert refused.exit_code == 3 and refused.stdout == ""
    assert refused.stderr == f"Error: --exit-code gives the verdict of one message; {two} holds more than one message\n"
    assert run(db, "classify", "cat", str(two), str(two), "--exit-code").exit_code == 3
    assert count_rows(db, "classifications") == before
    one = write_mbox(tmp_path / "one.mbox", [raw])
    assert run(db, "classify", "cat", str(one), "--exit-code").exit_code in (0, 1, 2)


def test_exit_code_in_a_pipeline(store: dict[str, object]) -> None:  # noqa: F811
    """As a recipe runs it: --exit-code is an option even without `--`, and a wrong command line exits 3."""
    raw = Path(store["test_mail"]).read_bytes()

    def spamtl(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "spamtl", "classify", *args, "--db", str(store["db"])],
                              input=raw, capture_output=True, timeout=120)

    done = spamtl("--filter", "--exit-code", "ann")
    assert done.returncode in (0, 1, 2) and done.stdout.startswith(b"X-Spamtl-Status: ") and done.stderr == b""
    wrong = spamtl("--filter", "--exit-code", "--format", "yaml", "ann")
    assert wrong.returncode == 3 and wrong.stdout == add_headers(raw, [("X-Spamtl-Status", "error")])
    assert spamtl("--exit-code", "--bogus", "ann").returncode == 3
    assert spamtl("--bogus", "ann").returncode == 2  # without --exit-code: the parser's usual 2
