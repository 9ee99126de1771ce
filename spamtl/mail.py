"""Raw message bytes -> :class:`ParsedMessage` (pure, never raises).

Real mail is broken in every way imaginable: MIME boundaries that never close,
charsets that do not exist or lie, base64 with garbage in it, 8-bit bytes in
headers, NUL bytes, 30 MB attachments, and files that are not mail at all.
:func:`parse_message` survives all of it.  Whatever can be recovered is
returned; what went wrong is listed in ``ParsedMessage.defects`` so that the
caller can warn, but a message is never lost because it could not be parsed.

The work per message is bounded: at most ``MAX_PARSE_BYTES`` of the raw bytes
are handed to the MIME parser, at most ``MAX_PART_BYTES`` of any one text part
are decoded, and at most ``MAX_TEXT_CHARS`` of text are kept in total.
Non-text parts (attachments) are never decoded; only their name, type and
encoded size are recorded.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as _policy
from email.message import Message

__all__ = [
    "MAX_PARSE_BYTES",
    "MAX_PART_BYTES",
    "MAX_TEXT_CHARS",
    "Attachment",
    "ParsedMessage",
    "parse_message",
    "parse_envelope",
    "add_headers",
]

MAX_PARSE_BYTES = 4 * 1024 * 1024
"""Raw bytes given to the MIME parser; the rest of a huge message is ignored."""
MAX_PART_BYTES = 512 * 1024
"""Encoded bytes of one text part that are decoded."""
MAX_TEXT_CHARS = 100_000
"""Characters of body text kept in total (subject and headers not counted)."""
MAX_HEADERS = 100
MAX_HEADER_CHARS = 2_000
MAX_PARTS = 200
MAX_URLS = 200

# Headers whose values are never passed on as header facts: the date gives the
# label away in public corpora and teaches nothing that lasts, and the rest are
# handled by dedicated fields.
_SKIPPED_HEADERS = frozenset({"date", "subject", "message-id"})

_TAG_BLOCK_RE = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG_RE = re.compile(r"<[^>]{0,2000}>")
_URL_RE = re.compile(
    r"""(?:https?|ftp)://([^\s/?#"'<>\\:@]+(?:@[^\s/?#"'<>\\:]+)?)"""
    r"""|\bwww\.([a-z0-9.-]+\.[a-z]{2,})""",
    re.IGNORECASE,
)
_ADDR_DOMAIN_RE = re.compile(r"@([A-Za-z0-9.-]+)")
_WS_RE = re.compile(r"\s+")


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
    if not isinstance(raw, (bytes, bytearray, memoryview)):
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
        msg = email.message_from_bytes(raw, policy=_policy.compat32)
        return _from_message(msg, defects)
    except Exception as exc:  # noqa: BLE001 - the parser must never fail
        # The stdlib parser is lenient, but not provably total.  Fall back to
        # treating the bytes as text so the message still gets a score.
        defects.append(f"unparseable message ({type(exc).__name__}); scored as plain text")
        text = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return ParsedMessage(text=text, url_hosts=_url_hosts(text), defects=tuple(defects))


def _from_message(msg: Message, defects: list[str]) -> ParsedMessage:
    for defect in msg.defects:
        defects.append(type(defect).__name__)
    if not msg.keys():
        defects.append("no headers found; not an RFC 5322 message")

    subject = _header(msg, "subject")
    from_address, from_domain = _address(_header(msg, "from"))
    reply_to_address, reply_to_domain = _address(_header(msg, "reply-to"))
    message_id = _header(msg, "message-id").strip().strip("<>").strip()
    date = _date(_header(msg, "date"))

    headers: list[tuple[str, str]] = []
    for name, value in msg.items()[:MAX_HEADERS]:
        lname = _to_text(name).strip().lower()
        if lname in _SKIPPED_HEADERS:
            continue
        headers.append((lname, _decode_header_value(value)[:MAX_HEADER_CHARS]))

    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    content_types: list[str] = []
    charsets: list[str] = []
    budget = MAX_TEXT_CHARS
    for n, part in enumerate(msg.walk()):
        if n >= MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} MIME parts; rest ignored")
            break
        ctype = _safe(part.get_content_type, "text/plain").lower()
        content_types.append(ctype)
        if part.is_multipart():
            continue
        filename = _filename(part)
        disposition = _safe(part.get_content_disposition, None)
        maintype = ctype.split("/", 1)[0]
        if maintype == "multipart":
            # A multipart without a usable boundary: its body is all we have, read it as text.
            defects.append("multipart without parts; body read as text")
            ctype = "text/plain"
        elif maintype != "text" or disposition == "attachment":
            payload = part.get_payload()
            size = len(payload) if isinstance(payload, (str, bytes)) else 0
            attachments.append(Attachment(filename, ctype, size))
            continue
        if budget <= 0:
            continue
        text, charset = _decode_text_part(part, defects)
        if charset:
            charsets.append(charset)
        if ctype == "text/html":
            text = _strip_html(text)
            htmls.append(text[:budget])
        else:
            plain.append(text[:budget])
        budget -= len(text)

    if budget <= 0:
        defects.append(f"body text truncated to {MAX_TEXT_CHARS} characters")
    raw_text = "\n".join(plain + htmls)[:MAX_TEXT_CHARS]
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
        attachments=tuple(attachments),
        headers=tuple(headers),
        content_types=tuple(content_types),
        charsets=tuple(charsets),
        is_html_only=bool(htmls) and not plain,
        defects=tuple(dict.fromkeys(defects)),
    )


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


