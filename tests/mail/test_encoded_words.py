"""RFC 2047 encoded words: the stdlib's decoded text, in linear time.

spamtl decoded header values with ``email.header.decode_header``, whose scan is quadratic in
unclosed encoded words (``=?a?q?x`` repeated).  ``mail`` now scans them itself; every test here
compares it with the stdlib on the same value.
"""

from __future__ import annotations

import base64
import email.header
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spamtl.mail import parse as mail
from spamtl.mail.parse import MAX_ENCODED_WORDS, parse_message

BUDGET = 0.5  # CPU seconds for 128 KB of one hostile value (quadratic work on it exceeds this many times over)
HOSTILE_CHARS = 128 * 1024  # 16 times the per-field cut (MAX_HEADER_BYTES) that parse_message makes first


def stdlib_decoded(value: str) -> str:
    """What ``mail.decode_header_value`` returned before it was bounded: the stdlib's decoder on the whole value."""
    text = mail._to_text(value)
    try:
        pieces = []
        for chunk, charset in email.header.decode_header(text):
            pieces.append(mail._decode_bytes(chunk, charset or "ascii") if isinstance(chunk, bytes) else chunk)
        text = "".join(pieces)
    except Exception:  # noqa: BLE001 - bad base64: the value was kept as it is
        pass
    return mail._WS_RE.sub(" ", text).strip()


def b64(text: str, charset: str = "utf-8") -> str:
    return base64.b64encode(text.encode(charset)).decode("ascii")


CASES = {
    "q": "=?utf-8?q?caf=C3=A9_cr=C3=A8me?=",
    "q_upper_and_lower_hex": "=?UTF-8?Q?=c3=a9t=C3=A9?=",
    "b": f"=?utf-8?b?{b64('héllo wörld')}?=",
    "b_upper": f"=?UTF-8?B?{b64('日本語のメール')}?=",
    "latin1": "=?iso-8859-1?q?Fa=E7ade_=E0_la_cr=E8me?=",
    "windows1252": "=?windows-1252?q?=93quoted=94_=80uro?=",
    "koi8r": f"=?koi8-r?b?{b64('Привет мир', 'koi8-r')}?=",
    "shift_jis": f"=?shift_jis?b?{b64('こんにちは', 'shift_jis')}?=",
    "gb2312": f"=?gb2312?b?{b64('你好', 'gb2312')}?=",
    "adjacent_space": "=?utf-8?q?hello?= =?utf-8?q?_world?=",
    "adjacent_folded": "=?utf-8?q?hello?=\n =?utf-8?q?_world?=",
    "adjacent_crlf_tab": "=?utf-8?q?hello?=\r\n\t=?utf-8?q?_world?=",
    "adjacent_two_charsets": "=?utf-8?q?caf=C3=A9?= =?iso-8859-1?q?_cr=E8me?=",
    "split_multibyte": "=?utf-8?q?=C3?= =?utf-8?q?=A9t=C3=A9?=",
    "b_words_joined": f"=?utf-8?b?{b64('hello')}?= =?utf-8?b?{b64(' world')}?=",
    "text_between": "Re: =?utf-8?q?caf=C3=A9?= and =?utf-8?q?th=C3=A9?= today",
    "text_after_folded": "=?utf-8?q?hello?=\n world",  # the stdlib's quirk: "helloworld"
    "unknown_charset": "=?x-no-such-charset?q?caf=E9?=",
    "empty_charset": "=??q?plain?=",
    "rfc2231_language": "=?utf-8*en?q?hello?=",
    "broken_base64": "before =?utf-8?b?a?= after",
    "garbage_base64": "=?utf-8?b?!!!?=",
    "missing_padding": "=?utf-8?b?aGVsbG8gd29ybGQ?=",
    "underscore_and_equals": "=?us-ascii?q?a_=3D_b=5F?=",
    "trailing_equals": "=?us-ascii?q?soft=?=",
    "double_equals": "=?us-ascii?q?a==b?=",
    "non_ascii_unencoded": "café =?utf-8?q?x?=",
    "non_ascii_encoded": "=?utf-8?q?caf\u00e9?=",
    "unclosed": "=?utf-8?q?never closed",
    "charset_across_lines": "=?ut\nf-8?q?x?=",
    "bad_encoding_letter": "=?utf-8?x?abc?=",
    "no_words": "plain subject, no encoding",
    "only_start": "=?",
}


@pytest.mark.parametrize("value", list(CASES.values()), ids=list(CASES))
def test_same_text_as_the_stdlib(value: str) -> None:
    assert mail.decode_header_value(value) == stdlib_decoded(value)


