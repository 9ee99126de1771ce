"""Raw message bytes -> :class:`ParsedMessage` (pure, never raises).

Whatever can be recovered from broken mail is returned, and what went wrong is listed in
``ParsedMessage.defects``.  The work per message is bounded and linear in the bytes looked at: each
``MAX_*`` constant below caps one dimension; HTML goes through Lexbor and body text only through RE2.
Editing the header block byte for byte is :mod:`spamtl.mail.headers`.
"""

from __future__ import annotations

import binascii
import email.feedparser
import email.header
import email.quoprimime
import email.utils
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email._policybase import Compat32  # as email.policy has it, without the header registry it loads
from email.message import Message

import re2

__all__ = [
    "MAX_PARSE_BYTES",
    "MAX_PART_BYTES",
    "MAX_TEXT_CHARS",
    "Attachment",
    "ParsedMessage",
    "parse_message",
    "decode_header_value",
    "parse_address",
    "parse_date",
]

MAX_PARSE_BYTES = 4 * 1024 * 1024
"""Raw bytes given to the MIME parser; the rest of a huge message is ignored."""
MAX_PART_BYTES = 512 * 1024
"""Encoded bytes of one text part that are decoded."""
MAX_TEXT_CHARS = 100_000
"""Characters of body text kept in total (subject and headers not counted)."""
MAX_HEADERS = 100
"""Header fields of the top-level part passed on as header facts (``ParsedMessage.headers``)."""
MAX_HEADER_CHARS = 2_000
"""Characters of one decoded header value kept (Subject and Message-ID included)."""
MAX_HEADER_BYTES = 8 * 1024
"""Raw characters of one header field (continuation lines included) kept *before* it is decoded or parsed.

Enough for 2,000 decoded characters even of CJK text in RFC 2047 encoded words
(about 4 raw characters per decoded one); more is an attack.  The stdlib's
parameter parser (Content-Type) is quadratic in the value, and so is its
encoded-word decoder, so the cut has to come first.
"""
MAX_ENCODED_WORDS = 110
"""RFC 2047 encoded words decoded per header value; the rest of the value is kept as it is.

As many as fit in ``MAX_HEADER_BYTES`` at RFC 2047's longest (75 characters),
so every value a mailer writes is decoded whole.  More are short words that
are there to cost work: a message can hold 60,000 of ``=?a?q??=``.
"""
MAX_HEADER_FIELDS = 1_000
"""Header fields kept per MIME part: real mail has fewer than 100; the rest are dropped (a defect)."""
MAX_HEADER_LINES = 5_000
"""Lines of one header block (continuation lines included) read into fields; the rest are dropped (a defect).

The stdlib reads each header line in Python, so its work is in lines, and
512 KB holds 128,000 lines of ``X:v``.  Real mail has a few hundred lines (a
long Received chain with DKIM and ARC signatures).
"""
MAX_MIME_DEPTH = 10
"""MIME nesting levels parsed; a deeper multipart or message/rfc822 is read as text.

The stdlib parser checks each line against every enclosing boundary, so its
work is lines x depth.  Real mail (a forwarded message with attachments inside
a digest) stays below 6.
"""
MAX_PARTS = 200
"""MIME parts looked at; the parser stops reading within 64 KB after the next one starts."""
MAX_HTML_DEPTH = 256
"""Element nesting given to the HTML parser; deeper markup has its tags removed without parsing.

An HTML5 parser walks the stack of open elements for every block start tag
(``<div>``, ``<ul>``), so its work is tags x depth.  Browsers cap the depth too
(Blink at 512); real mail stays below 50.
"""
MAX_URLS = 200
"""Distinct link hosts kept."""
MAX_HREFS = 2_000
"""Link targets (``href``) of one HTML part copied into the text; a real newsletter has a few hundred."""
MAX_HOST_CHARS = 253
"""Longest DNS name; a longer "host" is cut (it would otherwise give thousands of domain suffixes)."""
# Headers whose values are never passed on as header facts: the date gives the
# label away in public corpora and teaches nothing that lasts, and the rest are
# handled by dedicated fields.
_SKIPPED_HEADERS = frozenset({"date", "subject", "message-id"})

