"""Crafted worst-case mail parses within generous budgets, and the documented caps are hit.

The budgets are not benchmarks (see benchmarks/bench_worst_case.py for the numbers: every shape
takes under 0.2 s at 1 MB there).  They are 10x and more above that, so that only work that grows
faster than linearly (a backtracking regex, a quadratic stdlib routine) can break them.
"""

from __future__ import annotations

import time

import pytest

from spamtl import features
from spamtl.features import featurize, tokenize
from spamtl.mail import parse as mail
from spamtl.mail.headers import add_headers, parse_envelope, strip_own_headers
from spamtl.mail.parse import parse_message

from ..crafted import SHAPES, SIZES

BUDGET_1MB = 2.0  # CPU seconds per message of 1 MB
BUDGET_10MB = 20.0


def _filter_path_seconds(raw: bytes) -> tuple[float, mail.ParsedMessage]:
    """CPU time of everything the filter does with a message's bytes in this layer."""
    start = time.process_time()
    msg = parse_message(raw)
    featurize(msg)
    parse_envelope(raw)
    strip_own_headers(add_headers(raw, [("X-Spamtl-Status", "ham")]))
    return time.process_time() - start, msg


def _check_caps(msg: mail.ParsedMessage) -> None:
    assert len(msg.text) <= mail.MAX_TEXT_CHARS
    assert len(msg.subject) <= mail.MAX_HEADER_CHARS
    assert len(msg.headers) <= mail.MAX_HEADERS
    assert all(len(v) <= mail.MAX_HEADER_CHARS for _, v in msg.headers)
    assert len(msg.url_hosts) <= mail.MAX_URLS
    assert all(len(h) <= mail.MAX_HOST_CHARS for h in msg.url_hosts)
    assert len(msg.content_types) <= mail.MAX_PARTS + 1
    assert len(tokenize(msg)) <= features.MAX_TOKENS


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_megabyte_shape_is_cheap(shape: str) -> None:
    raw = SHAPES[shape](SIZES["1MB"])
    assert len(raw) > 0.9 * SIZES["1MB"]
    seconds, msg = _filter_path_seconds(raw)
    assert seconds < BUDGET_1MB, f"{shape}: {seconds:.2f} s CPU for 1 MB"
    _check_caps(msg)


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_ten_megabyte_shape_is_cheap(shape: str) -> None:
    raw = SHAPES[shape](SIZES["10MB"])
    seconds, msg = _filter_path_seconds(raw)
    assert seconds < BUDGET_10MB, f"{shape}: {seconds:.2f} s CPU for 10 MB"
    _check_caps(msg)


def test_reported_head_storm() -> None:
    raw = b"From: a@b.com\nSubject: hi\nContent-Type: text/html\n\n" + b"<head>" * 20000
    seconds, msg = _filter_path_seconds(raw)
    assert seconds < BUDGET_1MB
    assert msg.subject == "hi" and msg.is_html_only


def test_header_values_are_cut_before_decoding() -> None:
    subject = b"=?utf-8?b?aGVsbG8gd29ybGQ=?= " * 40_000  # 1.2 MB of encoded words
    msg = parse_message(b"From: a@b.com\nSubject: " + subject + b"\nX-Other: " + b"y" * 2_000_000 + b"\n\nbody")
    assert msg.subject.startswith("hello worldhello world")
    assert len(msg.subject) <= mail.MAX_HEADER_CHARS
    assert dict(msg.headers)["x-other"] == "y" * mail.MAX_HEADER_CHARS
    assert msg.text.strip() == "body"


def test_content_type_parameters_are_cut() -> None:
    raw = b"From: a@b.com\nContent-Type: text/plain; " + b"a=b;" * 250_000 + b" charset=utf-8\n\nbody"
    msg = parse_message(raw)
    assert msg.text.strip() == "body" and msg.content_types == ("text/plain",)


def test_mime_depth_cap() -> None:
    msg = parse_message(SHAPES["nested_multipart"](200_000))
    assert any(d.startswith(f"MIME nesting deeper than {mail.MAX_MIME_DEPTH}") for d in msg.defects)
    # Levels 0..MAX_MIME_DEPTH are multiparts; the one below them is read as a text part.
    assert msg.content_types == ("multipart/mixed",) * (mail.MAX_MIME_DEPTH + 1) + ("text/plain",)
    assert "nested body line" in msg.text  # the deep rest is read as text, not lost


def test_part_count_cap() -> None:
    msg = parse_message(SHAPES["many_parts"](1_000_000))
    assert f"more than {mail.MAX_PARTS} MIME parts; the rest not parsed" in msg.defects
    assert "hello part" in msg.text


def test_header_field_cap() -> None:
    msg = parse_message(SHAPES["many_headers"](1_000_000))
    assert any(f"more than {mail.MAX_HEADER_FIELDS} header fields" in d for d in msg.defects)
    assert len(msg.headers) == mail.MAX_HEADERS - 1  # the first 100 fields but Subject
    assert msg.text.strip() == "body"


def test_html_depth_cap_keeps_text_and_links() -> None:
    raw = (b"From: a@b.com\nContent-Type: text/html\n\n" + b"<div>" * 1000
           + b"hidden <a href='http://deep.example/x'>words</a> &amp; more" + b"</div>" * 1000)
    msg = parse_message(raw)
    assert any(d.startswith(f"HTML nested deeper than {mail.MAX_HTML_DEPTH}") for d in msg.defects)
    assert msg.text.split() == ["hidden", "http://deep.example/x", "words", "&", "more"]
    assert msg.url_hosts == ("deep.example",)


def test_html_is_parsed_not_pattern_matched() -> None:
    raw = (b"From: a@b.com\nContent-Type: text/html\n\n<html><head><title>t1</title><style>p{color:red}</style></head>"
           b"<body><!-- comment words --><script>var scriptword;</script><p>Visible <b>bold</b> "
           b"<a href=\"http://Links.Example.COM/p\">link</a></p><iframe src=x>iframe words</iframe></body></html>")
    msg = parse_message(raw)
    for hidden in ("t1", "color", "comment", "scriptword", "iframe"):
        assert hidden not in msg.text
    assert "Visible" in msg.text and "bold" in msg.text and "http://Links.Example.COM/p" in msg.text
    assert msg.url_hosts == ("links.example.com",)


def test_long_host_gives_few_tokens() -> None:
    msg = parse_message(b"Subject: x\n\nhttp://" + b"a." * 50_000 + b"com/ x")
    url_tokens = [t for t in tokenize(msg) if t.startswith("url:")]
    assert 0 < len(url_tokens) <= 6
