"""``spamtl serve`` end to end: Debian's real spamc, TELL, freshness, isolation, limits, fuzzing, signals."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..cli.test_loop import _mails, run
from ..conftest import make_mail, write_mbox

runner = CliRunner()
SPAMC = shutil.which("spamc")
needs_spamc = pytest.mark.skipif(SPAMC is None, reason="spamc is not installed (apt-get install spamc)")




NEWSLETTER = make_mail("weekly newsletter digest 99", "this week in gardening news roses tulips",
                       sender="news@garden.example", message_id="news99@garden.example")
SPAM = make_mail("win the lottery now 99", "claim your prize viagra casino golf hotel", sender="x@cheap-1.example")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A trained store with alice, bob and carol, who all read the newsletter (ham)."""
    tmp = tmp_path_factory.mktemp("serve")
    db = f"sqlite:///{tmp / 'serve.sqlite3'}"
    assert run(db, "init").exit_code == 0
    for user in ("alice", "bob", "carol"):
        spam = write_mbox(tmp / f"{user}-spam.mbox", _mails(1, "spam", 25))
        ham = write_mbox(tmp / f"{user}-ham.mbox", _mails(3, user, 30) + _mails(2, "newsletter", 15))
        assert run(db, "import", user, str(spam), "-l", "spam").exit_code == 0
        assert run(db, "import", user, str(ham), "-l", "ham").exit_code == 0
    # Per-user spam cutoffs off (target_ham_fpr = 0): every user keeps the global 0.90 (5.0 points).
    result = runner.invoke(app, ["train", "--format", "json", "--db", db], env={"SPAMTL_TARGET_HAM_FPR": "0"},
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"db": db, "tmp": tmp}