# RE2 (linear time, no backtracking): this one runs over up to MAX_TEXT_CHARS of body text, where the
# stdlib engine is quadratic on runs of "www." (the www branch rescans the run from every match).
_SPACE = r"\t\n\x0b\f\r \x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
"""What Python's ``\\s`` matches (RE2's ``\\s`` is ASCII only), so the hosts found are the same."""
_URL_RE = re2.compile(
    rf"""(?i)(?:https?|ftp)://([^{_SPACE}/?#"'<>\\:@]+(?:@[^{_SPACE}/?#"'<>\\:]+)?)"""
    # Python's \b before "www": the previous character is not a letter, digit or underscore.
    r"""|(?:^|[^\pL\pN_])www\.([a-z0-9.-]+\.[a-z]{2,})"""
)
# These run over values already cut to MAX_HEADER_BYTES, and have no nested quantifiers.
_ADDR_DOMAIN_RE = re.compile(r"@([A-Za-z0-9.-]+)")
_WS_RE = re.compile(r"\s+")
# An RFC 2047 encoded word, spelt as the stdlib's decoder does (email.header.ecre), so that the same
# words are found.  The stdlib engine runs it only up to a line's last "?=" (linear there, see
# _decode_encoded_words); RE2 answers whether a value has one at all, over any text.
_ENCODED_WORD = r"=\?([^?]*?)\?([qQbB])\?(.*?)\?="
_ENCODED_WORD_RE = re.compile(_ENCODED_WORD)
_HAS_ENCODED_WORD_RE = re2.compile(_ENCODED_WORD)
# HTML elements whose content is not visible text (iframe, noembed and noframes hold raw text that only
# browsers without those features would show: ads, scripts).
_INVISIBLE_TAGS = ["script", "style", "head", "iframe", "noembed", "noframes"]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A non-text part: its file name (may be empty), MIME type and encoded size."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the filter knows about one message, in plain Python values.

    Attributes
    ----------
    subject : str
        Decoded subject line ('' if absent).
    from_address, reply_to_address : str
        Lower-cased addresses ('' if absent or unparseable).
    from_domain, reply_to_domain : str
        Domain parts of those addresses ('' if none).
    message_id : str
        The Message-ID header, angle brackets stripped ('' if absent).
    date : datetime or None
        The Date header as an aware datetime, or None.  For storage and
        chronological splits only; never a feature.
    text : str
        Body text from text/plain and text/html parts, tags removed, capped at
        ``MAX_TEXT_CHARS``.
    url_hosts : tuple of str
        Lower-cased host names of links found in the body.
    attachments : tuple of Attachment
        Non-text parts.
    headers : tuple of (str, str)
        Other header names (lower-cased) and decoded values, capped in number
        and length, without Date, Subject and Message-ID.
    content_types : tuple of str
        MIME types of all parts, in order.
    charsets : tuple of str
        Declared charsets of the text parts.
    is_html_only : bool
        True when the body had HTML but no text/plain part.
    defects : tuple of str
        What was wrong with the message, for warnings.
    """

    subject: str = ""
    from_address: str = ""
    from_domain: str = ""
    reply_to_address: str = ""
    reply_to_domain: str = ""
    message_id: str = ""
    date: datetime | None = None
    text: str = ""
    url_hosts: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    content_types: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()
    is_html_only: bool = False
    defects: tuple[str, ...] = field(default=())

    @property
    def is_damaged(self) -> bool:
        """True when the bytes were not recognisably mail (no headers, or unparseable)."""
        return any(d.startswith(("unparseable", "no headers found")) for d in self.defects)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 / MIME bytes into a :class:`ParsedMessage`.

    Parameters
    ----------
    raw : bytes
        The message as received.  Anything is accepted, including bytes that
        are not mail at all (they become body text).

    Returns
    -------
    ParsedMessage
        Never raises for any input; problems are listed in ``defects``.

    Examples
    --------
    >>> msg = parse_message(b"From: Ann <ann@Example.org>\\nSubject: hi\\n\\nhello <b>there</b>")
    >>> msg.from_domain, msg.subject, msg.text.strip()
    ('example.org', 'hi', 'hello <b>there</b>')
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"parse_message expects bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    defects: list[str] = []
    if len(raw) > MAX_PARSE_BYTES:
        defects.append(f"message truncated to {MAX_PARSE_BYTES} bytes for parsing")
        raw = raw[:MAX_PARSE_BYTES]
    if b"\x00" in raw:
        defects.append("NUL bytes removed")
        raw = raw.replace(b"\x00", b"")
    try:
        parser = _FeedParser(_factory=_Message, policy=_POLICY)
        # Fed in blocks so that parsing stops soon after MAX_PARTS parts: the parser would
        # otherwise build every one of 30,000 tiny parts before the first is looked at.
        for start in range(0, len(raw), _FEED_BYTES):
            if parser.parts > MAX_PARTS:
                defects.append(f"more than {MAX_PARTS} MIME parts; the rest not parsed")
                break
            parser.feed(raw[start:start + _FEED_BYTES])
        msg = parser.close()
        return _from_message(msg, defects)
    except Exception as exc:  # noqa: BLE001 - the parser must never fail
        # The stdlib parser is lenient, but not provably total.  Fall back to
        # treating the bytes as text so the message still gets a score.
        defects.append(f"unparseable message ({type(exc).__name__}); scored as plain text")
        text = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return ParsedMessage(text=text, url_hosts=_url_hosts(text), defects=tuple(defects))


class _Policy(Compat32):
    """compat32, except that every header field is cut to ``MAX_HEADER_BYTES`` as the parser reads it."""

    def header_source_parse(self, sourcelines):  # type: ignore[no-untyped-def]
        name, value = super().header_source_parse(sourcelines)
        if len(name) > MAX_HEADER_BYTES:
            name = name[:MAX_HEADER_BYTES]
        if len(value) > MAX_HEADER_BYTES:
            value = value[:MAX_HEADER_BYTES]
        return name, value


_POLICY = _Policy()


class _Message(Message):
    """A Message that keeps at most ``MAX_HEADER_FIELDS`` fields and knows its MIME depth."""

    depth = 0
    dropped_fields = 0
    dropped_lines = 0

    def set_raw(self, name, value):  # type: ignore[no-untyped-def]
        if len(self._headers) >= MAX_HEADER_FIELDS:  # type: ignore[attr-defined]
            self.dropped_fields += 1
            return
        super().set_raw(name, value)

    @property
    def is_too_deep(self) -> bool:
        return self.depth > MAX_MIME_DEPTH

    def get_content_type(self) -> str:
        ctype = super().get_content_type()
        if self.depth > MAX_MIME_DEPTH and ctype.startswith(("multipart/", "message/")):
            # The parser asks this to decide whether to descend: below the cap it must not.
            return "text/plain"
        return ctype


_FEED_BYTES = 64 * 1024


class _FeedParser(email.feedparser.BytesFeedParser):
    """The stdlib parser, counting parts and recording each one's nesting depth (0 for the message itself)."""

    parts = 0

    def _new_message(self) -> None:
        super()._new_message()  # type: ignore[misc]
        self.parts += 1
        self._cur.depth = len(self._msgstack) - 1  # type: ignore[attr-defined]

    def _parse_headers(self, lines: list[str]) -> None:
        # The stdlib hands over a part's whole header block at once; past MAX_HEADER_LINES it is dropped.
        if len(lines) > MAX_HEADER_LINES:
            self._cur.dropped_lines = len(lines) - MAX_HEADER_LINES  # type: ignore[attr-defined]
            lines = lines[:MAX_HEADER_LINES]
        super()._parse_headers(lines)  # type: ignore[misc]


