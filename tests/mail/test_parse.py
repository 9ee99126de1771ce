"""spamtl.mail.parse: nasty hand-made messages, arbitrary bytes, mutated real mail, size caps."""

from __future__ import annotations

import base64
import json
import mailbox
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spamtl.features import featurize
from spamtl.mail.headers import parse_envelope
from spamtl.mail.parse import MAX_TEXT_CHARS, ParsedMessage, parse_message

from ..conftest import CORPORA, DATA

NASTY = DATA / "nasty"
EXPECTED = json.loads((NASTY / "expected.json").read_text(encoding="utf-8"))


def test_every_nasty_file_has_an_expectation() -> None:
    files = {p.name for p in NASTY.iterdir() if p.name != "expected.json"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=sorted(EXPECTED))
def test_nasty_message(name: str) -> None:
    want = EXPECTED[name]
    msg = parse_message((NASTY / name).read_bytes())
    assert isinstance(msg, ParsedMessage)
    for field in ("subject", "from_domain", "reply_to_domain", "text", "is_html_only"):
        if field in want:
            assert getattr(msg, field) == want[field], field
    if "subject_contains" in want:
        assert want["subject_contains"] in msg.subject
    for needle in want.get("text_contains", []):
        assert needle in msg.text
    for needle in want.get("text_excludes", []):
        assert needle not in msg.text
    if "url_hosts" in want:
        assert set(want["url_hosts"]) <= set(msg.url_hosts)
    if "attachments" in want:
        assert [[a.filename, a.content_type] for a in msg.attachments] == want["attachments"]
    if "has_defects" in want:
        assert bool(msg.defects) == want["has_defects"]
    featurize(msg)  # every parsed message can be scored


def test_date_is_parsed_but_message_id_and_date_are_not_header_facts() -> None:
    raw = b"From: a@b.example\nDate: Tue, 12 Jun 2001 00:00:00 +0000\nMessage-ID: <x1@y>\nSubject: s\n\nbody"
    msg = parse_message(raw)
    assert msg.date is not None and msg.date.year == 2001
    assert msg.message_id == "x1@y"
    assert {name for name, _ in msg.headers} == {"from"}
    assert parse_envelope(raw)[0] == "x1@y"


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_message("a str is not mail bytes")  # type: ignore[arg-type]


def _huge_attachment_message(megabytes: int) -> bytes:
    payload = base64.encodebytes(b"\x00\x01binarydata" * (megabytes * 1024 * 1024 // 12))
    return (b"From: big@files.example\nSubject: big attachment\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="B"\n\n--B\nContent-Type: text/plain\n\nsee attached\n'
            b'--B\nContent-Type: application/octet-stream; name="big.bin"\nContent-Transfer-Encoding: base64\n\n'
            + payload + b"\n--B--\n")


def test_thirty_megabyte_attachment_is_capped() -> None:
    raw = _huge_attachment_message(30)
    assert len(raw) > 30 * 1024 * 1024
    start = time.process_time()
    msg = parse_message(raw)
    elapsed = time.process_time() - start
    assert msg.subject == "big attachment"
    assert "see attached" in msg.text
    assert any("truncated" in d for d in msg.defects)
    assert len(msg.text) <= MAX_TEXT_CHARS
    # Not a timing assertion on noisy machines: a generous bound that only an
    # unbounded parse of 40 MB of base64 could break.
    assert elapsed < 20


def test_huge_text_part_is_capped() -> None:
    raw = b"From: a@b.example\nSubject: long\n\n" + b"spam words here " * (2 * 1024 * 1024)
    msg = parse_message(raw)
    assert 0 < len(msg.text) <= MAX_TEXT_CHARS
    row = featurize(msg)
    assert 0 < len(row.indices) < 10_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    msg = parse_message(raw)
    assert isinstance(msg, ParsedMessage)
    assert len(msg.text) <= MAX_TEXT_CHARS
    parse_envelope(raw)
    featurize(msg)


_MIME_PIECES = [b"\n--", b"Content-Type: multipart/mixed; boundary=\"", b"=?utf-8?B?", b"?=", b"\x00",
                b"\r\n\r\n", b"Content-Transfer-Encoding: base64\n", b"charset=\"", b"\xff\xfe", b"<html><a href=",
                b"\n\n", b"=\n", b"==", b"From ", b"Content-Type: text/html; charset=x-nope\n"]


def _real_messages(limit: int = 40) -> list[bytes]:
    path = CORPORA / "spamassassin" / "spam.mbox"
    if not path.exists():
        return [p.read_bytes() for p in NASTY.iterdir() if p.suffix == ".eml"]
    box = mailbox.mbox(str(path), create=False)
    keys = box.keys()
    step = max(1, len(keys) // limit)
    return [box.get_bytes(k) for k in keys[::step][:limit]]


REAL = _real_messages()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=len(REAL) - 1),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["cut", "insert", "flip", "delete"]),
                             st.sampled_from(_MIME_PIECES), st.integers(0, 255)), max_size=8),
)
def test_mutated_real_messages_never_raise(index: int, edits: list[tuple[float, str, bytes, int]]) -> None:
    raw = bytearray(REAL[index])
    for where, kind, piece, byte in edits:
        pos = int(where * len(raw))
        if kind == "cut":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = piece
        elif kind == "flip" and pos < len(raw):
            raw[pos] = byte
        elif kind == "delete":
            del raw[pos:pos + 64]
    msg = parse_message(bytes(raw))
    assert isinstance(msg, ParsedMessage)
    featurize(msg)


def test_real_messages_parse_with_content() -> None:
    parsed = [parse_message(r) for r in REAL]
    assert sum(bool(m.subject) for m in parsed) >= 0.9 * len(parsed)
    assert sum(bool(m.text.strip()) for m in parsed) >= 0.9 * len(parsed)


def test_html_entities_and_links() -> None:
    raw = (b"From: x@y.example\nContent-Type: text/html\n\n<p>Caf&eacute; &#8364;5 "
           b"<a href='http://Evil.Example.COM/path'>x</a> www.second.example.org</p>")
    msg = parse_message(raw)
    assert "Café €5" in msg.text
    assert msg.url_hosts == ("evil.example.com", "second.example.org")