class Daemon:
    def __init__(self, db: str, tmp: Path, *args: str) -> None:
        self.socket_path = str(tmp / f"spamd-{os.getpid()}-{time.monotonic_ns()}.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spamtl", "serve", "--db", db, "--port", "0", "--socket", self.socket_path, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.proc.kill()
            raise AssertionError(f"daemon did not start: {line!r} {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
        self.port = int(match.group(1))

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode()

    def exchange(self, data: bytes, timeout: float = 20.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while block := sock.recv(65536):
                chunks.append(block)
        return b"".join(chunks)

    def request(self, command: str, raw: bytes, user: str | None = None, **headers: str) -> bytes:
        lines = [f"{command} SPAMC/1.5", f"Content-length: {len(raw)}"]
        if user is not None:
            lines.append(f"User: {user}")
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        return self.exchange(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)

    def spamc(self, *args: str, user: str = "alice", raw: bytes = NEWSLETTER, unix: bool = False):  # type: ignore[no-untyped-def]
        where = ["-U", self.socket_path] if unix else ["-p", str(self.port)]
        return subprocess.run([SPAMC or "spamc", *where, "-u", user, *args], input=raw, capture_output=True,
                              timeout=60)


@pytest.fixture(scope="module")
def daemon(store: dict[str, object]) -> Iterator[Daemon]:
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2", "--timeout", "5", "--allow-tell")
    yield d
    code, err = d.stop()
    assert code == 0, err


def status(response: bytes) -> dict[str, str]:
    """Facts of the X-Spamtl-Status header in a PROCESS answer."""
    match = re.search(rb"X-Spamtl-Status: (\w+), (.*)\r?\n", response)
    assert match is not None, response[:300]
    facts = dict(kv.split("=", 1) for kv in match.group(2).decode().strip().split(", ") if "=" in kv)
    facts["verdict"] = match.group(1).decode()
    return facts


def probabilities(db: str, user: str, subject: str | None = None) -> list[float]:
    """The user's logged probabilities in log order (of the messages with ``subject`` only, if given)."""
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return [r[0] for r in con.execute(
            "SELECT c.probability FROM classifications c JOIN users u ON u.id = c.user_id "
            "JOIN messages m ON m.id = c.message_id WHERE u.name = ? AND (? IS NULL OR m.subject = ?) "
            "ORDER BY c.id", (user, subject, subject))]
    finally:
        con.close()


def logged(db: str, user: str, count: int, subject: str | None = None) -> list[float]:
    """The user's logged probabilities once there are at least ``count`` (the daemon answers, then logs).

    Give ``subject`` when earlier requests may still be queued in a worker's verdict writer (group
    commit): counting all of a user's rows would then take an earlier verdict for this one.
    """
    deadline = time.monotonic() + 10
    while len(found := probabilities(db, user, subject)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def labels(db: str, user: str) -> list[tuple[str, str]]:
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return list(con.execute(
            "SELECT m.sha256, l.label FROM labels l JOIN users u ON u.id = l.user_id "
            "JOIN messages m ON m.id = l.message_id WHERE u.name = ? AND l.source = 'feedback' ORDER BY l.id",
            (user,)))
    finally:
        con.close()


# ------------------------------------------------------------------ the protocol, raw
def test_ping(daemon: Daemon) -> None:
    assert daemon.exchange(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"


def test_check_answers_spam_line(daemon: Daemon) -> None:
    spam = daemon.request("CHECK", SPAM, user="alice")
    assert re.fullmatch(rb"SPAMD/1\.5 0 EX_OK\r\nSpam: True ; (\d+\.\d) / 5\.0\r\n\r\n", spam), spam
    ham = daemon.request("CHECK", NEWSLETTER, user="alice")
    assert re.fullmatch(rb"SPAMD/1\.5 0 EX_OK\r\nSpam: False ; (-?\d+\.\d) / 5\.0\r\n\r\n", ham), ham


def sa_points(p: float, spam_cutoff: float, ham_cutoff: float) -> float:
    """SpamAssassin points as docs/serving.md defines them, written out here on their own (not spamtl's code):
    0 at the ham cutoff, 5 at the spam cutoff, linear in log-odds, 5 points per band (at least 1 log-odds)."""
    def z(q: float) -> float:
        q = min(max(q, 1e-9), 1 - 1e-9)
        return math.log(q / (1 - q))
    a, b, x = z(ham_cutoff), z(spam_cutoff), z(p)
    per = 5 / max(b - a, 1.0)
    points = 5 + per * (x - b) if x >= b else per * (x - a) if x <= a else 5 * (x - a) / (b - a)
    return max(-100.0, min(100.0, points))


def cutoffs(daemon: Daemon, raw: bytes, user: str) -> tuple[float, float]:
    """The user's (spam, ham) cutoffs, as the REPORT body states them."""
    report = daemon.request("REPORT", raw, user=user).decode()
    found = re.search(r"spam cutoff (\d\.\d{4}), ham cutoff (\d\.\d{4})", report)
    assert found is not None, report
    return float(found.group(1)), float(found.group(2))


@pytest.mark.parametrize(("subject", "body", "verdict"), [
    ("win the lottery now 31", "claim your prize viagra casino golf hotel", "spam"),
    ("weekly newsletter digest 31", "this week in gardening news roses tulips", "ham"),
], ids=["spam", "ham"])
def test_scores_are_on_spamassassins_scale(daemon: Daemon, store: dict[str, object], subject: str, body: str,
                                           verdict: str) -> None:
    """S / 5.0 everywhere: S is the stored probability mapped by the documented formula, in the verdict's range."""
    sender = "x@cheap-1.example" if verdict == "spam" else "news@garden.example"
    mail = make_mail(subject, body, sender=sender)
    spam_cutoff, ham_cutoff = cutoffs(daemon, mail, "alice")
    out = daemon.request("CHECK", mail, user="alice")
    found = re.fullmatch(rb"SPAMD/1\.5 0 EX_OK\r\nSpam: (True|False) ; (-?\d+\.\d) / 5\.0\r\n\r\n", out)
    assert found is not None, out
    probability = logged(str(store["db"]), "alice", 2, subject)[-1]
    assert (found.group(1) == b"True") == (verdict == "spam") == (probability >= spam_cutoff)
    score = float(found.group(2))
    assert score == pytest.approx(sa_points(probability, spam_cutoff, ham_cutoff), abs=0.051)
    assert (score >= 5.0) if verdict == "spam" else (score <= 0.0)


def test_process_and_headers_add_the_filter_headers(daemon: Daemon) -> None:
    out = daemon.request("PROCESS", SPAM, user="alice")
    head, _, body = out.partition(b"\r\n\r\n")
    assert int(re.search(rb"Content-length: (\d+)", head).group(1)) == len(body)  # type: ignore[union-attr]
    assert body.startswith(b"X-Spamtl-Status: spam, probability=") and b"\nX-Spam-Flag: YES\n" in body
    assert body.endswith(SPAM)
    headers = daemon.request("HEADERS", SPAM, user="alice").partition(b"\r\n\r\n")[2]
    assert headers == body[:body.index(b"\n\n") + 2]


SA_HEADERS = re.compile(  # SpamAssassin's default layout (rules/10_default_prefs.cf), after X-Spamtl-Status
    r"^X-Spamtl-Status: [^\n]*\n(X-Spam-Flag: YES\n)?X-Spam-Level: (\**)\n"
    r"X-Spam-Status: (Yes|No), score=(-?\d+\.\d) required=5\.0 tests=([A-Z_]+(?:,[A-Z_]+)*|none) "
    r"autolearn=no version=spamtl-(\d+\.\d+\.\d+\S*)\n", re.M)


def sa_headers(process_answer: bytes) -> tuple[bool, str, float, list[str], str, float]:
    """(X-Spam-Flag: YES present, stars, score, tests, version, S of the Spam header) of a PROCESS answer."""
    head, _, body = process_answer.partition(b"\r\n\r\n")
    spam_line = re.search(rb"\r\nSpam: (?:True|False) ; (-?\d+\.\d) / 5\.0\r\n", head + b"\r\n")
    found = SA_HEADERS.search(body.decode("utf-8", "replace"))
    assert found is not None and spam_line is not None, body[:500]
    is_flagged = found.group(1) is not None
    assert is_flagged == (found.group(3) == "Yes")  # the flag for spam only, Yes for spam only
    return (is_flagged, found.group(2), float(found.group(4)), found.group(5).split(","), found.group(6),
            float(spam_line.group(1)))


@pytest.mark.parametrize(("raw", "verdict"), [(SPAM, "spam"), (NEWSLETTER, "ham")], ids=["spam", "ham"])
def test_process_adds_spamassassins_headers(daemon: Daemon, raw: bytes, verdict: str) -> None:
    import spamtl

    out = daemon.request("PROCESS", raw, user="alice")
    assert status(out)["verdict"] == verdict
    is_flagged, stars, score, tests, version, shown = sa_headers(out)
    assert version == spamtl.__version__
    assert is_flagged == (verdict == "spam") and score == shown  # the score the Spam header says
    assert stars == "*" * min(50, max(0, int(score)))  # one per whole point; an empty value below 1
    assert (score >= 5.0) == (verdict == "spam")
    # tests= names the parts of the score as SYMBOLS does, sorted as SpamAssassin sorts them
    symbols = daemon.request("SYMBOLS", raw, user="alice").split(b"\r\n\r\n", 1)[1].decode().split(",")
    assert tests == symbols == sorted(symbols)
    assert f"SPAMTL_{verdict.upper()}" in tests and any(t.startswith("SPAMTL_SHARED_") for t in tests)
    headers = daemon.request("HEADERS", raw, user="alice")
    assert sa_headers(headers)[:5] == (is_flagged, stars, score, tests, version)


def test_unsure_mail_scores_between_0_and_5(daemon: Daemon, store: dict[str, object]) -> None:
    """With carol's cutoffs 0.9999 / 0.01 (an administrator's), both test mails are unsure: 0 < S < 5,
    X-Spam-Status: No, no flag.  By hand: a = ln(0.01 / 0.99) = -4.5951, b = ln 9999 = 9.2102, S = 5 (z - a) / 13.8053."""
    db = str(store["db"])
    assert run(db, "cutoffs", "set", "carol", "--spam", "0.9999", "--ham", "0.01").exit_code == 0
    try:
        time.sleep(0.6)  # past the refresh interval of both workers
        for subject, body, sender in [("win the lottery now 32", "claim your prize viagra casino golf hotel",
                                       "x@cheap-1.example"),
                                      ("weekly newsletter digest 32", "this week in gardening news roses tulips",
                                       "news@garden.example")]:
            out = daemon.request("PROCESS", make_mail(subject, body, sender=sender), user="carol")
            assert status(out)["verdict"] == "unsure", out[:400]
            is_flagged, stars, score, tests, _, shown = sa_headers(out)
            z = math.log((p := logged(db, "carol", 1, subject)[-1]) / (1 - p))
            assert score == shown == pytest.approx(5 * (z + 4.5951) / 13.8053, abs=0.051)
            assert 0.0 < score < 5.0 and not is_flagged and stars == "*" * int(score)
            assert "SPAMTL_UNSURE" in tests
    finally:
        assert run(db, "cutoffs", "unset", "carol").exit_code == 0
        time.sleep(0.6)


def test_report_symbols_and_report_ifspam(daemon: Daemon) -> None:
    report = daemon.request("REPORT", SPAM, user="alice").decode()
    assert "spamtl verdict for alice: spam\n" in report and "decided by the model" in report
    # The breakdown of `spamtl explain`: one line per part, with evidence named by token, and the
    # parts' totals add up to the score S = 10 * logit shown in the Spam header.
    totals = [float(m) for m in re.findall(r"^ *([+-]\d+\.\d\d)  (?:shared|group|personal)", report, re.M)]
    assert len(totals) >= 2 and re.search(r"^ *[+-]\d+\.\d\d    \S+:", report, re.M)
    score = float(re.search(r"Spam: True ; (-?\d+\.\d) /", report).group(1))  # type: ignore[union-attr]
    # the score is the parts' log-odds on SpamAssassin's scale (parts shown to 0.01: 0.1 points of slack)
    spam_cutoff, ham_cutoff = (float(c) for c in re.search(  # type: ignore[union-attr]
        r"spam cutoff (\d\.\d{4}), ham cutoff (\d\.\d{4})", report).groups())
    logodds = sum(totals)
    assert abs(sa_points(1 / (1 + math.exp(-logodds)), spam_cutoff, ham_cutoff) - score) < 0.15
    assert "score / threshold (SpamAssassin points): " + f"{score:.1f} / 5.0\n" in report
    symbols = daemon.request("SYMBOLS", SPAM, user="alice").split(b"\r\n\r\n", 1)[1].split(b",")
    assert b"SPAMTL_SPAM" in symbols and b"SPAMTL_SHARED_SPAM" in symbols and symbols == sorted(symbols)
    ifspam = daemon.request("REPORT_IFSPAM", NEWSLETTER, user="alice")
    assert re.fullmatch(rb"SPAMD/1\.5 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -?\d+\.\d / 5\.0\r\n\r\n", ifspam)
    assert b"spamtl verdict for alice: spam" in daemon.request("REPORT_IFSPAM", SPAM, user="alice")


def test_compressed_request(daemon: Daemon) -> None:
    import zlib

    packed = zlib.compress(SPAM)
    out = daemon.exchange(f"CHECK SPAMC/1.5\r\nUser: alice\r\nCompress: zlib\r\nContent-length: {len(packed)}\r\n\r\n"
                          .encode() + packed)
    assert out.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; ")


def test_bad_user_name_is_refused(daemon: Daemon) -> None:
    out = daemon.request("CHECK", SPAM, user="-rf")
    assert out == (b"SPAMD/1.5 67 the user name '-rf' starts with '-'; names must not look like options\r\n\r\n")


def test_no_user_header_uses_the_shared_model(daemon: Daemon, store: dict[str, object]) -> None:
    before = len(probabilities(str(store["db"]), ""))
    out = daemon.request("PROCESS", SPAM)
    assert status(out)["verdict"] == "spam"
    assert len(probabilities(str(store["db"]), "")) == before == 0  # nobody's log, no user "" created


def test_every_verdict_is_logged(daemon: Daemon, store: dict[str, object]) -> None:
    db = str(store["db"])
    before = len(probabilities(db, "carol"))
    for _ in range(3):
        daemon.request("CHECK", SPAM, user="carol")
    assert len(logged(db, "carol", before + 3)) == before + 3


# ------------------------------------------------------------------ the real spamc
@needs_spamc
def test_spamc_check_mode_and_exit_codes(daemon: Daemon) -> None:
    spam = daemon.spamc("-c", raw=SPAM)
    assert spam.returncode == 1 and re.fullmatch(r"\d+\.\d/5\.0\n", spam.stdout.decode()), spam
    assert float(spam.stdout.decode().split("/")[0]) >= 5.0
    ham = daemon.spamc("-c", raw=NEWSLETTER, unix=True)
    assert ham.returncode == 0 and re.fullmatch(r"-?\d+\.\d/5\.0\n", ham.stdout.decode()), ham
    assert float(ham.stdout.decode().split("/")[0]) < 5.0


@needs_spamc
def test_spamc_filter_report_symbols(daemon: Daemon) -> None:
    filtered = daemon.spamc(raw=SPAM)
    assert filtered.returncode == 0
    assert filtered.stdout.startswith(b"X-Spamtl-Status: spam, ") and filtered.stdout.endswith(SPAM)
    found = SA_HEADERS.match(filtered.stdout.decode("utf-8", "replace"))
    assert found is not None and found.group(1) and found.group(3) == "Yes", filtered.stdout[:400]
    assert float(found.group(4)) >= 5.0 and len(found.group(2)) == min(50, int(float(found.group(4))))
    ham = daemon.spamc(raw=NEWSLETTER).stdout.decode("utf-8", "replace")
    found = SA_HEADERS.match(ham)
    assert found is not None and not found.group(1) and found.group(3) == "No" and float(found.group(4)) < 5.0, ham
    report = daemon.spamc("-R", raw=SPAM)
    assert report.returncode == 0 and b"spamtl verdict for alice: spam" in report.stdout  # -R exits 0 (spamc)
    assert b"SPAMTL_SPAM" in daemon.spamc("-y", raw=SPAM).stdout.strip().split(b",")
    assert daemon.spamc("-K").returncode == 0


@needs_spamc
def test_spamc_learn_and_forget(daemon: Daemon, store: dict[str, object]) -> None:
    db = str(store["db"])
    mail = make_mail("weekly newsletter digest 77", "this week in gardening news lilies", sender="news@garden.example")
    assert status(daemon.request("PROCESS", mail, user="alice"))["verdict"] == "ham"
    learned = daemon.spamc("-L", "spam", raw=mail)
    assert learned.returncode == 0 and learned.stdout == b"Message successfully un/learned\n", learned
    assert [label for _, label in labels(db, "alice")][-1] == "spam"
    again = daemon.spamc("-L", "spam", raw=mail)  # as spamd: a label the user already has is not learnt again
    assert again.returncode == 0 and again.stdout == b"Message was already un/learned\n", again
    assert [label for _, label in labels(db, "alice")][-1] == "spam"
    after = status(daemon.request("PROCESS", mail, user="alice"))
    assert after["verdict"] == "spam"  # a correction sticks at once (the label decides)
    assert b", label\n" in daemon.request("PROCESS", mail, user="alice")
    assert daemon.spamc("-c", raw=mail).returncode == 1
    forgot = daemon.spamc("-L", "forget", raw=mail)
    assert forgot.returncode == 0 and forgot.stdout == b"Message successfully un/learned\n"
    assert not [sha for sha, _ in labels(db, "alice") if sha.startswith(after["id"])]
    assert daemon.spamc("-L", "forget", raw=mail).stdout == b"Message was already un/learned\n"
    forgotten = daemon.request("PROCESS", mail, user="alice")
    assert re.search(rb"X-Spamtl-Status: \w+, probability=[^\n]*id=[0-9a-f]{12}\n", forgotten)  # no ", label"


@needs_spamc
def test_spamc_report_and_revoke(daemon: Daemon, store: dict[str, object]) -> None:
    """spamc -C report sends Message-class: spam, Set: local,remote and wants DidSet: remote; -C revoke sends
    Message-class: ham, Set: local, Remove: remote and wants DidRemove: remote (libspamc's message_tell)."""
    db = str(store["db"])
    mail = make_mail("weekly newsletter digest 78", "this week in gardening news orchids", sender="news@garden.example")
    sha = status(daemon.request("PROCESS", mail, user="bob"))["id"]
    for _ in range(2):  # again: reported (the label stays stored), though already learned
        reported = daemon.spamc("-C", "report", raw=mail, user="bob")
        assert reported.returncode == 0 and reported.stdout == b"Message successfully reported/revoked\n", reported
        assert [label for s, label in labels(db, "bob") if s.startswith(sha)][-1] == "spam"
    for _ in range(2):
        revoked = daemon.spamc("-C", "revoke", raw=mail, user="bob")
        assert revoked.returncode == 0 and revoked.stdout == b"Message successfully reported/revoked\n", revoked
        assert [label for s, label in labels(db, "bob") if s.startswith(sha)][-1] == "ham"
    assert daemon.spamc("-L", "ham", raw=mail, user="bob").stdout == b"Message was already un/learned\n"
    assert daemon.spamc("-L", "forget", raw=mail, user="bob").stdout == b"Message successfully un/learned\n"


def test_spamtl_tell_treats_already_learned_as_stored(daemon: Daemon, store: dict[str, object]) -> None:
    """`spamtl tell` exits 0 on a new label and on one the user already had (no DidSet: local, Spamtl-Label
    says it is stored), and for a forget of a label that is not there."""
    db = str(store["db"])
    mail = make_mail("weekly newsletter digest 79", "this week in gardening news asters", sender="news@garden.example")
    sha = status(daemon.request("PROCESS", mail, user="carol"))["id"]
    for label in ("spam", "spam", "ham", "ham", "forget", "forget"):
        result = runner.invoke(app, ["tell", "--port", str(daemon.port), "--user", "carol", f"--{label}"], input=mail)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", ""), (label, result.stderr)
        stored = [lab for s, lab in labels(db, "carol") if s.startswith(sha)]
        assert (stored[-1] if stored else "forget") == label


MILTER_SCRIPT = """\
-- One SMTP transaction through the milter (miltertest, opendkim's): print its reply and the headers it added.
local conn = mt.connect("unix:" .. os.getenv("MILTER_SOCK"), 40, 0.25)
if conn == nil then error("cannot connect to the milter") end
if mt.conninfo(conn, "client.example", "192.0.2.7") ~= nil then error("conninfo") end
if mt.helo(conn, "client.example") ~= nil then error("helo") end
mt.macro(conn, SMFIC_MAIL, "i", "4AB3C21")
if mt.mailfrom(conn, "<sender@example.org>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<alice@example.net>") ~= nil then error("rcptto") end
for line in string.gmatch(os.getenv("MAIL_HEADERS"), "[^\\n]+") do
  local name, value = string.match(line, "^([^:]+): (.*)$")
  if mt.header(conn, name, value) ~= nil then error("header") end
end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, os.getenv("MAIL_BODY")) ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
mt.echo("REPLY " .. string.char(mt.getreply(conn)))
for _, name in ipairs({"X-Spam-Flag", "X-Spam-Level", "X-Spam-Status"}) do
  local value = mt.getheader(conn, name, 0)
  if value ~= nil then mt.echo(name .. ": " .. value) end
end
mt.disconnect(conn)
"""


@pytest.mark.skipif(not (SPAMC and shutil.which("spamass-milter") and shutil.which("miltertest")),
                    reason="needs spamc, spamass-milter and miltertest (apt-get install spamass-milter miltertest)")
def test_spamass_milter(daemon: Daemon, tmp_path: Path) -> None:
    """Debian's spamass-milter (which runs spamc) adds the daemon's X-Spam-* headers to the mail and, with
    -r 5, rejects a score of 5 or more: it reads the score on SpamAssassin's scale."""
    script, sock = tmp_path / "milter.lua", str(tmp_path / "milter.sock")
    script.write_text(MILTER_SCRIPT)
    milter = subprocess.Popen(["spamass-milter", "-p", sock, "-r", "5", "--", "-p", str(daemon.port), "-u", "alice"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        said = {}
        # A spam alice imported (her label decides: spam whatever the milter's Received line does to the score)
        for name, raw in (("spam", _mails(1, "spam", 25)[0]), ("ham", NEWSLETTER)):
            head, _, body = raw.decode().partition("\n\n")
            out = subprocess.run(["miltertest", "-s", str(script)], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "MILTER_SOCK": sock, "MAIL_HEADERS": head,
                                      "MAIL_BODY": body.replace("\n", "\r\n")})
            assert out.returncode == 0, out.stderr
            said[name] = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
            said[name]["reply"] = re.search(r"^REPLY (\S)", out.stdout, re.M).group(1)  # type: ignore[union-attr]
    finally:
        milter.terminate()
        milter.communicate(timeout=20)
    status_re = (r"(Yes|No), score=(-?\d+\.\d) required=5\.0 tests=[A-Z_]+(,[A-Z_]+)* autolearn=no "
                 r"version=spamtl-\S+")
    spam = re.fullmatch(status_re, said["spam"]["X-Spam-Status"])
    assert spam is not None and spam.group(1) == "Yes" and float(spam.group(2)) >= 5.0, said
    assert said["spam"]["X-Spam-Flag"] == "YES" and said["spam"]["reply"] == "y"  # rejected: SMFIR_REPLYCODE
    ham = re.fullmatch(status_re, said["ham"]["X-Spam-Status"])
    assert ham is not None and ham.group(1) == "No" and float(ham.group(2)) <= 0.0, said
    assert "X-Spam-Flag" not in said["ham"] and said["ham"]["reply"] == "c"  # SMFIR_CONTINUE


def test_tell_raw_response_headers(daemon: Daemon) -> None:
    mail = make_mail("project meeting 5 bob", "agenda minutes budget review extra", sender="colleague@bob.example")
    out = daemon.request("TELL", mail, user="bob", Message_class="ham", Set="local")
    assert out == b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\nSpamtl-Label: ham\r\n\r\n"
    out = daemon.request("TELL", mail, user="bob", Message_class="ham", Set="local")  # already learned
    assert out == b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: ham\r\n\r\n"
    out = daemon.request("TELL", mail, user="bob", Message_class="spam", Set="local,remote")  # spamc -C report
    assert out == b"SPAMD/1.5 0 EX_OK\r\nDidSet: local,remote\r\nSpamtl-Label: spam\r\n\r\n"
    out = daemon.request("TELL", mail, user="bob", Message_class="ham", Set="local", Remove="remote")  # -C revoke
    assert out == b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\nDidRemove: remote\r\nSpamtl-Label: ham\r\n\r\n"
    out = daemon.request("TELL", mail, user="bob", Remove="local")
    assert out == b"SPAMD/1.5 0 EX_OK\r\nDidRemove: local\r\nSpamtl-Label: none\r\n\r\n"
    out = daemon.request("TELL", mail, user="bob", Remove="local")  # nothing left to forget
    assert out == b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: none\r\n\r\n"
    assert daemon.request("TELL", mail, Message_class="ham", Set="local") == (
        b"SPAMD/1.5 67 TELL needs a User header (or serve --default-user)\r\n\r\n")


# ------------------------------------------------------------------ isolation and freshness
def test_one_users_tell_never_changes_anothers_score(daemon: Daemon, store: dict[str, object]) -> None:
    """Like SpamAssassin's spamd_user_rules_leak.t: alice teaches spam, bob's score stays bit for bit."""
    db = str(store["db"])
    mail = make_mail("weekly newsletter digest 55", "this week in gardening news ferns", sender="news@garden.example")
    other = make_mail("weekly newsletter digest 56", "this week in gardening news mosses", sender="news@garden.example")
    # Rows are picked by subject: a verdict of an earlier test may still be queued in a worker's writer.
    mail_subject, other_subject = "weekly newsletter digest 55", "weekly newsletter digest 56"
    daemon.request("CHECK", mail, user="bob")
    # test_spamc_learn_and_forget taught alice a newsletter and made her forget it through one worker; the
    # other may answer from the model it last checked for up to serve_refresh_interval (0.25 s): in CI its
    # "before" was the learned state (0.3877, not 0.0093). Past that, both workers agree.
    time.sleep(0.3)
    alice_before = {float(status(daemon.request("PROCESS", other, user="alice"))["probability"]) for _ in range(4)}
    assert len(alice_before) == 1, alice_before  # both workers agree before the TELL
    bob_before = logged(db, "bob", 1, mail_subject)[-1]
    assert daemon.request("TELL", mail, user="alice", Message_class="spam", Set="local").startswith(b"SPAMD/1.5 0 ")
    time.sleep(0.6)  # past the refresh interval of both workers
    for _ in range(4):  # both workers
        daemon.request("CHECK", mail, user="bob")
    bob_after = logged(db, "bob", 5, mail_subject)
    assert len(bob_after) == 5 and set(bob_after) == {bob_before}
    alice_after = {float(status(daemon.request("PROCESS", other, user="alice"))["probability"]) for _ in range(4)}
    # alice's model did move, towards spam, in both workers (her logged verdicts say what each one was)
    assert len(alice_after) == 1 and min(alice_after) > min(alice_before), (
        alice_before, alice_after, logged(db, "alice", 8, other_subject))


def test_cli_feedback_is_seen_within_a_second(daemon: Daemon, store: dict[str, object]) -> None:
    db = str(store["db"])
    mail = make_mail("weekly newsletter digest 42", "this week in gardening news daisies", sender="news@garden.example")
    probe = make_mail("weekly newsletter digest 43", "this week in gardening news daisies", sender="news@garden.example")
    warm = {float(status(daemon.request("PROCESS", probe, user="carol"))["probability"]) for _ in range(8)}
    assert len(warm) == 1  # both workers have carol's model cached now
    before = warm.pop()
    result = run(db, "feedback", "carol", "--spam", "-", input=mail)
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 1.0
    seen = []
    while time.monotonic() < deadline + 0.5:  # 1 s is the promise; 0.5 s more for a slow CI machine
        seen.append(float(status(daemon.request("PROCESS", probe, user="carol"))["probability"]))
        if seen[-1] > before:
            break
        time.sleep(0.05)
    assert seen[-1] > before, seen
    # One worker has seen it; the other refreshes at most 0.25 s (serve_refresh_interval) after its last check,
    # which may have fallen just before the feedback committed. Past that, every worker answers the new score.
    time.sleep(0.3)
    after = [float(status(daemon.request("PROCESS", probe, user="carol"))["probability"]) for _ in range(8)]
    assert set(after) == {seen[-1]}, after  # every worker


def test_models_activate_is_seen_without_restart(daemon: Daemon, store: dict[str, object]) -> None:
    db = str(store["db"])
    version = int(status(daemon.request("PROCESS", SPAM, user="bob"))["version"])
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        # a second version: a copy of the active one (the daemon cannot tell), activated by the CLI
        con.execute("INSERT INTO model_versions (created_at, status, params, metrics, feature_key, n_features, "
                    "format_version, n_users, n_messages, note) SELECT created_at, 'candidate', params, metrics, "
                    "feature_key, n_features, format_version, n_users, n_messages, 'copy' FROM model_versions "
                    "WHERE id = ?", (version,))
        new = con.execute("SELECT max(id) FROM model_versions").fetchone()[0]
        con.execute("INSERT INTO model_parts (model_version_id, kind, name, data, revision) "
                    "SELECT ?, kind, name, data, revision FROM model_parts WHERE model_version_id = ?", (new, version))
        con.commit()
    finally:
        con.close()
    assert run(db, "models", "activate", str(new)).exit_code == 0
    time.sleep(0.6)
    assert {status(daemon.request("PROCESS", SPAM, user="bob"))["version"] for _ in range(4)} == {str(new)}
    assert run(db, "models", "activate", str(version)).exit_code == 0
    time.sleep(0.6)
    assert {status(daemon.request("PROCESS", SPAM, user="bob"))["version"] for _ in range(4)} == {str(version)}


# ------------------------------------------------------------------ robustness
_GARBAGE = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda cmd, ver, hdrs, body: (f"{cmd} {ver}\r\n".encode() + b"".join(hdrs) + b"\r\n" + body),
              st.sampled_from(["CHECK", "PROCESS", "TELL", "PING", "HEADERS", "SYMBOLS", "REPORT", "BOGUS", ""]),
              st.sampled_from(["SPAMC/1.5", "SPAMC/1.2", "SPAMC/x", "HTTP/1.1", ""]),
              st.lists(st.one_of(
                  st.builds(lambda n: f"Content-length: {n}\r\n".encode(),
                            st.one_of(st.integers(-5, 5000), st.just(10**15), st.text(max_size=5))),
                  st.builds(lambda u: f"User: {u}\r\n".encode("utf-8", "replace"), st.text(max_size=300)),
                  st.sampled_from([b"Message-class: spam\r\n", b"Set: local\r\n", b"Remove: local\r\n",
                                   b"Compress: zlib\r\n", b"Message-class: xyz\r\n", b"\x00\xff: \x01\r\n"]),
                  st.binary(max_size=200)), max_size=6),
              st.binary(max_size=3000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_GARBAGE)
def test_fuzzed_requests_never_take_the_server_down(daemon: Daemon, data: bytes) -> None:
    out = daemon.exchange(data)
    assert out == b"" or out.startswith(b"SPAMD/1.5 ")
    assert daemon.exchange(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
    assert daemon.proc.poll() is None


def test_oversized_message_is_refused_unscanned(daemon: Daemon) -> None:
    big = make_mail("big", "x" * 600_000)
    out = daemon.request("PROCESS", big, user="alice")
    assert out == b"SPAMD/1.5 65 message larger than 512000 bytes; not scanned\r\n\r\n"


def test_oversized_compressed_message_is_refused_and_closed(daemon: Daemon) -> None:
    import zlib

    packed = zlib.compress(make_mail("big", "x" * 600_000))
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock:
        sock.sendall(f"CHECK SPAMC/1.5\r\nUser: alice\r\nCompress: zlib\r\nContent-length: {len(packed)}\r\n\r\n"
                     .encode() + packed)
        answer = sock.recv(1000)
        assert answer == b"SPAMD/1.5 65 message larger than 512000 bytes; not scanned\r\n\r\n"
        assert sock.recv(1000) == b""  # closed at once: the whole body was read, nothing to wait for


@needs_spamc
def test_oversized_message_passes_through_spamc_unchanged(daemon: Daemon) -> None:
    big = make_mail("big", "x" * 600_000)
    out = daemon.spamc("-s", "2000000", raw=big)
    assert (out.returncode, out.stdout) == (0, big)


def test_at_capacity_the_connection_still_sending_its_request_makes_room(store: dict[str, object]) -> None:
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1", "--max-connections", "1")
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as idle:
            idle.sendall(b"CHECK SPAMC/1.5\r\n")  # ... and nothing more
            time.sleep(0.1)
            assert d.exchange(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
            assert idle.recv(1000) == b"SPAMD/1.5 75 server busy and the request still incomplete\r\n\r\n"
    finally:
        code, err = d.stop()
    assert code == 0, err


@pytest.mark.parametrize(("args", "sent", "waited"), [
    pytest.param(("--timeout", "0.5"), b"CHECK SPAMC/1.5\r\n", 0.5, id="whole-request"),
    pytest.param(("--header-timeout", "0.5"), b"CHECK SPAMC/1.5\r\n", 0.5, id="headers"),
    pytest.param(("--header-timeout", "0.5", "--timeout", "1.5"),
                 b"CHECK SPAMC/1.5\r\nContent-length: 100\r\n\r\nFrom: x", 1.5, id="body-after-headers"),
])
def test_a_request_not_sent_in_time_is_answered_and_closed(store: dict[str, object], args: tuple[str, ...],
                                                          sent: bytes, waited: float) -> None:
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1", *args)
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as slow:
            slow.sendall(sent)
            started = time.monotonic()
            assert slow.recv(1000) == b"SPAMD/1.5 75 timed out reading the request\r\n\r\n"
            took = time.monotonic() - started
        # The body has the rest of --timeout once the headers are in, not only --header-timeout.
        assert waited - 0.2 <= took < waited + 3, took
        assert d.exchange(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_sigterm_finishes_the_request_in_flight(store: dict[str, object]) -> None:
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as sock:
        sock.sendall(f"CHECK SPAMC/1.5\r\nUser: alice\r\nContent-length: {len(SPAM)}\r\n\r\n".encode() + SPAM[:20])
        time.sleep(0.3)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        d.proc.send_signal(signal.SIGTERM)  # asked twice, as systemd or a shell loop may: still graceful
        time.sleep(0.1)
        sock.sendall(SPAM[20:])
        answer = sock.recv(1000)
    assert answer.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; ")
    code, _ = d.stop()
    assert code == 0
    assert not os.path.exists(d.socket_path)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2)


@needs_spamc
def test_spamc_passes_mail_through_when_the_daemon_is_down(store: dict[str, object]) -> None:
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    assert d.spamc("-c", raw=SPAM).returncode == 1
    assert d.stop()[0] == 0
    out = d.spamc("--connect-retries", "1", raw=SPAM)
    assert (out.returncode, out.stdout) == (0, SPAM)


def test_sighup_reloads(store: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAMTL_LOG_LEVEL", "info")
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    try:
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert status(d.request("PROCESS", SPAM, user="alice"))["verdict"] == "spam"
    finally:
        code, err = d.stop()
    assert code == 0 and err.count(" event=reload pid=") == 2, err
    assert re.search(r"verdict command=PROCESS user=alice verdict=spam probability=0\.\d{4} cutoff=0\.9000 "
                     r"ham_cutoff=0\.5000 version=\d+ id=[0-9a-f]{12} reason=model ms=", err), err


def test_non_loopback_bind_is_refused(store: dict[str, object]) -> None:
    result = runner.invoke(app, ["serve", "--db", str(store["db"]), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: refusing to listen on 0.0.0.0 (not a loopback address); "
                                     "add --allow-remote to accept connections from other hosts")


def test_serve_needs_an_address(store: dict[str, object]) -> None:
    result = runner.invoke(app, ["serve", "--db", str(store["db"])])
    assert (result.exit_code, result.stderr.strip()) == (1, "Error: give --socket PATH and/or --port N")


def test_serve_on_an_empty_database_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--port", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: no database at {tmp_path / 'none.db'}; run `spamtl init` first"


def test_systemd_socket_activation(store: dict[str, object], tmp_path: Path) -> None:
    """A socket passed as fd 3 with LISTEN_PID/LISTEN_FDS (what systemd does) is served; no --port needed."""
    wrapper = (
        "import os, socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)\n"
        "os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'spamtl', 'serve', '--workers', '1', '--db', sys.argv[1]])\n")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(store["db"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert b"listening on 127.0.0.1:" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            assert sock.recv(100) == b"SPAMD/1.5 0 PONG\r\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_a_worker_on_a_sqlite_file_loads_sqlalchemy_only_when_taught(store: dict[str, object],
                                                                     tmp_path: Path) -> None:
    """Scoring and logging run on the standard library's sqlite3 (20 MB less a process); a TELL's refit
    opens SQLAlchemy's session.  What a process has loaded is read from its memory map (compiled modules)."""

    def loaded(pid: int) -> bool:
        return "/sqlalchemy/" in Path(f"/proc/{pid}/maps").read_text()

    with sqlite3.connect(str(store["db"]).removeprefix("sqlite:///")) as source, \
            sqlite3.connect(tmp_path / "copy.sqlite3") as copy:
        source.backup(copy)  # a copy of its own: the TELL refits carol
    db = f"sqlite:///{tmp_path / 'copy.sqlite3'}"
    d = Daemon(db, tmp_path, "--workers", "1", "--allow-tell")
    try:
        for user in ("alice", "bob", "nobody"):
            assert d.request("CHECK", NEWSLETTER, user=user).startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: ")
        time.sleep(0.5)  # the verdicts are written (serve_log_interval)
        assert not loaded(d.proc.pid)
        assert d.request("TELL", NEWSLETTER, user="carol", Message_class="spam", Set="local").startswith(
            b"SPAMD/1.5 0 EX_OK")
        assert loaded(d.proc.pid)
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert logged(db, "alice", 1)


def test_the_daemon_loads_no_solver_until_it_is_taught() -> None:
    """A worker that only scores keeps scipy, scikit-learn and (on a SQLite file) SQLAlchemy out of memory
    (tens of MB a process): the refit and its ORM session are imported at the first TELL."""
    code = ("import sys, spamtl.serve.daemon\n"
            "print(sorted(m for m in ('scipy', 'sklearn', 'sqlalchemy', 'spamtl.model.estimator') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