def _from_message(msg: Message, defects: list[str]) -> ParsedMessage:
    for defect in msg.defects:
        defects.append(type(defect).__name__)
    if not msg.keys():
        defects.append("no headers found; not an RFC 5322 message")
    subject = _header(msg, "subject")
    from_address, from_domain = parse_address(_header(msg, "from"))
    reply_to_address, reply_to_domain = parse_address(_header(msg, "reply-to"))
    message_id = _header(msg, "message-id").strip().strip("<>").strip()
    date = parse_date(_header(msg, "date"))
    headers = _header_facts(msg)
    body = _Body()
    for n, part in enumerate(msg.walk()):
        if n >= MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} MIME parts; rest ignored")
            break
        _read_part(part, body, defects)
    if body.budget <= 0:
        defects.append(f"body text truncated to {MAX_TEXT_CHARS} characters")
    raw_text = "\n".join(body.plain + body.htmls)[:MAX_TEXT_CHARS]
    return ParsedMessage(
        subject=subject,
        from_address=from_address,
        from_domain=from_domain,
        reply_to_address=reply_to_address,
        reply_to_domain=reply_to_domain,
        message_id=message_id,
        date=date,
        text=raw_text,
        url_hosts=_url_hosts(raw_text),
        attachments=tuple(body.attachments),
        headers=headers,
        content_types=tuple(body.content_types),
        charsets=tuple(body.charsets),
        is_html_only=bool(body.htmls) and not body.plain,
        defects=tuple(dict.fromkeys(defects)),
    )


