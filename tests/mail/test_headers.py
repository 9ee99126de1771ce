"""spamtl.mail.headers.add_headers and strip_own_headers: well-formed on any input, and inverse of each other."""

from __future__ import annotations

import email
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spamtl.mail.headers import MAX_HEADER_SCAN_BYTES, add_headers, parse_envelope, strip_own_headers

OWN_NAMES = ["X-Spamtl-Status", "X-Spam-Flag", "x-spam-status", "X-SPAM-LEVEL", "X-Spam-Score", "X-Spam-Report",
             "X-Spam-Checker-Version", "X-Bogosity", "X-Spamd-Result", "X-Rspamd-Server", "x-spamtl-version"]
OTHER_NAMES = ["Subject", "From", "To", "Received", "X-Mailer", "X-Spam", "X-Spamassassin", "X-Spamtl",
               "X-Bogosity-Extra", "Content-Type", "X-Spammy-Thing"]
EOLS = [b"\n", b"\r\n", b"\r"]
ENVELOPE = b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002"

# A line: an envelope, a field (own or other), a continuation, an empty line, body text, or noise.
_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=12)
_line = st.one_of(
    st.builds(lambda n, v: f"{n}: {v}".encode(), st.sampled_from(OWN_NAMES + OTHER_NAMES), _values),
    st.builds(lambda n, v: f"{n}:{v}".encode(), st.sampled_from(OWN_NAMES), _values),  # no blank after the colon
    st.builds(lambda w, v: w + v.encode(), st.sampled_from([b" ", b"\t", b"  "]), _values),  # continuation
    st.just(b""),
    st.just(ENVELOPE),
    st.just(b"body text, not a header"),
    st.binary(max_size=8),
)
_raw_mail = st.builds(lambda lines, eols, tail: b"".join(line + eol for line, eol in zip(lines, eols)) + tail,
                      st.lists(_line, max_size=10), st.lists(st.sampled_from(EOLS), min_size=10, max_size=10),
                      st.sampled_from([b"", b"unterminated", b" folded", b"X-Spam-Flag: YES"]))
RAW = st.one_of(_raw_mail, st.binary(max_size=200))
HEADERS = st.lists(st.tuples(st.sampled_from(OWN_NAMES),
                             st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
                             .map(str.lstrip)), max_size=4)


def _eol(raw: bytes) -> bytes:
    found = [(raw.find(e), e) for e in (b"\r\n", b"\r", b"\n") if raw.find(e) >= 0]
    return min(found, key=lambda f: (f[0], -len(f[1])))[1] if found else b"\n"


def _block(raw: bytes, headers: list[tuple[str, str]], after: bytes = b"") -> bytes:
    """The block as documented, when ``after`` follows it: the input's first line ending, but CRLF where
    that is a bare CR and the next byte is LF."""
    eol = _eol(raw)
    if eol == b"\r" and after.startswith(b"\n"):
        eol = b"\r\n"
    return b"".join(f"{n}: {v}".encode() + eol for n, v in headers)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(raw=RAW, headers=HEADERS)
@example(raw=ENVELOPE, headers=[("X-Spamtl-Status", "ham")])
@example(raw=b" NO\nSubject: x\n\nbody", headers=[("X-Spam-Flag", "YES")])
@example(raw=b"", headers=[("X-Spam-Flag", "YES")])
@example(raw=b"Subject: a\rX: b\r\rbody", headers=[("X-Spam-Flag", "YES")])
@example(raw=b" \r \n\n", headers=[("X-Spam-Flag", "YES")])  # a bare CR first, LF after the block: CRLF
def test_added_block_is_whole_and_first(raw: bytes, headers: list[tuple[str, str]]) -> None:
    """output == prefix + block + rest, with prefix + rest the input (plus one line end in one documented case)."""
    out = add_headers(raw, headers)
    plain = add_headers(raw, [])
    if plain != raw:
        # The single exception: the input ends inside an envelope line or leading whitespace line.
        assert plain == raw + _eol(raw)
        last = raw.splitlines()[-1]
        assert last.startswith((b"From ", b" ", b"\t"))
    # The block sits where add_headers(raw, []) ends its prefix: after the envelope and leading blank lines.
    for i in range(len(plain) + 1):
        if plain[:i] + _block(raw, headers, plain[i:]) + plain[i:] == out:
            prefix = plain[:i]
            break
    else:  # pragma: no cover - the assertion below says what failed
        pytest.fail(f"block not inserted whole: {out!r}")
    for line in prefix.splitlines():
        assert line.startswith((b"From ", b" ", b"\t")), prefix


