"""SPAMC/SPAMD protocol parsing and formatting (pure; no sockets)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spamtl.serve import protocol as proto
from spamtl.services import points


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
    assert tell.tell() == proto.Tell("spam", set_local=True, remove_local=False, set_remote=True)
    forget = proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Remove: local\r\n", b"Content-length: 3\r\n"])
    assert forget.tell() == proto.Tell(None, set_local=False, remove_local=True)
    # spamc -C revoke: Message-class: ham, Set: local, Remove: remote (libspamc's message_tell)
    revoke = proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Message-class: ham\r\n", b"Set: local\r\n",
                                                         b"Remove: remote\r\n", b"Content-length: 3\r\n"])
    assert revoke.tell() == proto.Tell("ham", set_local=True, remove_local=False, remove_remote=True)
    with pytest.raises(proto.ProtocolError, match="^TELL cannot Set: remote and Remove: remote at once$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Message-class: ham\r\n", b"Set: local,remote\r\n",
                                                    b"Remove: remote\r\n", b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^TELL with Set needs Message-class: spam or ham$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Set: remote\r\n", b"Remove: local\r\n",
                                                    b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^TELL needs Set: local or Remove: local$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Set: remote\r\n", b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^TELL with Set needs Message-class: spam or ham$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Set: local\r\n", b"Content-length: 3\r\n"]).tell()
    with pytest.raises(proto.ProtocolError, match="^bad Message-class 'eggs'$"):
        proto.build_request(b"TELL SPAMC/1.5\r\n", [b"Message-class: eggs\r\n", b"Set: local\r\n",
                                                    b"Content-length: 3\r\n"]).tell()


def test_response_format() -> None:
    assert proto.response(0, headers=[("Spam", "True ; 10.5 / 5.0")]) == (
        b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; 10.5 / 5.0\r\n\r\n")
    assert proto.response(0, headers=[("Spam", "False ; -3.0 / 5.0")], body=b"abc") == (
        b"SPAMD/1.5 0 EX_OK\r\nContent-length: 3\r\nSpam: False ; -3.0 / 5.0\r\n\r\nabc")
    assert proto.response(76, "bad\r\nline") == b"SPAMD/1.5 76 bad??line\r\n\r\n"


# SpamAssassin's points, computed by hand (z = ln(p / (1 - p)); a, b = z of the ham and spam cutoffs):
# cutoffs 0.9 / 0.5: a = 0, b = ln 9 = 2.19722, one line S = 5 z / b (2.27560 points per log-odds);
# cutoffs 0.98 / 0.6: a = ln 1.5 = 0.40547, b = ln 49 = 3.89182, band 3.48636, k = 5 / 3.48636 = 1.43416;
# cutoffs 0.8 / 0.8 (no unsure band): a = b = ln 4 = 1.38629, k = 5 per log-odds (the band's minimum 1).
@pytest.mark.parametrize(("p", "spam_cutoff", "ham_cutoff", "verdict", "score"), [
    (0.99, 0.9, 0.5, "spam", 10.5),  # 5 * ln 99 / ln 9 = 5 * 4.59512 / 2.19722 = 10.4566
    (0.9, 0.9, 0.5, "spam", 5.0),  # at the spam cutoff: exactly the threshold
    (0.7, 0.9, 0.5, "unsure", 1.9),  # 5 * ln(7/3) / ln 9 = 5 * 0.84730 / 2.19722 = 1.9281
    (0.5, 0.9, 0.5, "ham", 0.0),  # at the ham cutoff: exactly 0
    (0.1, 0.9, 0.5, "ham", -5.0),  # 5 * -ln 9 / ln 9
    (0.01, 0.9, 0.5, "ham", -10.5),
    (0.999, 0.98, 0.6, "spam", 9.3),  # 5 + 1.43416 * (ln 999 - ln 49) = 5 + 1.43416 * 3.01494 = 9.3239
    (0.8, 0.98, 0.6, "unsure", 1.4),  # 5 * (ln 4 - ln 1.5) / 3.48636 = 5 * 0.98083 / 3.48636 = 1.4067
    (0.3, 0.98, 0.6, "ham", -1.8),  # 1.43416 * (ln(3/7) - ln 1.5) = 1.43416 * -1.25276 = -1.7967
    (0.8, 0.8, 0.8, "spam", 5.0),
    (0.79, 0.8, 0.8, "ham", -0.3),  # 5 * (ln(0.79/0.21) - ln 4) = 5 * (1.32493 - 1.38629) = -0.3068
    (0.9, 0.8, 0.8, "spam", 9.1),  # 5 + 5 * (ln 9 - ln 4) = 5 + 5 * 0.81093 = 9.0547
    (1.0, 0.9, 0.5, "spam", 47.2),  # p clamped to 1 - 1e-9: 5 + 2.27560 * (20.72327 - 2.19722) = 47.158
    (1.0, 0.5, 0.5, "spam", 100.0),  # 5 + 5 * 20.72327 = 108.6: clamped to 100
    (0.0, 0.5, 0.5, "ham", -100.0),
], ids=["spam", "at-spam-cutoff", "unsure", "at-ham-cutoff", "ham", "ham-far", "trained-spam", "trained-unsure",
        "trained-ham", "no-band-at-cutoff", "no-band-ham", "no-band-spam", "p-1", "clamp-high", "clamp-low"])
def test_score_scale_known_values(p: float, spam_cutoff: float, ham_cutoff: float, verdict: str,
                                  score: float) -> None:
    assert points.score_scale(p, spam_cutoff, ham_cutoff, verdict) == (score, 5.0)


def test_score_scale_edges_and_the_users_label() -> None:
    # p = 0.8999, just under the spam cutoff 0.9: 5 * ln(0.8999 / 0.1001) / ln 9 = 4.9975, shown 5.0 by rounding:
    # unsure, so 4.9 (SpamAssassin shows required - 0.1 the same way)
    assert points.score_scale(0.8999, 0.9, 0.5, "unsure") == (4.9, 5.0)
    # p = 0.5001, just over the ham cutoff: 0.0009 points, shown 0.0: unsure, so 0.1
    assert points.score_scale(0.5001, 0.9, 0.5, "unsure") == (0.1, 5.0)
    # the user's own label decides: S moves to the edge of the label's range
    assert points.score_scale(0.2, 0.9, 0.5, "spam") == (5.0, 5.0)
    assert points.score_scale(0.99, 0.9, 0.5, "ham") == (0.0, 5.0)
    assert proto.spam_header(0.99, 0.9, 0.5, "spam") == ("Spam", "True ; 10.5 / 5.0")
    assert proto.spam_header(0.8999, 0.9, 0.5, "unsure") == ("Spam", "False ; 4.9 / 5.0")
    assert proto.spam_header(0.1, 0.9, 0.5, "ham") == ("Spam", "False ; -5.0 / 5.0")
    assert proto.spam_header(0.5, 0.9, 0.5, "ham") == ("Spam", "False ; 0.0 / 5.0")  # not "-0.0"
    # unrounded: the cutoffs are 5 and 0 points exactly, cutoffs 0 and 1 stay finite
    assert points.spamassassin_points(0.9, 0.9, 0.5) == pytest.approx(5.0, abs=1e-12)
    assert points.spamassassin_points(0.6, 0.98, 0.6) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(points.spamassassin_points(0.5, 1.0, 0.0))


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans())
def test_shown_score_is_in_the_verdicts_range(p: float, cutoff: float, other: float, labelled: bool) -> None:
    spam_cutoff, ham_cutoff = max(cutoff, other), min(cutoff, other)
    verdict = "spam" if p >= spam_cutoff else "ham" if p <= ham_cutoff else "unsure"
    if labelled:  # a user's label can say the opposite of the model
        verdict = "ham" if verdict == "spam" else "spam"
    score, threshold = points.score_scale(p, spam_cutoff, ham_cutoff, verdict)
    assert threshold == 5.0
    assert (score >= 5.0) == (verdict == "spam")
    assert {"spam": 5.0 <= score <= 100.0, "ham": -100.0 <= score <= 0.0, "unsure": 0.0 < score < 5.0}[verdict]
    assert score == round(score, 1)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_points_grow_with_the_probability(p: float, q: float, cutoff: float, other: float) -> None:
    spam_cutoff, ham_cutoff = max(cutoff, other), min(cutoff, other)
    low, high = sorted((p, q))
    assert (points.spamassassin_points(low, spam_cutoff, ham_cutoff)
            <= points.spamassassin_points(high, spam_cutoff, ham_cutoff))


@pytest.mark.parametrize(("score", "is_spam", "tests", "want"), [
    (7.3, True, ["SPAMTL_SPAM", "SPAMTL_SHARED_SPAM"],
     [("X-Spam-Flag", "YES"), ("X-Spam-Level", "*******"),
      ("X-Spam-Status", "Yes, score=7.3 required=5.0 tests=SPAMTL_SHARED_SPAM,SPAMTL_SPAM autolearn=no "
                        "version=spamtl-9.9")]),
    (4.9, False, ["SPAMTL_UNSURE"],
     [("X-Spam-Level", "****"),
      ("X-Spam-Status", "No, score=4.9 required=5.0 tests=SPAMTL_UNSURE autolearn=no version=spamtl-9.9")]),
    (0.9, False, [],  # below 1 point: SpamAssassin writes the header with an empty value
     [("X-Spam-Level", ""), ("X-Spam-Status", "No, score=0.9 required=5.0 tests=none autolearn=no version=spamtl-9.9")]),
    (-3.2, False, ["SPAMTL_HAM"],
     [("X-Spam-Level", ""), ("X-Spam-Status", "No, score=-3.2 required=5.0 tests=SPAMTL_HAM autolearn=no "
                                              "version=spamtl-9.9")]),
    (100.0, True, ["SPAMTL_SPAM"],  # at most 50 stars, as SpamAssassin's _STARS_
     [("X-Spam-Flag", "YES"), ("X-Spam-Level", "*" * 50),
      ("X-Spam-Status", "Yes, score=100.0 required=5.0 tests=SPAMTL_SPAM autolearn=no version=spamtl-9.9")]),
], ids=["spam", "unsure", "under-one-point", "ham", "stars-cap"])
def test_spamassassin_headers(score: float, is_spam: bool, tests: list[str], want: list[tuple[str, str]]) -> None:
    assert points.spamassassin_headers(score, is_spam, tests, "spamtl-9.9") == want


_SPAM, _HAM, _FORGET = proto.Tell("spam", True, False), proto.Tell("ham", True, False), proto.Tell(None, False, True)
_REPORT = proto.Tell("spam", True, False, set_remote=True)
_REVOKE = proto.Tell("ham", True, False, remove_remote=True)


@pytest.mark.parametrize(("tell", "label", "is_changed", "is_removed", "headers"), [
    (_SPAM, "spam", True, False, [("DidSet", "local"), ("Spamtl-Label", "spam")]),
    (_SPAM, "spam", False, False, [("Spamtl-Label", "spam")]),  # already learned: no DidSet, as spamd
    (_HAM, "ham", True, False, [("DidSet", "local"), ("Spamtl-Label", "ham")]),
    (_FORGET, None, False, True, [("DidRemove", "local"), ("Spamtl-Label", "none")]),
    (_FORGET, None, False, False, [("Spamtl-Label", "none")]),
    # spamc -C report prints success when DidSet has remote; -C revoke when DidRemove has remote
    (_REPORT, "spam", True, False, [("DidSet", "local,remote"), ("Spamtl-Label", "spam")]),
    (_REPORT, "spam", False, False, [("DidSet", "remote"), ("Spamtl-Label", "spam")]),
    (_REVOKE, "ham", True, False, [("DidSet", "local"), ("DidRemove", "remote"), ("Spamtl-Label", "ham")]),
    (_REVOKE, "ham", False, False, [("DidRemove", "remote"), ("Spamtl-Label", "ham")]),
], ids=["spam", "spam-already", "ham", "forget", "forget-nothing", "report", "report-already", "revoke",
        "revoke-already"])
def test_tell_answer_headers(tell: proto.Tell, label: str | None, is_changed: bool, is_removed: bool,
                             headers: list[tuple[str, str]]) -> None:
    assert proto.tell_answer_headers(tell, label=label, is_changed=is_changed, is_removed=is_removed) == headers


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.binary(max_size=120), max_size=40))
def test_garbage_raises_only_protocol_errors(first: bytes, headers: list[bytes]) -> None:
    try:
        req = proto.build_request(first, headers)
        req.tell() if req.command == "TELL" else None
    except proto.ProtocolError as exc:
        assert exc.code in (proto.EX_PROTOCOL, proto.EX_DATAERR)


# ------------------------------------------------------------------ the client side (spamtl tell)
@pytest.mark.parametrize(("label", "headers"), [
    ("spam", [b"Message-class: spam\r\n", b"Set: local\r\n"]),
    ("ham", [b"Message-class: ham\r\n", b"Set: local\r\n"]),
    ("forget", [b"Remove: local\r\n"]),
], ids=["spam", "ham", "forget"])
def test_tell_request_is_what_the_server_reads(label: str, headers: list[bytes]) -> None:
    raw = proto.tell_request("alice", label, b"Subject: hi\r\n\r\nbody\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = [line + b"\r\n" for line in head.split(b"\r\n")]
    assert lines == [b"Content-length: 21\r\n", b"User: alice\r\n", *headers]
    request = proto.build_request(first, lines)
    assert (request.command, request.user, request.content_length) == ("TELL", "alice", 21)
    assert body == b"Subject: hi\r\n\r\nbody\r\n"
    assert request.tell() == {"spam": _SPAM, "ham": _HAM, "forget": _FORGET}[label]


@pytest.mark.parametrize("user", ["", " alice", "alice\r\nSet: local", "a\x00b", "x" * 256],
                         ids=["empty", "space", "header-injection", "nul", "long"])
def test_tell_request_refuses_user_names_that_break_the_header(user: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.tell_request(user, "spam", b"x")
    assert err.value.code == proto.EX_NOUSER


def test_parse_response() -> None:
    answer = proto.parse_response(b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\n\r\n")
    assert (answer.code, answer.message, answer.headers, answer.body) == (0, "EX_OK", {"didset": "local"}, b"")
    answer = proto.parse_response(b"SPAMD/1.5 0 EX_OK\nContent-length: 3\nSpam: True ; 30.0 / 22.0\n\nabc")
    assert (answer.headers["spam"], answer.body) == ("True ; 30.0 / 22.0", b"abc")
    assert proto.parse_response(b"SPAMD/1.5 0 PONG\r\n").message == "PONG"  # PING's answer has no empty line
    for garbage in (b"", b"HTTP/1.1 200 OK\r\n\r\n", b"SPAMD/1.5 x EX_OK\r\n\r\n",
                    b"SPAMD/1.5 0 EX_OK\r\nnot a header\r\n\r\n"):
        with pytest.raises(proto.ProtocolError) as err:
            proto.parse_response(garbage)
        assert err.value.code == proto.EX_PROTOCOL


@pytest.mark.parametrize(("answer", "label", "outcome"), [
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\n\r\n", "spam", (0, "")),
    (b"SPAMD/1.5 0 EX_OK\r\nDidRemove: local\r\n\r\n", "forget", (0, "")),
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\nDidRemove: local\r\n\r\n", "ham", (0, "")),
    # already learned (no DidSet: local, as spamd): the label the user has is what was asked, so it is stored
    (b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: spam\r\n\r\n", "spam", (0, "")),
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: remote\r\nSpamtl-Label: ham\r\n\r\n", "ham", (0, "")),
    (b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: none\r\n\r\n", "forget", (0, "")),
    # a label that is not what was asked is never success, DidSet or not
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\nSpamtl-Label: ham\r\n\r\n", "spam",
     (76, "spamtl serve answered 0 (EX_OK) with Spamtl-Label: ham (not spam: not stored)")),
    (b"SPAMD/1.5 0 EX_OK\r\nSpamtl-Label: spam\r\n\r\n", "forget",
     (76, "spamtl serve answered 0 (EX_OK) with Spamtl-Label: spam (not none: not stored)")),
    # spamc's "Message was already un/learned" from an answer that confirms nothing: not success
    (b"SPAMD/1.5 0 EX_OK\r\n\r\n", "spam",
     (76, "spamtl serve answered 0 (EX_OK) without DidSet: local or Spamtl-Label (not confirmed)")),
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: local\r\n\r\n", "forget",
     (76, "spamtl serve answered 0 (EX_OK) without DidRemove: local or Spamtl-Label (not confirmed)")),
    (b"SPAMD/1.5 0 EX_OK\r\nDidSet: remote\r\n\r\n", "ham",
     (76, "spamtl serve answered 0 (EX_OK) without DidSet: local or Spamtl-Label (not confirmed)")),
    (b"SPAMD/1.5 75 database error\r\n\r\n", "spam", (75, "spamtl serve answered 75 (EX_TEMPFAIL): database error")),
    (b"SPAMD/1.5 77 TELL is not enabled\r\n\r\n", "ham",
     (77, "spamtl serve answered 77 (EX_NOPERM): TELL is not enabled")),
    (b"SPAMD/1.5 65 message larger than 512000 bytes; not scanned\r\n\r\n", "spam",
     (65, "spamtl serve answered 65 (EX_DATAERR): message larger than 512000 bytes; not scanned")),
    (b"SPAMD/1.5 9 odd\r\nDidSet: local\r\n\r\n", "spam", (76, "spamtl serve answered 9 (unknown code): odd")),
], ids=["spam", "forget", "ham-both", "already-spam", "already-ham-remote", "already-forgotten", "other-label",
        "forget-but-labelled", "ok-without-didset", "forget-without-didremove", "remote-only", "tempfail", "noperm",
        "too-large", "unknown-code"])
def test_tell_outcome_is_success_only_when_confirmed(answer: bytes, label: str, outcome: tuple[int, str]) -> None:
    assert proto.tell_outcome(proto.parse_response(answer), label) == outcome

