"""The parser's byte caps, hit exactly: ``MAX_PARSE_BYTES`` (4 MiB) per message, ``MAX_PART_BYTES`` (512 KiB)
per text part.

Catches (a planted defect): either cap deleted from ``spamtl/mail/parse.py``.  Nothing else failed then
(the later caps, ``MAX_TEXT_CHARS`` and the size limit, hid them), though ``import``, ``feedback`` and
``classify PATH`` parsed messages of up to 64 MiB whole.  To see past the text cap, the filler here
is invisible once decoded: quoted-printable soft line breaks (``=\\n`` decodes to nothing) in a text
part, a base64 attachment between two text parts.
"""

from __future__ import annotations

import base64

import pytest

from spamtl.mail.parse import MAX_PARSE_BYTES, MAX_PART_BYTES, parse_message

HEAD = b"From: a@b.example\nSubject: caps\nMIME-Version: 1.0\n"
QP_HEAD = HEAD + b"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: quoted-printable\n\n"
PART_DEFECT = f"text part truncated to {MAX_PART_BYTES} bytes"
PARSE_DEFECT = f"message truncated to {MAX_PARSE_BYTES} bytes for parsing"


def test_the_caps_are_the_documented_numbers() -> None:
    assert (MAX_PARSE_BYTES, MAX_PART_BYTES) == (4 * 1024 * 1024, 512 * 1024)


def _soft_breaks(n_bytes: int) -> bytes:
    assert n_bytes % 2 == 0
    return b"=\n" * (n_bytes // 2)


def test_a_text_part_is_decoded_up_to_512_kib_only() -> None:
    # "below" ends 100 bytes before the cap, "above" starts 100 bytes after it; the rest decodes to nothing.
    first = b"below\n"
    body = (first + _soft_breaks(MAX_PART_BYTES - 100 - len(first)) + _soft_breaks(200) + b"above\n"
            + _soft_breaks(80 * 1024))
    assert body.index(b"below") < MAX_PART_BYTES - 100 and body.index(b"above") == MAX_PART_BYTES + 100
    msg = parse_message(QP_HEAD + body)
    assert msg.text.split() == ["below"]
    assert PART_DEFECT in msg.defects


@pytest.mark.parametrize(("extra", "cut"), [(0, False), (1, True)], ids=["at-the-cap", "one-byte-more"])
def test_a_text_part_of_exactly_512_kib_is_whole(extra: int, cut: bool) -> None:
    body = (b"word " * (MAX_PART_BYTES // 5 + 1))[:MAX_PART_BYTES + extra]
    msg = parse_message(HEAD + b"Content-Type: text/plain\n\n" + body)
    assert (PART_DEFECT in msg.defects) == cut


def _big(attachment_bytes: int) -> bytes:
    """Text part, a base64 attachment of about ``attachment_bytes`` (encoded), another text part."""
    blob = base64.encodebytes(bytes(range(256)) * (attachment_bytes * 3 // 4 // 256))
    return (HEAD + b"Content-Type: multipart/mixed; boundary=XX\n\n"
            b"--XX\nContent-Type: text/plain\n\nfirstpartword\n"
            b"--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + blob +
            b"--XX\nContent-Type: text/plain\n\nlastpartword\n--XX--\n")


def test_only_the_first_4_mib_of_a_message_are_parsed() -> None:
    raw = _big(5 * 1024 * 1024)
    assert len(raw) > 5 * 1024 * 1024
    msg = parse_message(raw)
    assert msg.text.split() == ["firstpartword"]  # the part after 4 MiB is never seen
    assert PARSE_DEFECT in msg.defects
    assert len(msg.attachments) == 1 and msg.attachments[0].size < MAX_PARSE_BYTES
    whole = parse_message(_big(3 * 1024 * 1024))  # under the cap: both text parts
    assert whole.text.split() == ["firstpartword", "lastpartword"] and PARSE_DEFECT not in whole.defects


@pytest.mark.parametrize(("extra", "cut"), [(0, False), (1, True)], ids=["at-the-cap", "one-byte-more"])
def test_a_message_of_exactly_4_mib_is_parsed_whole(extra: int, cut: bool) -> None:
    raw = HEAD + b"Content-Type: application/octet-stream\n\n"
    raw += b"x" * (MAX_PARSE_BYTES + extra - len(raw))
    assert len(raw) == MAX_PARSE_BYTES + extra
    assert (PARSE_DEFECT in parse_message(raw).defects) == cut
