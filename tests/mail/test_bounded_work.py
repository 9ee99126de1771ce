"""Bounded work per message: no request costs more than a fixed CPU budget under the size limit.

Every request scores a message in one pass (one parse, one featurisation); SYMBOLS, REPORT and
``--filter --report`` explain the verdict from that same pass.  The budget is generous (the
target, 0.2 s, is shown by benchmarks/bench_worst_case.py) so that a noisy machine does not fail
it; quadratic work on the red team's message exceeds it many times over.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from spamtl import features
from spamtl.mail import parse as mail
from spamtl.mail.headers import MAX_HEADER_SCAN_FIELDS, add_headers, parse_envelope, strip_own_headers
from spamtl.mail.parse import MAX_HEADER_LINES, parse_message
from spamtl.serve import protocol as spamd_protocol
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..conftest import run
from ..crafted import RED_TEAM, SHAPES
from ..small_store import imported_store

BUDGET = 0.5  # CPU seconds per request (the target is 0.2 s)
LIMIT = Settings(database_url="sqlite://").max_message_bytes  # the default size limit (512,000 bytes)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store where ann has a personal model (a stranger is scored by the shared part)."""
    return imported_store(tmp_path_factory.mktemp("bounded"), train=True)


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often a message is parsed (``mail._from_message``) and tokenised (``features._token_parts``)."""
    counts: Counter[str] = Counter()

    def counting(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(mail, "_from_message", counting("parse", mail._from_message))
    monkeypatch.setattr(features, "_token_parts", counting("tokenise", features._token_parts))
    return counts


@pytest.fixture(scope="module")
def reader(db: str) -> Iterator[object]:
    from spamtl.services.classify import open_reader

    reader = open_reader(make_engine(db), Settings(database_url=db))
    yield reader
    reader.store.close()  # type: ignore[attr-defined]


def _request(reader: object, user: str, raw: bytes, *, report: bool) -> None:
    """What one filter-mode or daemon request does with the bytes (but the store writes)."""
    from spamtl.services.classify import prepare, verdict_headers
    from spamtl.services.explain import explain, report_header

    model = reader.user_model(user)  # type: ignore[attr-defined]
    message = prepare(raw)
    verdict = reader.classify(model, message, "test")  # type: ignore[attr-defined]
    add_headers(raw, verdict_headers(verdict))
    parse_envelope(message.raw)  # what logging the verdict reads
    if report:
        report_header(explain(model, message, scored=verdict.scored))


def _seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@pytest.mark.parametrize("report", [False, True], ids=["score", "score_and_report"])
def test_red_team_message(reader: object, report: bool) -> None:
    assert len(RED_TEAM) < LIMIT
    _request(reader, "ann", RED_TEAM, report=report)  # the model loaded, as in a running daemon
    seconds = _seconds(lambda: _request(reader, "ann", RED_TEAM, report=report))
    assert seconds < BUDGET, f"{seconds:.2f} s CPU"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_crafted_message_at_the_size_limit(reader: object, shape: str) -> None:
    raw = SHAPES[shape](LIMIT)[:LIMIT]
    _request(reader, "ann", raw, report=True)
    seconds = _seconds(lambda: _request(reader, "ann", raw, report=True))
    assert seconds < BUDGET, f"{shape}: {seconds:.2f} s CPU for score and report of {len(raw)} bytes"


@pytest.mark.parametrize("user", ["ann", "stranger"])
def test_report_comes_from_the_scoring_pass(reader: object, passes: Counter[str], user: str) -> None:
    from spamtl.services.classify import prepare
    from spamtl.services.explain import explain

    model = reader.user_model(user)  # type: ignore[attr-defined]
    message = prepare(RED_TEAM)
    verdict = reader.classify(model, message, "test")  # type: ignore[attr-defined]
    result = explain(model, message, scored=verdict.scored)
    assert passes == {"parse": 1, "tokenise": 1}
    assert result.probability == verdict.probability
    assert abs(result.logit - verdict.scored.logit) < 1e-9  # type: ignore[union-attr]
    # Without the pass, explain makes exactly one of its own, with the same result.
    again = explain(model, message)
    assert passes == {"parse": 2, "tokenise": 2}
    assert again == result


@pytest.mark.parametrize("command", ["CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS"])
def test_daemon_request_is_one_pass(db: str, passes: Counter[str], command: str) -> None:
    """The daemon's own request handling (Worker), in process: one parse whatever is asked, within budget."""
    from spamtl.serve.daemon import ServeOptions, Worker
    from spamtl.serve.peers import Peer

    worker = Worker(lambda: Settings(database_url=db), ServeOptions())
    try:
        request = spamd_protocol.Request(command, "1.5", {"user": "ann", "content-length": str(len(RED_TEAM))})
        worker._score(request, RED_TEAM, Peer(os.getuid()))  # the model loaded
        passes.clear()
        start = time.process_time()
        answer, _ = worker._score(request, RED_TEAM, Peer(os.getuid()))
        seconds = time.process_time() - start
    finally:
        worker.writer.close()
        worker.reader.store.close()
        worker.close()
    assert answer.startswith(b"SPAMD/1.5 0 EX_OK"), answer[:200]
    assert passes == {"parse": 1, "tokenise": 1}
    assert seconds < BUDGET, f"{command}: {seconds:.2f} s CPU"