def _header_facts(msg: Message) -> tuple[tuple[str, str], ...]:
    """The first ``MAX_HEADERS`` fields but Date, Subject and Message-ID: (lower-cased name, decoded value)."""
    headers: list[tuple[str, str]] = []
    for name, value in msg.items()[:MAX_HEADERS]:
        lname = _to_text(name).strip().lower()
        if lname not in _SKIPPED_HEADERS:
            headers.append((lname, decode_header_value(value)[:MAX_HEADER_CHARS]))
    return tuple(headers)


@dataclass
class _Body:
    """What the walk over the parts collects; ``budget``: characters of body text still kept."""

    plain: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    budget: int = MAX_TEXT_CHARS


def _read_part(part: Message, body: _Body, defects: list[str]) -> None:
    """Add one MIME part to ``body``: its type, and its text or its attachment facts."""
    if isinstance(part, _Message):
        if part.dropped_fields:
            defects.append(f"more than {MAX_HEADER_FIELDS} header fields in a part; rest ignored")
        if part.dropped_lines:
            defects.append(f"more than {MAX_HEADER_LINES} header lines in a part; rest ignored")
        if part.is_too_deep and Message.get_content_type(part).startswith(("multipart/", "message/")):
            defects.append(f"MIME nesting deeper than {MAX_MIME_DEPTH}; the rest read as text")
    ctype = _safe(part.get_content_type, "text/plain").lower()
    body.content_types.append(ctype)
    if part.is_multipart():
        return
    filename = _filename(part)
    disposition = _safe(part.get_content_disposition, None)
    maintype = ctype.split("/", 1)[0]
    if maintype == "multipart":
        # A multipart without a usable boundary: its body is all we have, read it as text.
        defects.append("multipart without parts; body read as text")
        ctype = "text/plain"
    elif maintype != "text" or disposition == "attachment":
        payload = part.get_payload()
        size = len(payload) if isinstance(payload, str | bytes) else 0
        body.attachments.append(Attachment(filename, ctype, size))
        return
    if body.budget <= 0:
        return
    text, charset = _decode_text_part(part, defects)
    if charset:
        body.charsets.append(charset)
    if ctype == "text/html":
        text = _strip_html(text, defects)
        body.htmls.append(text[:body.budget])
    else:
        body.plain.append(text[:body.budget])
    body.budget -= len(text)


def _safe(fn, default):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except Exception:  # noqa: BLE001 - malformed parameters make these raise
        return default


def _to_text(value: object) -> str:
    """A header value as text.

    compat32 returns ``str`` with surrogate escapes for 8-bit bytes, or a
    ``Header`` whose chunks are raw bytes in an 'unknown-8bit' charset.
    Either way the bytes are most often UTF-8 and otherwise Windows-1252.
    """
    if isinstance(value, email.header.Header):
        pieces = []
        for chunk, charset in email.header.decode_header(value):
            if isinstance(chunk, bytes):
                known = charset if charset and charset != "unknown-8bit" else None
                pieces.append(_decode_guess(chunk, known))
            else:
                pieces.append(chunk)
        return "".join(pieces)
    if not isinstance(value, str):
        return ""
    try:
        return _decode_guess(value.encode("ascii", "surrogateescape"), None)
    except UnicodeEncodeError:
        return value


