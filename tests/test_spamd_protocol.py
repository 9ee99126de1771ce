"""SPAMC/SPAMD protocol parsing and formatting (pure; no sockets)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spamtl import spamd_protocol as proto


def test_request_line_and_headers() -> None:
    req = proto.build_request(b"CHECK SPAMC/1.5\r\n", [b"Content-length: 42\r\n", b"User: alice\r\n"])
    assert (req.command, req.version, req.content_length, req.user) == ("CHECK", "1.5", 42, "alice")
    assert req.is_compressed is False


def test_bare_newlines_are_accepted() -> None:
    req = proto.build_request(b"PING SPAMC/1.2\n", [])
    assert (req.command, req.content_length, req.user) == ("PING", None, None)


@pytest.mark.parametrize(("line", "reason"), [
    (b"CHECK\r\n", "bad request line; expected 'COMMAND SPAMC/1.5'"),
    (b"CHECK HTTP/1.1\r\n", "bad request line; expected 'COMMAND SPAMC/1.5'"),
    (b"GET SPAMC/1.5\r\n", "unknown command 'GET'"),
    (b"CHECK SPAMC/x.5\r\n", "bad protocol version"),
    (b"CHECK SPAMC/1.5\xff\r\n", "line is not UTF-8"),
    (b"CHECK SPAMC/1.5" + b" " * 2000 + b"\r\n", "line longer than 1024 bytes"),
], ids=["no-version", "http", "unknown", "bad-version", "binary", "long"])
def test_bad_request_lines(line: bytes, reason: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.parse_request_line(line)
    assert (err.value.code, err.value.reason) == (proto.EX_PROTOCOL, reason)


@pytest.mark.parametrize(("headers", "reason"), [
    ([b"Content-length: -1\r\n"], "bad Content-length '-1'"),
    ([b"Content-length: 1e9\r\n"], "bad Content-length '1e9'"),
    ([b"no colon here\r\n"], "bad header line"),
    ([b"User: a\x01b\r\n"], "bad value of header User"),
    ([b"Compress: gzip\r\n", b"Content-length: 1\r\n"], "unknown Compress 'gzip'"),
    ([], "CHECK needs a Content-length header"),
    ([b"X: y\r\n"] * 33, "more than 32 header lines"),
], ids=["negative", "float", "no-colon", "control", "gzip", "no-length", "too-many"])
def test_bad_headers(headers: list[bytes], reason: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.build_request(b"CHECK SPAMC/1.5\r\n", headers)
    assert err.value.reason == reason


def test_tell_headers() -> None:
    tell = proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Message-class: spam\r\n", b"Set: local, remote\r\n",
                                                       b"Content-length: 3\r\n"])
    assert tell.tell() == ("spam", True, False)
    forget = proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Remove: local\r\n", b"Content-length: 3\r\n"])
    assert forget.tell() == (None, False, True)
    with pytest.raises(proto.ProtocolError, match="^TELL needs Set: local or Remove: local$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Set: remote\r\n", b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^TELL with Set needs Message-class: spam or ham$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Set: local\r\n", b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^bad Message-class 'eggs'$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Message-class: eggs\r\n", b"Set: local\r\n",
                                                    b"Content-length: 3\r\n"]).tell()


def test_response_format() -> None:
    assert proto.response(0, headers=[("Spam", "True ; 30.0 / 22.0")]) == (
        b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; 30.0 / 22.0\r\n\r\n")
    assert proto.response(0, headers=[("Spam", "False ; -3.0 / 22.0")], body=b"abc") == (
        b"SPAMD/1.5 0 EX_OK\r\nContent-length: 3\r\nSpam: False ; -3.0 / 22.0\r\n\r\nabc")
    assert proto.response(76, "bad\r\nline") == b"SPAMD/1.5 76 bad??line\r\n\r\n"


def test_score_scale_known_values() -> None:
    # 10 * ln(p / (1 - p)), computed by hand: p = 0.9 -> 21.97, 0.99 -> 45.95, 0.5 -> 0.
    assert proto.score_scale(0.99, 0.9, True) == (46.0, 22.0)
    assert proto.score_scale(0.5, 0.9, False) == (0.0, 22.0)
    assert proto.spam_header(0.1, 0.9, False) == ("Spam", "False ; -22.0 / 22.0")
    # the user's own label decides: S moves to the threshold's side of the verdict
    assert proto.score_scale(0.2, 0.9, True) == (22.0, 22.0)
    assert proto.score_scale(0.95, 0.9, False) == (21.9, 22.0)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans())
def test_score_at_least_threshold_iff_spam(p: float, cutoff: float, labelled: bool) -> None:
    is_spam = p >= cutoff if not labelled else not p >= cutoff  # a user's label can say the opposite
    score, threshold = proto.score_scale(p, cutoff, is_spam)
    assert (score >= threshold) == is_spam
    assert math.isfinite(score) and math.isfinite(threshold)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.binary(max_size=120), max_size=40))
def test_garbage_raises_only_protocol_errors(first: bytes, headers: list[bytes]) -> None:
    try:
        req = proto.build_request(first, headers)
        req.tell() if req.command == "TELL" else None
    except proto.ProtocolError as exc:
        assert exc.code in (proto.EX_PROTOCOL, proto.EX_DATAERR)