def test_known_values() -> None:
    assert mail.decode_header_value(CASES["q"]) == "café crème"
    assert mail.decode_header_value(CASES["adjacent_folded"]) == "hello world"
    assert mail.decode_header_value(CASES["adjacent_two_charsets"]) == "café crème"
    assert mail.decode_header_value(CASES["split_multibyte"]) == "été"
    assert mail.decode_header_value(CASES["koi8r"]) == "Привет мир"
    assert mail.decode_header_value(CASES["broken_base64"]) == CASES["broken_base64"]  # kept as it is
    assert mail.decode_header_value(CASES["unknown_charset"]) == "caf\ufffd"  # read as UTF-8, replaced


_CHARSETS = ["utf-8", "UTF-8", "iso-8859-1", "latin-1", "koi8-r", "shift_jis", "x-unknown", "", "utf-8*en",
             "windows-1252"]
_Q_PIECES = ["a", "Z", "_", "=3D", "=C3", "=A9", "=e9", "==", "=", "=4", "=G1", " ", "?", "é", "\udcff", "!", "\t"]


@st.composite
def _encoded_word(draw: st.DrawFn) -> str:
    charset = draw(st.sampled_from(_CHARSETS))
    encoding = draw(st.sampled_from("qQbB"))
    if encoding in "bB" and draw(st.booleans()):
        data = base64.b64encode(draw(st.text(alphabet="hé日 ж", max_size=6)).encode("utf-8")).decode("ascii")
        if draw(st.booleans()):
            data = data.rstrip("=")
    else:
        data = "".join(draw(st.lists(st.sampled_from(_Q_PIECES), max_size=6)))
    return f"=?{charset}?{encoding}?{data}?="


_VALUE = st.lists(st.one_of(
    _encoded_word(),
    st.sampled_from([" ", "  ", "\t", "\n ", "\r\n\t", "\r", "plain", "=?", "?=", "=?a?q?x", "été", "\x85", "x"]),
), max_size=10).map("".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUE)
def test_same_text_as_the_stdlib_on_generated_values(value: str) -> None:
    assert mail.decode_header_value(value) == stdlib_decoded(value)


def test_words_past_the_cap_are_kept_as_they_are() -> None:
    word = "=?utf-8?q?ab?= "
    assert mail.decode_header_value(word * MAX_ENCODED_WORDS) == stdlib_decoded(word * MAX_ENCODED_WORDS)
    decoded = mail.decode_header_value(word * (MAX_ENCODED_WORDS + 3))
    assert decoded == "ab" * MAX_ENCODED_WORDS + " " + " ".join([word.strip()] * 3)
    # Counted over the value, not per line.
    folded = "\n ".join([word.strip()] * (MAX_ENCODED_WORDS + 1))
    assert mail.decode_header_value(folded) == "ab" * MAX_ENCODED_WORDS + word.strip()


HOSTILE = {
    "unclosed": "=?a?q?x",  # the red team's
    "empty_words": "=?a?q??=",
    "spaced_words": "=?utf-8?q?a?= ",
    "bad_encoding": "=?a?z",
    "open_starts": "=?",
    "q_escapes": "=C3=A9",
}


@pytest.mark.parametrize("unit", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize(("before", "after"), [("", ""), ("", "?="), ("=?utf-8?q?hi?= ", "")],
                         ids=["open", "closed_at_end", "one_word_first"])
def test_hostile_values_take_linear_time(unit: str, before: str, after: str) -> None:
    """Far more than a field can hold: twice the value is twice the work, not four times.

    ``one_word_first``: a value with one real encoded word goes past the "has it any?" test, and
    then every unclosed start after it must not cost a scan to the end of the line."""
    value = before + "=?utf-8?q?" * (unit == "=C3=A9") + unit * (HOSTILE_CHARS // len(unit)) + after
    start = time.process_time()
    mail.decode_header_value(value)
    seconds = time.process_time() - start
    assert seconds < BUDGET, f"{seconds:.2f} s CPU for {len(value)} characters of {unit!r}"


def test_eight_bit_header_with_encoded_words() -> None:
    """A value with 8-bit bytes reaches the decoder through the stdlib's Header (no regex there)."""
    raw = (b"From: a@example.com\nSubject: \xc3\xa9t\xc3\xa9 =?utf-8?q?caf=C3=A9?=\nX-A: \xe9"
           + b"=?a?q?x" * 1157 + b"\n\nbody\n")
    start = time.process_time()
    msg = parse_message(raw)
    assert time.process_time() - start < BUDGET
    # The stdlib's quirk, kept: unencoded text beside an encoded word goes through ASCII.
    assert msg.subject == stdlib_decoded("\u00e9t\u00e9 =?utf-8?q?caf=C3=A9?=") == "\ufffdt\ufffd caf\u00e9"
    assert dict(msg.headers)["x-a"].startswith("\u00e9=?a?q?x")