def _decode_guess(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset if it fits, else UTF-8, else Windows-1252 (never fails)."""
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError, TypeError, ValueError):
            continue
    return data.decode("cp1252", "replace")


def decode_header_value(value: object) -> str:
    """Decode RFC 2047 encoded-words, tolerating every way they go wrong."""
    text = _to_text(value)
    if "=?" not in text:
        return _WS_RE.sub(" ", text).strip()
    try:
        text = _decode_encoded_words(text)
    except Exception:  # noqa: BLE001 - bad base64 (binascii.Error) in an encoded word: the value is kept as is
        pass
    return _WS_RE.sub(" ", text).strip()


def _decode_encoded_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded, as ``email.header.decode_header`` reads them.

    The same text as the stdlib's decoder followed by ``_decode_bytes`` on each of its
    (bytes, charset) pairs (compared in tests/test_encoded_words.py), in linear time: the
    stdlib's scan is quadratic in unclosed encoded words (it scans from each ``=?a?q?x`` to
    the end of the line for a ``?=``).  The same rules, quirks included: encoded
    words are found line by line; whitespace between two of them is dropped; runs of words in
    one charset are joined (unencoded runs with a space) and decoded together; once a value has
    an encoded word, its unencoded text goes through ``raw-unicode-escape`` and ASCII.  One
    difference: only the first ``MAX_ENCODED_WORDS`` encoded words are decoded, the rest is
    kept as text.  Raises ``binascii.Error`` for bad base64 (the stdlib: HeaderParseError).
    """
    # The stdlib's test, in one linear RE2 pass.  RE2 takes UTF-8, which lone surrogates are not;
    # escaping non-ASCII characters adds no "?", "=" or line end, so the answer is the same.
    probe = text if text.isascii() else text.encode("ascii", "backslashreplace").decode("ascii")
    if _HAS_ENCODED_WORD_RE.search(probe) is None:
        return text
    words = _split_encoded_words(text)
    # Whitespace between two encoded words goes (RFC 2047 section 6.2; the stdlib tests the
    # word before and after in the list as it was, and drops encoded "words" of blanks too).
    dropped = {n - 1 for n in range(2, len(words))
               if words[n][1] and words[n - 2][1] and words[n - 1][0].isspace()}
    runs: list[tuple[bytes, str | None]] = []
    pieces: list[bytes] = []
    run_charset: str | None = None
    for n, (word, encoding, charset) in enumerate(words):
        if n in dropped:
            continue
        if pieces and charset != run_charset:
            runs.append(((b" " if run_charset is None else b"").join(pieces), run_charset))
            pieces = []
        pieces.append(_word_bytes(word, encoding))
        run_charset = charset
    runs.append(((b" " if run_charset is None else b"").join(pieces), run_charset))
    return "".join(_decode_bytes(data, charset or "ascii") for data, charset in runs)


def _split_encoded_words(text: str) -> list[tuple[str, str | None, str | None]]:
    """(text, encoding or None, charset or None) per encoded word and unencoded run, line by line."""
    words: list[tuple[str, str | None, str | None]] = []
    budget = MAX_ENCODED_WORDS
    for line in text.splitlines():
        # No encoded word ends after the line's last "?=", so the stdlib's pattern only runs up to
        # it: there every encoded word it starts ends at the next "?=", a failed start ends at the
        # next "?", and so each character is looked at a bounded number of times.
        end = line.rfind("?=") + 2
        if end >= 2 and budget > 0:
            parts = _ENCODED_WORD_RE.split(line[:end], maxsplit=budget)
            parts[-1] += line[end:]
            budget -= len(parts) // 4
        else:
            parts = [line]
        unencoded = parts[0].lstrip()
        if unencoded:
            words.append((unencoded, None, None))
        for i in range(1, len(parts), 4):
            charset, encoding, encoded, unencoded = parts[i:i + 4]
            words.append((encoded, encoding.lower(), charset.lower()))
            if unencoded:
                words.append((unencoded, None, None))
    return words


def _word_bytes(word: str, encoding: str | None) -> bytes:
    """The bytes of one word: unencoded text as raw-unicode-escape, else Q or base64 decoded."""
    if encoding is None:
        return word.encode("raw-unicode-escape")
    if encoding == "q":
        return _q_decode(word)
    pad = len(word) % 4
    if pad:  # missing padding added, as the stdlib does
        word += "==="[:4 - pad]
    return binascii.a2b_base64(word.encode("raw-unicode-escape"))


def _q_decode(encoded: str) -> bytes:
    """``email.quoprimime.header_decode(encoded)`` as raw-unicode-escape bytes; in C where that is the same.

    ``binascii.a2b_qp`` reads ``_`` and ``=XX`` alike, but drops a trailing ``=`` and reads
    ``==`` as one ``=``: those words, and non-ASCII ones, take the stdlib's (per escape) route.
    """
    if encoded.isascii() and "==" not in encoded and not encoded.endswith("="):
        return binascii.a2b_qp(encoded, header=True)
    return email.quoprimime.header_decode(encoded).encode("raw-unicode-escape")


def _decode_bytes(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, "replace")
    except (LookupError, TypeError, ValueError):
        return data.decode("utf-8", "replace")


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001
        return ""
    return "" if value is None else decode_header_value(value)[:MAX_HEADER_CHARS]


def parse_address(value: str) -> tuple[str, str]:
    """(address, domain) of a header value such as ``Ann <ann@Example.org>``, lower-cased ('' where none)."""
    if not value:
        return "", ""
    try:
        _, addr = email.utils.parseaddr(value)
    except Exception:  # noqa: BLE001
        addr = ""
    addr = addr.strip().lower()
    if "@" not in addr:
        match = _ADDR_DOMAIN_RE.search(value)
        return addr, match.group(1).strip(".").lower() if match else ""
    return addr, addr.rsplit("@", 1)[1].strip(".").strip(">")


def parse_date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # noqa: BLE001 - includes ValueError, TypeError, OverflowError
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _filename(part: Message) -> str:
    name = _safe(part.get_filename, None)
    if not name:
        name = _safe(lambda: part.get_param("name"), None)
    if isinstance(name, tuple):  # RFC 2231 triple
        name = _safe(lambda: email.utils.collapse_rfc2231_value(name), "")
    return decode_header_value(name) if name else ""


def _decode_text_part(part: Message, defects: list[str]) -> tuple[str, str]:
    """Decode one text part's transfer encoding and charset, leniently."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822 mis-declared as text
        return "", ""
    if isinstance(payload, str) and len(payload) > MAX_PART_BYTES:
        defects.append(f"text part truncated to {MAX_PART_BYTES} bytes")
        payload = payload[:MAX_PART_BYTES]
        # Cut at a line end so base64 stays decodable up to the cut.
        cut = payload.rfind("\n")
        if cut > 0:
            payload = payload[:cut]
        part.set_payload(payload)
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        defects.append("undecodable transfer encoding")
        data = None
    if data is None:
        data = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else b""
    charset = _safe(part.get_content_charset, None) or ""
    if charset:
        try:
            "".encode(charset)
        except (LookupError, TypeError, ValueError):
            defects.append(f"unknown charset {charset[:40]!r}")
            charset_ok = False
        else:
            charset_ok = True
        if charset_ok:
            try:
                return data.decode(charset), charset
            except UnicodeDecodeError:
                defects.append(f"text does not match its charset {charset[:40]!r}")
    # Undeclared, unknown or wrong: UTF-8 if it decodes, else Windows-1252.
    return _decode_guess(data, None), charset


def _strip_html(text: str, defects: list[str] | None = None) -> str:
    """Visible text of an HTML part, with each link target copied in where the link is.

    Lexbor is an HTML5 parser (linear in the input, no regex); the part is
    already cut to ``MAX_PART_BYTES``.  Comments and the content of script,
    style and head are dropped; entities are decoded.  Link targets (``href``)
    are kept as text next to the link because they are the evidence spam is
    made of: ``url_hosts`` and the body words see them.
    """
    cut = _too_deep_at(text)
    rest = ""
    if cut is not None:
        if defects is not None:
            defects.append(f"HTML nested deeper than {MAX_HTML_DEPTH}; the rest read without an HTML parser")
        # Only the part of the document within MAX_HTML_DEPTH goes to the parser; the rest
        # loses its tags (one str.find pass) and its entities (stdlib, linear).
        text, rest = text[:cut], _drop_tags(text[cut:])
        try:
            rest = " " + html.unescape(rest)
        except Exception:  # noqa: BLE001 - absurd numeric entities
            rest = " " + rest
    from selectolax.lexbor import LexborHTMLParser  # its C library loads for mail with HTML only

    tree = LexborHTMLParser(text)
    tree.strip_tags(_INVISIBLE_TAGS)
    root = tree.root
    if root is None:
        return rest
    for n, node in enumerate(root.css("[href]")):
        if n >= MAX_HREFS:
            break
        href = (node.attributes.get("href") or "").strip()
        if href:
            node.insert_before(f" {href} ")
    return root.text(separator=" ") + rest


_TAG_SCAN_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]{0,15})")
# Elements that never nest: void ones, and ones a new start tag closes (p, li, td ...).
_NON_NESTING = frozenset("area base br col embed hr img input link meta param source track wbr "
                         "p li dt dd td th tr option".split())


def _drop_tags(markup: str) -> str:
    """Markup with each ``<...>`` replaced by a space (or its link target): one str.find pass.

    (The stdlib's ``<[^>]*>`` is quadratic on unclosed '<'; a regex call per tag costs more than find.)
    """
    out: list[str] = []
    pos = 0
    while True:
        lt = markup.find("<", pos)
        if lt < 0:
            out.append(markup[pos:])
            break
        out.append(markup[pos:lt])
        gt = markup.find(">", lt)
        if gt < 0:  # an unclosed '<': the rest is text
            out.append(markup[lt:])
            break
        out.append(_href_of(markup[lt + 1:gt]))
        pos = gt + 1
    return "".join(out)


def _href_of(tag: str) -> str:
    """' URL ' for a tag with an href attribute (link targets are evidence), else ' '."""
    k = tag.lower().find("href")
    if k < 0:
        return " "
    value = tag[k + 4:].lstrip()
    if not value.startswith("="):
        return " "
    value = value[1:].lstrip()
    if value[:1] in ("'", '"'):
        value = value[1:].split(value[0], 1)[0]
    else:
        value = value.split(None, 1)[0] if value.strip() else ""
    return f" {value.strip()} "


def _too_deep_at(markup: str) -> int | None:
    """Where an estimate of the element depth first exceeds ``MAX_HTML_DEPTH``, or None.

    Depth = start tags minus end tags that close an open element of that name
    (a bogus end tag closes nothing), which is at least the depth a parser
    builds.  One linear pass; the pattern has no nested quantifier.
    """
    depth = 0
    open_names: dict[str, int] = {}
    for match in _TAG_SCAN_RE.finditer(markup):
        closing, name = match.groups()
        name = name.lower()
        if name in _NON_NESTING:
            continue
        if closing:
            if open_names.get(name, 0) > 0:
                open_names[name] -= 1
                depth -= 1
        else:
            open_names[name] = open_names.get(name, 0) + 1
            depth += 1
            if depth > MAX_HTML_DEPTH:
                return match.start()
    return None


def _url_hosts(text: str) -> tuple[str, ...]:
    hosts: dict[str, None] = {}
    for match in _URL_RE.finditer(text):
        host = (match.group(1) or match.group(2) or "").lower()
        host = host.rsplit("@", 1)[-1][:MAX_HOST_CHARS].strip(".")
        if host:
            hosts.setdefault(host, None)
            if len(hosts) >= MAX_URLS:
                break
    return tuple(hosts)