@SETTINGS
@given(raw=RAW, headers=HEADERS)
@example(raw=b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002", headers=[("X-Spamtl-Status", "ham")])
@example(raw=b" NO", headers=[("X-Spam-Flag", "YES")])
@example(raw=b"\r\n NO\r\n", headers=[("X-Spam-Flag", "YES")])
def test_stdlib_parser_reads_exactly_our_values(raw: bytes, headers: list[tuple[str, str]]) -> None:
    msg = email.message_from_bytes(add_headers(raw, headers), policy=compat32)
    # Our fields come first, so for each name the first values the parser finds are ours, unchanged.
    for name in {n.lower() for n, _ in headers}:
        ours = [v for n, v in headers if n.lower() == name]
        assert (msg.get_all(name) or [])[:len(ours)] == ours


@SETTINGS
@given(raw=RAW, headers=HEADERS)
def test_strip_undoes_add(raw: bytes, headers: list[tuple[str, str]]) -> None:
    assert strip_own_headers(add_headers(raw, headers)) == strip_own_headers(add_headers(raw, []))
    if add_headers(raw, []) == raw:  # all but the documented single exception
        assert strip_own_headers(add_headers(raw, headers)) == strip_own_headers(raw)


@SETTINGS
@given(raw=RAW)
@example(raw=b" \rX-Spamtl-Status: \n\nX-Spamtl-Status: \n")
@example(raw=b"Subject: a\rX-Spam-Flag: 1\rX-Spam-Level: 2\r\nX-Spam-Flag: body\n")
def test_strip_is_idempotent_and_leaves_other_mail_alone(raw: bytes) -> None:
    once = strip_own_headers(raw)
    assert strip_own_headers(once) == once
    lower = raw.lower()
    if not any(p in lower for p in (b"x-spam", b"x-bogosity", b"x-rspamd")):
        assert once == raw


_ORACLE_LINE = st.one_of(
    st.builds(lambda n, v: f"{n}: {v}".encode(), st.sampled_from(OWN_NAMES + OTHER_NAMES), _values),
    st.builds(lambda w, v: w + v.encode(), st.sampled_from([b" ", b"\t"]), _values),
)


@SETTINGS
@given(head=st.lists(_ORACLE_LINE, max_size=12), eol=st.sampled_from(EOLS), envelope=st.booleans(),
       body=st.sampled_from([b"", b"X-Spam-Flag: in the body\n", b"plain body"]))
def test_strip_agrees_with_the_stdlib_parser(head: list[bytes], eol: bytes, envelope: bool, body: bytes) -> None:
    """Every own field is gone, every other field is still there in order with the same value."""
    raw = (ENVELOPE + eol if envelope else b"") + b"".join(line + eol for line in head) + eol + body
    before = email.message_from_bytes(raw, policy=compat32)
    after = email.message_from_bytes(strip_own_headers(raw), policy=compat32)
    own = {n.lower() for n in OWN_NAMES}
    assert after.items() == [(k, v) for k, v in before.items() if k.lower() not in own]
    assert after.get_payload() == before.get_payload()
    assert after.get_unixfrom() == before.get_unixfrom()


def test_reported_examples() -> None:
    flag = [("X-Spamtl-Status", "spam, probability=0.9900"), ("X-Spam-Flag", "YES")]
    # Input that is only a From line: no glued "...2002X-Spamtl-Status".
    out = add_headers(ENVELOPE, flag)
    assert out == ENVELOPE + b"\nX-Spamtl-Status: spam, probability=0.9900\nX-Spam-Flag: YES\n"
    # A leading whitespace line stays above our block instead of folding into it ("YES\n NO").
    out = add_headers(b" NO\nSubject: hi\n\nbody", flag)
    assert out == b" NO\nX-Spamtl-Status: spam, probability=0.9900\nX-Spam-Flag: YES\nSubject: hi\n\nbody"
    assert email.message_from_bytes(out)["X-Spam-Flag"] == "YES"
    assert strip_own_headers(out) == b" NO\nSubject: hi\n\nbody"
    # Values with line breaks cannot inject fields.
    assert add_headers(b"", [("X-Spamtl-Status", "a\nX-Evil: 1")]) == b"X-Spamtl-Status: a X-Evil: 1\n"


@pytest.mark.parametrize("eol", EOLS, ids=["lf", "crlf", "cr"])
def test_strip_keeps_envelope_and_body_and_continuations_of_others(eol: bytes) -> None:
    lines = [ENVELOPE, b"Received: from a", b"\tby b", b"X-Spam-Status: Yes, score=9.1", b"\ttests=FOO,BAR",
             b"x-bogosity: Spam, tests=bogofilter", b"Subject: hello", b"X-Spamd-Bar: ++++", b"X-Rspamd-Queue-Id: 1",
             b"", b"X-Spam-Flag: YES (body, kept)"]
    raw = eol.join(lines)
    want = eol.join([ENVELOPE, b"Received: from a", b"\tby b", b"Subject: hello", b"", b"X-Spam-Flag: YES (body, kept)"])
    assert strip_own_headers(raw) == want


def test_strip_looks_at_a_bounded_header_block() -> None:
    """Fields beyond MAX_HEADER_SCAN_BYTES of header are not looked at; a huge message costs no more."""
    filler = b"X-Filler: " + b"x" * 70 + b"\n"
    n = MAX_HEADER_SCAN_BYTES // len(filler) + 10
    raw = b"X-Spam-Flag: YES\n" + filler * n + b"X-Spam-Level: ***\n\nbody"
    out = strip_own_headers(raw)
    assert out == filler * n + b"X-Spam-Level: ***\n\nbody"
    # One 10 MB header line: nothing after the scan limit is touched (and it is quick).
    huge = b"X-Spam-Flag: YES\nSubject: " + b"y" * 10_000_000 + b"\nX-Spam-Level: *\n\n"
    assert strip_own_headers(huge) == huge[len(b"X-Spam-Flag: YES\n"):]


def test_a_filter_field_cut_by_the_scan_limit_inside_a_continuation_line_is_kept() -> None:
    """Only whole fields are removed: a continuation line that does not end before the scan limit leaves its
    field cut, kept as it is (a line end past the limit is not looked for); within the limit it goes."""
    for eol in (b"\n", b"\r\n", b"\r"):
        cut = b"Subject: a" + eol + b"X-Spam-Flag: YES" + eol + b" " + b"x" * MAX_HEADER_SCAN_BYTES + eol + eol + b"body"
        assert strip_own_headers(cut) == cut, eol
        whole = b"Subject: a" + eol + b"X-Spam-Flag: YES" + eol + b" more" + eol + b"\tmore" + eol + eol + b"body"
        assert strip_own_headers(whole) == b"Subject: a" + eol + eol + b"body", eol


def test_parse_envelope_reads_a_bounded_value() -> None:
    date_line = b"\nDate: Tue, 12 Jun 2001 00:00:00 +0000\n\nbody"
    message_id, date = parse_envelope(b"Message-ID: <" + b"a" * 100_000 + b">" + date_line)
    assert message_id == "a" * 998
    assert date is not None and date.year == 2001
    # A Date beyond MAX_HEADER_SCAN_BYTES of header is not looked for.
    message_id, date = parse_envelope(b"Message-ID: <" + b"a" * MAX_HEADER_SCAN_BYTES + b">" + date_line)
    assert message_id == "a" * 998 and date is None
    assert parse_envelope(b"Subject: x\n message-id: <not a field>\n\n")[0] == ""
    assert parse_envelope(b"From x\r\nMessage-Id: <m@x>\r\n\r\n")[0] == "m@x"