def _decode_header_value(value: object) -> str:
    """Decode RFC 2047 encoded-words, tolerating every way they go wrong."""
    text = _to_text(value)
    if "=?" not in text:
        return _WS_RE.sub(" ", text).strip()
    try:
        pieces = []
        for chunk, charset in email.header.decode_header(text):
            if isinstance(chunk, bytes):
                pieces.append(_decode_bytes(chunk, charset or "ascii"))
            else:
                pieces.append(chunk)
        text = "".join(pieces)
    except Exception:  # noqa: BLE001 - bad base64 or charset in an encoded word
        pass
    return _WS_RE.sub(" ", text).strip()


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
    return "" if value is None else _decode_header_value(value)


def _address(value: str) -> tuple[str, str]:
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


def _date(value: str) -> datetime | None:
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
    return _decode_header_value(name) if name else ""


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


def _strip_html(text: str) -> str:
    text = _COMMENT_RE.sub(" ", text)
    text = _TAG_BLOCK_RE.sub(" ", text)
    # Keep link targets: they are the evidence spam is made of.
    text = re.sub(r"""href\s*=\s*["']?([^"'\s>]+)""", r"> \1 <", text, flags=re.IGNORECASE)
    text = _TAG_RE.sub(" ", text)
    try:
        text = html.unescape(text)
    except Exception:  # noqa: BLE001 - absurd numeric entities
        pass
    return text


def _url_hosts(text: str) -> tuple[str, ...]:
    hosts: dict[str, None] = {}
    for match in _URL_RE.finditer(text):
        host = (match.group(1) or match.group(2) or "").lower()
        host = host.rsplit("@", 1)[-1].strip(".")
        if host:
            hosts.setdefault(host, None)
            if len(hosts) >= MAX_URLS:
                break
    return tuple(hosts)


_ENVELOPE_RE = re.compile(rb"^(message-id|date)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def parse_envelope(raw: bytes) -> tuple[str, datetime | None]:
    """Message-ID and Date from the header block only (cheap: no MIME parse; never raises).

    Used when storing a message, where only these two facts are needed.
    """
    end = raw.find(b"\n\n", 0, 256 * 1024)
    crlf = raw.find(b"\r\n\r\n", 0, 256 * 1024)
    if crlf >= 0 and (end < 0 or crlf < end):
        end = crlf
    head = raw[: end if end >= 0 else 256 * 1024]
    found: dict[bytes, bytes] = {}
    for match in _ENVELOPE_RE.finditer(head):
        found.setdefault(match.group(1).lower(), match.group(2))
    message_id = _decode_header_value(found.get(b"message-id", b"").decode("ascii", "surrogateescape"))
    date = _date(_decode_header_value(found.get(b"date", b"").decode("ascii", "surrogateescape")))
    return message_id.strip().strip("<>").strip()[:998], date


def add_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """The message byte for byte, with header lines added at the top.

    They go after an mbox ``From `` envelope line if there is one (procmail
    passes it), and use the message's own line ending (CRLF or LF).
    """
    head_end = raw.find(b"\n\n")
    first_lines = raw[: head_end if head_end >= 0 else 2000]
    eol = b"\r\n" if b"\r\n" in first_lines else b"\n"
    block = b"".join(f"{name}: {value}".encode("ascii", "replace") + eol for name, value in headers)
    if raw.startswith(b"From "):
        end = raw.find(b"\n") + 1 or len(raw)
        return raw[:end] + block + raw[end:]
    return block + raw


_FILTER_HEADER_RE = re.compile(rb"(?i)(x-spamtl-|x-spam-|x-bogosity|x-spamd-|x-rspamd-)")


def strip_own_headers(raw: bytes) -> bytes:
    """The message without header fields that spam filters add (X-Spamtl-*, X-Spam-*, ...).

    Only the top-level header block is looked at; everything else stays byte for byte.
    """
    head_end = raw.find(b"\n\n", 0, 256 * 1024)
    if head_end < 0:
        head_end = min(len(raw), 256 * 1024)
    lines = raw[:head_end].split(b"\n")
    out: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and out:
            if not dropping:
                out.append(line)
            continue
        dropping = bool(_FILTER_HEADER_RE.match(line)) and b":" in line[:80]
        if not dropping:
            out.append(line)
    if len(out) == len(lines):
        return raw
    return b"\n".join(out) + raw[head_end:]