def test_filter_mode_report_is_one_pass(db: str, passes: Counter[str]) -> None:
    start = time.process_time()
    result = run(db, "classify", "ann", "--filter", "--report", input=RED_TEAM)
    seconds = time.process_time() - start
    assert result.exit_code == 0
    assert b"X-Spamtl-Report: " in result.stdout_bytes
    assert passes == {"parse": 1, "tokenise": 1}
    assert seconds < BUDGET, f"{seconds:.2f} s CPU"


def test_header_lines_are_capped_per_part() -> None:
    msg = parse_message(SHAPES["part_header_storm"](LIMIT))
    assert f"more than {MAX_HEADER_LINES} header lines in a part; rest ignored" in msg.defects
    assert "body" in msg.text
    # From, a folded field, Subject: the Subject is line MAX_HEADER_LINES (kept) or the one after (dropped).
    def head(folds: int, subject: bytes) -> bytes:
        return b"From: a@b.example\nX-Fold: v\n" + b" v\n" * folds + b"Subject: " + subject + b"\n\nbody\n"

    msg = parse_message(head(MAX_HEADER_LINES - 2, b"dropped"))
    assert msg.subject == "" and msg.from_domain == "b.example" and msg.text.strip() == "body"
    msg = parse_message(head(MAX_HEADER_LINES - 3, b"kept"))
    assert msg.subject == "kept" and not any("header lines" in d for d in msg.defects)


def test_header_scan_stops_after_as_many_fields_as_the_parser_keeps() -> None:
    filler = b"".join(b"X-%d: v\n" % i for i in range(MAX_HEADER_SCAN_FIELDS - 1))
    raw = b"X-Spam-Flag: YES\n" + filler + b"X-Spam-Level: ***\nMessage-ID: <late@x>\n\nbody\n"
    assert strip_own_headers(raw) == filler + b"X-Spam-Level: ***\nMessage-ID: <late@x>\n\nbody\n"
    # parse_envelope and the parser agree: a Message-ID past the cap is not seen by either.
    assert parse_envelope(raw)[0] == parse_message(raw).message_id == ""
    early = raw.replace(b"X-Spam-Flag: YES\n", b"Message-ID: <early@x>\n")
    assert parse_envelope(early)[0] == parse_message(early).message_id == "early@x"


def test_continuation_lines_are_read_in_one_match() -> None:
    """A field's continuation lines (a 240 KB fold) are found without a call per line, with the same spans."""
    fold = b"X-Spam-Status: Yes\n" + b" v\n" * 80_000 + b"Subject: s\n\nbody"
    assert _seconds(lambda: strip_own_headers(fold)) < BUDGET
    assert strip_own_headers(fold) == b"Subject: s\n\nbody"
    assert strip_own_headers(b"X-Spam-Status: Yes\n v\n\tw") == b""  # runs to the end of the data: whole
    # A field that runs past MAX_HEADER_SCAN_BYTES is cut, so kept: whether the limit falls inside a line or
    # (19 + 3 * 87,375 bytes) exactly between two of its continuation lines.
    for fold in (b" v\n", b" vv\n"):
        cut = b"X-Spam-Status: Yes\n" + fold * 90_000
        assert strip_own_headers(cut) == cut


def test_cached_model_and_budget_hold_for_a_stranger(reader: object) -> None:
    _request(reader, "stranger", RED_TEAM, report=True)
    assert _seconds(lambda: _request(reader, "stranger", RED_TEAM, report=True)) < BUDGET


def test_verdicts_held_in_numbers_keep_no_scoring_pass(db: str, reader: object) -> None:
    """A verdict keeps its pass (megabytes for a crafted message) only for its own request's explanation."""
    from datetime import UTC, datetime

    from spamtl.mail.sources import RawMail
    from spamtl.services.classify import VerdictWriter, classify_messages, prepare

    now = datetime(2024, 1, 1, tzinfo=UTC)
    mails = [RawMail(f"m{i}", RED_TEAM + b"%d\n" % i) for i in range(3)]
    verdicts = list(classify_messages(reader, user="ann", mails=mails, now=now, log=False))  # type: ignore[arg-type]
    assert verdicts and all(v.scored is None for v in verdicts)  # type: ignore[union-attr]
    model = reader.user_model("ann")  # type: ignore[attr-defined]
    message = prepare(RED_TEAM)
    verdict = reader.classify(model, message, "test")  # type: ignore[attr-defined]
    assert verdict.scored is not None
    writer = VerdictWriter(make_engine(db), Settings(database_url=db), interval=60.0)
    try:
        writer.submit(model, message, verdict, now)
        assert writer._pending[0][2].scored is None and writer._pending[0][2].probability == verdict.probability
    finally:
        writer.close()
    assert verdict.scored is not None  # the caller's own verdict is not changed
