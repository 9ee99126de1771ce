"""Crafted worst-case messages: each shape is a function of a target size in bytes.

Shared by ``tests/mail/test_worst_case.py`` (regression tests with generous time budgets) and
``benchmarks/bench_worst_case.py`` (the table).  Every shape aims at one place where a parser
can do more than linear work: a regex that backtracks, a quadratic stdlib routine, nesting, or
sheer count.  Output is deterministic (no randomness but a seeded generator).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

HEAD = b"From: a@b.com\nTo: c@d.example\nSubject: hi\n"
HTML = HEAD + b"MIME-Version: 1.0\nContent-Type: text/html\n\n"


def _fill(prefix: bytes, unit: bytes, size: int, suffix: bytes = b"") -> bytes:
    n = max(1, (size - len(prefix) - len(suffix)) // len(unit))
    return prefix + unit * n + suffix


def _nested_multipart(size: int) -> bytes:
    depth = 1000
    opening = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(depth))
    return _fill(HEAD + b"Content-Type: multipart/mixed; boundary=b0\n\n" + opening, b"nested body line\n", size)


def _nested_rfc822(size: int) -> bytes:
    depth = 1000
    opening = b"Content-Type: message/rfc822\n\n" * depth
    return _fill(HEAD + opening, b"deep body line\n", size)


def _many_parts(size: int) -> bytes:
    part = b"--b\nContent-Type: text/plain\n\nhello part\n"
    return _fill(HEAD + b"Content-Type: multipart/mixed; boundary=b\n\n", part, size, b"--b--\n")


def _base64_garbage(size: int) -> bytes:
    rng = random.Random(9)
    alphabet = b"ABCxyz019+/=!@#$%^&*() \n"
    body = bytes(rng.choice(alphabet) for _ in range(min(size, 65536)))
    return _fill(HEAD + b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n", body, size)


def _binary_noise(size: int) -> bytes:
    return random.Random(9).randbytes(size)


def _many_urls(size: int) -> bytes:
    lines = b"".join(b"see http://host%d.example.com/path?q=%d and www.site%d.example.org\n" % (i, i, i)
                     for i in range(size // 60 + 1))
    return HEAD + b"\n" + lines[:size]


def _header_storm(size: int, value: bytes) -> bytes:
    """Header fields of about 8 KB (the per-field cut) of ``value``: the red-team shape at 512 KB."""
    line = 8 * 1024 // len(value)
    fields = b"".join(b"X-A%03d: " % i + value * line + b"\n" for i in range(max(1, size // (len(value) * line + 8))))
    return b"From: a@example.com\nSubject: hi\n" + fields + b"\nbody\n"


def _part_header_storm(size: int) -> bytes:
    start = HEAD + b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
    return _fill(start, b"X:v\n", size, b"\nbody\n--b--\n")


def _encoded_filenames(size: int) -> bytes:
    part = (b"--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\""
            + b"=?a?q??=" * 100 + b"\"\n\nx\n")
    return _fill(HEAD + b"Content-Type: multipart/mixed; boundary=b\n\n", part, size, b"--b--\n")


def _one_line_base64(size: int) -> bytes:
    text = b"perfectly ordinary words repeated in a long text part " * (size // 74 + 1)
    body = base64.b64encode(text)[:size]
    return HEAD + b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + body


def _valid_base64_text(size: int) -> bytes:
    text = b"perfectly ordinary words repeated in a long text part " * (size // 74 + 1)
    return HEAD + b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(text)[:size]


SHAPES: dict[str, Callable[[int], bytes]] = {
    # The reproductions.
    "head_storm": lambda n: _fill(HTML, b"<head>", n),
    "comment_storm": lambda n: _fill(HTML, b"<!--", n),
    "huge_html": lambda n: _fill(HTML + b"<html><body>", b"<p>Buy <b>now</b> <a href='http://x.example/a'>here</a></p>\n",
                                 n, b"</body></html>"),
    "long_message_id": lambda n: _fill(HEAD + b"Message-ID: <", b"a", n, b"@x>\n\nbody\n"),
    "huge_subject": lambda n: _fill(b"From: a@b.com\nSubject: ", b"cheap pills ", n, b"\n\nbody\n"),
    "www_runs": lambda n: _fill(HEAD + b"\n", b"www.", n),
    # More.
    "long_token": lambda n: _fill(HEAD + b"\n", b"a", n),
    "nested_tags": lambda n: _fill(HTML, b"<div>", n, b"text"),
    "deep_then_wide_html": lambda n: _fill(HTML + b"<div>" * 256, b"<div>x</div>", n),
    "bogus_tag_obfuscation": lambda n: _fill(HTML, b"Vi<deacon>ag<heat>ra ", n),
    "misnested_formatting": lambda n: _fill(HTML, b"<b><i><u></b></i></u>x", n),
    "table_foster": lambda n: _fill(HTML, b"<table><tr>text", n),
    "unclosed_attributes": lambda n: _fill(HTML, b"<a href=\"http://x.example/", n),
    "entity_storm": lambda n: _fill(HTML, b"&#x41;&amp;&#99999999;&", n),
    "nested_multipart": _nested_multipart,
    "nested_rfc822": _nested_rfc822,
    "many_parts": _many_parts,
    "huge_header": lambda n: _fill(HEAD + b"X-Long: start", b"\n folded value", n, b"\n\nbody\n"),
    "many_headers": lambda n: _fill(HEAD, b"X-Header: value\n", n, b"\nbody\n"),
    "content_type_params": lambda n: _fill(b"From: a@b.com\nContent-Type: text/plain; ", b"a=b;", n, b"\n\nbody\n"),
    "encoded_word_storm": lambda n: _fill(b"From: a@b.com\nSubject: ", b"=?utf-8?b?aGVsbG8gd29ybGQ=?= ", n, b"\n\nbody\n"),
    "from_address_storm": lambda n: _fill(b"From: ", b"a@b.com, ", n, b"\nSubject: x\n\nbody\n"),
    "base64_garbage": _base64_garbage,
    "base64_text": _valid_base64_text,
    "qp_softbreak_storm": lambda n: _fill(HEAD + b"Content-Transfer-Encoding: quoted-printable\n\n", b"=\n", n),
    "no_newline_at_all": lambda n: _fill(b"Subject: ", b"x ", n),
    "long_body_line": lambda n: _fill(HEAD + b"\n", b"word ", n),
    "blank_lines": lambda n: _fill(HEAD + b"\n", b"\n", n),
    "cr_only_lines": lambda n: _fill(b"Subject: a\rFrom: b@c.example\r\r", b"x\r", n),
    "nul_bytes": lambda n: _fill(b"Subject: n\x00ul\n\n", b"\x00a\x00", n),
    "many_urls": _many_urls,
    "long_domain": lambda n: _fill(HEAD + b"\nhttp://", b"a.", n, b"com/ x"),
    "dotted_words": lambda n: _fill(HEAD + b"\n", b"a.-'", n),
    "binary_noise": _binary_noise,
    # Bounded work per message, under the 512 KB size limit.
    "unclosed_encoded_words": lambda n: _header_storm(n, b"=?a?q?x"),
    "unclosed_after_one_word": lambda n: _header_storm(n, b"=?a?q?x").replace(b": =?a?q?x", b": =?a?q?hi?= "),
    "empty_encoded_words": lambda n: _header_storm(n, b"=?a?q??="),
    "spaced_encoded_words": lambda n: _header_storm(n, b"=?utf-8?q?a?= "),
    "q_escape_storm": lambda n: _header_storm(n, b"=?utf-8?q?" + b"=C3=A9" * 1300 + b"==?="),
    "tiny_headers": lambda n: _fill(b"From: a@b.com\n", b"X:v\n", n, b"\nbody\n"),
    "continuation_storm": lambda n: _fill(HEAD + b"X-Long: v\n", b" v\n", n, b"\nbody\n"),
    "part_header_storm": _part_header_storm,
    "encoded_filenames": _encoded_filenames,
    "one_line_base64": _one_line_base64,
    "same_url": lambda n: _fill(HEAD + b"\n", b"http://a.example/ ", n),
    "long_header_line": lambda n: _fill(HEAD + b"X-Long: ", b"a", n, b"\n\nbody\n"),
}

SIZES = {"100KB": 100 * 1024, "1MB": 1024 * 1024, "10MB": 10 * 1024 * 1024}

RED_TEAM = (b"From: a@example.com\nSubject: hi\n"
            + b"".join(b"X-A%02d: " % i + b"=?a?q?x" * 1157 + b"\n" for i in range(63)) + b"\nbody\n")
"""A reported reproduction, byte for byte: 63 headers of 8 KB of unclosed encoded words (510 KB),
quadratic work for the stdlib's encoded-word decoder."""
