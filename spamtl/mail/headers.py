"""Byte-exact surgery on a message's top-level header block, without the MIME parser.

:func:`add_headers` and :func:`strip_own_headers` edit the header block of the
raw bytes and keep every other byte as it is (see their docstrings for the
exact rules); :func:`message_identity` says which stored message a copy is,
whatever its delivery did to it; :func:`parse_envelope` reads Message-ID and
Date cheaply; :func:`not_mail_reason` says why bytes are not mail at all.

The work is bounded and linear: at most ``MAX_HEADER_SCAN_BYTES`` of the header
block and ``MAX_HEADER_SCAN_FIELDS`` fields are looked at; line ends are found
with ``bytes.find`` (each byte searched once), a field's name with a regular
expression that cannot backtrack, and runs of lines led by blanks with RE2.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import datetime

import re2

from spamtl.mail.parse import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, decode_header_value, parse_date

__all__ = [
    "MAX_HEADER_SCAN_BYTES",
    "MAX_HEADER_SCAN_FIELDS",
    "MAX_STATUS_CHECKS",
    "add_headers",
    "strip_own_headers",
    "message_identity",
    "parse_envelope",
    "not_mail_reason",
]

MAX_HEADER_SCAN_BYTES = 256 * 1024
"""Bytes of the top-level header block that :func:`strip_own_headers` and :func:`parse_envelope` look at."""
MAX_HEADER_SCAN_FIELDS = MAX_HEADER_FIELDS
"""Fields of the top-level header block they look at: as many as the parser keeps.

Each field costs a few calls, so the work is in fields as much as in bytes, and
256 KB holds 64,000 fields of ``X:v``.  Filters add their headers at the top.
"""
MAX_STATUS_CHECKS = 3
"""``X-Spamtl-Status`` fields whose ``id=`` :func:`message_identity` checks against the bytes below them.

Each check hashes the message once more.  A copy carries spamtl's field at the
top, and one more for each earlier pass through a spamtl filter; a message with
more is not one spamtl wrote, and its further fields are not looked at.
"""


# The header block is read line by line.  A line ends at CRLF, CR or LF, as the stdlib parser reads it.
# A header field line: a name of printable characters but the colon, optional blanks, a colon (RFC 5322
# section 3.6.8).  The name's class holds neither a blank nor the colon, so a failed match gives back one
# byte at a time and fails at once each time: linear in the name in Python's engine too.
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# Lines that begin with a blank before any field: a parser ignores them, or folds them into the
# field above them.  RE2 (in its Latin-1 mode every byte is a character) so that a message of 10 MB of
# such lines is one linear pass.  The same pattern reads a field's continuation lines.
_LATIN1 = re2.Options()
_LATIN1.encoding = re2.Options.Encoding.LATIN1
_LEADING_WS_RE = re2.compile(rb"(?:[ \t][^\r\n]*(?:\r\n|\r|\n))*", _LATIN1)
_BLANKS = (b" ", b"\t")
_OWN_PREFIXES = (b"x-spamtl-", b"x-spam-", b"x-spamd-", b"x-rspamd-")
_OWN_NAMES = frozenset({b"x-bogosity"})


def _is_own(name: bytes) -> bool:
    lname = name.lower()
    return lname in _OWN_NAMES or lname.startswith(_OWN_PREFIXES)


class _LineEnds:
    """Where the lines of ``raw[:endpos]`` end, asked at increasing positions.

    The next LF and the next CR are remembered, so each byte is searched at most once for each: linear
    over any number of lines (input of bare CRs is searched for an LF once, not once per line).
    """

    __slots__ = ("raw", "endpos", "lf", "cr")

    def __init__(self, raw: bytes, endpos: int) -> None:
        self.raw, self.endpos = raw, endpos
        self.lf = self.cr = -2  # -2: not searched yet; -1: none before endpos

    def after(self, pos: int) -> tuple[int, int]:
        """(End of the content of the line at ``pos``, start of the next line); (-1, -1) when the line does
        not end before ``endpos``.  CR LF is one line end when both are before ``endpos``."""
        if self.lf == -2 or -1 < self.lf < pos:
            self.lf = self.raw.find(b"\n", pos, self.endpos)
        if self.cr == -2 or -1 < self.cr < pos:
            self.cr = self.raw.find(b"\r", pos, self.endpos)
        lf, cr = self.lf, self.cr
        if cr >= 0 and (lf < 0 or cr < lf):
            return cr, cr + 2 if lf == cr + 1 else cr + 1
        return (lf, lf + 1) if lf >= 0 else (-1, -1)


def _envelope_end(raw: bytes) -> int:
    """Length of an mbox ``From `` envelope line (with its line end) at the start, else 0."""
    if not raw.startswith(b"From "):
        return 0
    _, nxt = _LineEnds(raw, len(raw)).after(0)
    return len(raw) if nxt < 0 else nxt


_FEW_LINES = 4
"""Lines led by a blank that :func:`_skip_blank_led` steps over itself before it hands the rest to RE2."""


def _skip_blank_led(line_ends: _LineEnds, pos: int) -> int:
    """``pos`` moved past the lines led by a blank that start there (each with its line end, before
    ``line_ends.endpos``).

    The first few are stepped over with ``line_ends``, cheaper than a call into RE2 for the one or two
    continuation lines a field usually has; RE2 takes any longer run in one linear pass.
    """
    raw = line_ends.raw
    for _ in range(_FEW_LINES):
        if raw[pos:pos + 1] not in _BLANKS:
            return pos
        _, nxt = line_ends.after(pos)
        if nxt < 0:  # a line that does not end before endpos is not a whole line to skip
            return pos
        pos = nxt
    if raw[pos:pos + 1] not in _BLANKS:
        return pos
    match = _LEADING_WS_RE.match(raw, pos, line_ends.endpos)
    return match.end() if match is not None else pos


def _header_fields(raw: bytes, until: Callable[[bytes], bool] | None = None,
                   ) -> tuple[int, list[tuple[int, int, bytes, bool]]]:
    """Where the top-level header fields are: (start of the first field, [(start, end, name, whole), ...]).

    Skips the envelope line and leading whitespace lines; stops at the empty
    line, at a line that is neither a field nor a continuation, at the end of
    the data, once ``MAX_HEADER_SCAN_BYTES`` of fields or
    ``MAX_HEADER_SCAN_FIELDS`` fields have been read, or before the first
    field whose name ``until`` accepts (for callers that need only the top).
    A field's span includes its continuation lines and line end; ``whole`` is
    False for a last field cut by the scan limit.
    """
    pos = _skip_blank_led(_LineEnds(raw, len(raw)), _envelope_end(raw))
    first = pos
    fields: list[tuple[int, int, bytes, bool]] = []
    limit = min(len(raw), pos + MAX_HEADER_SCAN_BYTES)
    line_ends = _LineEnds(raw, limit)
    while pos < limit and len(fields) < MAX_HEADER_SCAN_FIELDS:
        if raw.startswith(b"From ", pos):
            # A misplaced envelope line: the stdlib parser skips it and reads on, so do we
            # (kept, with the continuation lines after it, as if it were a field of its own).
            name = b"From "
        else:
            match = _FIELD_RE.match(raw, pos, limit)
            if match is None:
                break
            name = match.group(1)
        if until is not None and until(name):
            break
        start = pos
        _, pos = line_ends.after(pos)
        if pos >= 0:  # its continuation lines that end before the limit, in one match (not one call per line)
            pos = _skip_blank_led(line_ends, pos)
            if raw[pos:pos + 1] in _BLANKS:
                # A continuation line without a line end before the limit, or one that starts at the limit
                # (the field goes on past it: cut, not whole).
                pos = -1
        if pos < 0:  # the field runs to the end of the data, or past the scan limit (then it is cut)
            fields.append((start, limit, name, limit == len(raw)))
            break
        fields.append((start, pos, name, True))
    return first, fields


def strip_own_headers(raw: bytes) -> bytes:
    r"""The message without the spam-filter headers of its top-level header block.

    Removes every header field (with its continuation lines) named, in any
    case, ``X-Spamtl-*``, ``X-Spam-*`` (SpamAssassin's X-Spam-Flag, -Status,
    -Level, -Score, -Report, -Checker-Version), ``X-Spamd-*``, ``X-Rspamd-*``
    or ``X-Bogosity``: what spamtl and the other filters a message may have
    passed add, so that the filter never learns its own (or another filter's)
    verdict.  Everything else, an mbox ``From `` envelope line included, is
    kept byte for byte; the one exception: where a removed field sat between a
    bare CR and an LF (mixed line endings), an LF is kept so that they do not
    merge into one line end.  Only the top-level header block is looked at, and of
    it at most ``MAX_HEADER_SCAN_BYTES`` and ``MAX_HEADER_SCAN_FIELDS`` fields;
    bodies and attached messages are never touched.

    Examples
    --------
    >>> strip_own_headers(b"From x@y Thu Jan  1 00:00:00 2004\nX-Spam-Flag: YES\nSubject: hi\n\nX-Spam-Flag: body")
    b'From x@y Thu Jan  1 00:00:00 2004\nSubject: hi\n\nX-Spam-Flag: body'
    """
    raw = bytes(raw)
    _, fields = _header_fields(raw)
    own = [(start, end) for start, end, name, whole in fields if whole and _is_own(name)]
    if not own:
        return raw
    pieces, pos = [], 0
    for start, end in own:
        pieces.append(raw[pos:start])
        pos = end
    pieces.append(raw[pos:])
    joined = [pieces[0]]
    last = pieces[0][-1:]
    for piece in pieces[1:]:
        if not piece:  # two removed fields in a row
            continue
        if last == b"\r" and piece.startswith(b"\n"):
            # Mixed line endings: a bare CR before the removed field and an LF after it would
            # merge into one CRLF and swallow a line (the blank one that ends the header block).
            joined.append(b"\n")
        joined.append(piece)
        last = piece[-1:]
    return b"".join(joined)


# Fields a transport writes at the top of the header block, above what it was handed: RFC 5321's trace
# fields, what delivery agents record of the envelope (Postfix: Delivered-To, X-Original-To; Exim:
# Envelope-to, Delivery-date; others X-Envelope-*, X-Delivered-To), the results a receiving MTA prepends,
# and a misplaced mbox "From " line (read as a field named "From ").
_TRACE_NAMES = frozenset({
    b"return-path", b"received", b"delivered-to", b"x-original-to", b"envelope-to", b"delivery-date",
    b"x-envelope-to", b"x-envelope-from", b"x-delivered-to", b"received-spf", b"authentication-results",
    b"from "})
# What a reader sees of a message (RFC 5322 sections 3.6.2 to 3.6.7, and MIME): above spamtl's own
# X-Spamtl-Status such a field makes the copy another message, whatever its id says.
_CONTENT_NAMES = frozenset({
    b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"subject", b"date", b"message-id", b"in-reply-to",
    b"references", b"comments", b"keywords", b"mime-version"})
_CONTENT_PREFIXES = (b"content-", b"resent-")
_STATUS_NAME = b"x-spamtl-status"
# The id in spamtl's X-Spamtl-Status value ("ham, probability=0.0100, ..., id=0123456789ab[, label]").
# Run over one field cut to MAX_HEADER_BYTES; no nested quantifiers.
_STATUS_ID_RE = re.compile(rb"(?<![0-9A-Za-z_])id=([0-9a-f]{12})(?![0-9A-Za-z])")


def message_identity(raw: bytes) -> tuple[bytes, str]:
    r"""(The bytes spamtl keeps of a message, its digest): the one rule for "the same message".

    A copy of a message after delivery is the same message: its line ends
    converted (CRLF, LF), trace fields written above it by the MTA or the
    delivery agent, spamtl's and other filters' headers added, the final line
    end added or dropped (IMAP APPEND).  Any other change (a byte of the body,
    a header value, a field added below the first field that is not trace)
    makes another message.

    - **Kept bytes**: the message without filter headers
      (:func:`strip_own_headers`), what is stored and featurised.  But when
      one of the first ``MAX_STATUS_CHECKS`` ``X-Spamtl-Status`` fields of the
      top-level header block has no content field (From, To, Subject, Date,
      Message-ID, MIME-Version, Content-*, Resent-*, ...) above it, and its
      ``id=`` is the start of the digest of the bytes from that field down,
      the kept bytes are those: the copy spamtl classified, without what
      a transport later wrote above it (an LDA's or a virus scanner's fields).
    - **Digest**: the sha256 of the kept bytes' canonical form: without the
      run of trace fields at the top of the header block (Received,
      Return-Path, Delivered-To, X-Original-To, Envelope-To, Delivery-Date,
      X-Envelope-To, X-Envelope-From, X-Delivered-To, Received-SPF,
      Authentication-Results), nor the mbox ``From `` line and the lines
      led by blanks before the first field (unless no field follows: bytes
      that are not mail count whole); every line end (CRLF, CR, LF) as LF;
      no line end at the very end.

    The id in a header is never looked up: it marks where spamtl's copy begins,
    believed only when the bytes below it hash to it, so a forged one cannot name
    another message.  A stored message gives its own digest back
    (``message_identity(kept)[1] == digest``).  Linear and bounded: the header
    scans of :func:`strip_own_headers`, and at most ``MAX_STATUS_CHECKS + 1`` hashes.

    Examples
    --------
    >>> kept, digest = message_identity(b"Subject: hi\n\nbody\n")
    >>> status = b"X-Spamtl-Status: ham, id=" + digest[:12].encode() + b"\r\n"
    >>> delivered = b"Return-Path: <a@b.example>\r\nX-Virus-Scanned: yes\r\n" + status + b"Subject: hi\r\n\r\nbody"
    >>> message_identity(delivered)[1] == digest, message_identity(b"Subject: hi\n\nbody!\n")[1] == digest
    (True, False)
    """
    raw = bytes(raw)
    _, fields = _header_fields(raw, until=_is_content)
    seen = 0
    for start, end, name, whole in fields:
        if name.lower() != _STATUS_NAME:
            continue
        seen += 1
        match = _STATUS_ID_RE.search(raw, start, min(end, start + MAX_HEADER_BYTES)) if whole else None
        if match is not None:
            below = strip_own_headers(raw[start:])
            digest = _digest(below)
            if digest.startswith(match.group(1).decode("ascii")):
                return below, digest
        if seen >= MAX_STATUS_CHECKS:
            break
    kept = strip_own_headers(raw)
    return kept, _digest(kept)


def _is_content(name: bytes) -> bool:
    lname = name.lower()
    return lname in _CONTENT_NAMES or lname.startswith(_CONTENT_PREFIXES)


def _is_not_trace(name: bytes) -> bool:
    return name.lower() not in _TRACE_NAMES


def _digest(kept: bytes) -> str:
    """The sha256 (hex) of the canonical form of kept bytes (see :func:`message_identity`)."""
    first, fields = _header_fields(kept, until=_is_not_trace)
    if not fields and _FIELD_RE.match(kept, first, first + MAX_HEADER_SCAN_BYTES) is None:
        first = 0  # no header field: not mail, every byte counts
    start = first
    for _, end, _, whole in fields:
        if not whole:
            break
        start = end
    canonical = kept[start:].replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    return hashlib.sha256(canonical).hexdigest()


def _header_value(raw: bytes, start: int, end: int) -> str:
    """One field's value from the raw bytes, cut to ``MAX_HEADER_BYTES`` before it is decoded."""
    value = raw[start:min(end, start + MAX_HEADER_BYTES)]
    value = value.split(b":", 1)[1] if b":" in value else b""
    return value.decode("ascii", "surrogateescape")


def parse_envelope(raw: bytes) -> tuple[str, datetime | None]:
    """Message-ID and Date from the header block only (cheap: no MIME parse; never raises).

    Used when storing a message, where only these two facts are needed.  Looks
    at ``MAX_HEADER_SCAN_BYTES`` of the header block and ``MAX_HEADER_BYTES`` of
    each value at most.
    """
    raw = bytes(raw)
    _, fields = _header_fields(raw)
    found: dict[bytes, str] = {}
    for start, end, name, _ in fields:
        lname = name.lower()
        if lname in (b"message-id", b"date") and lname not in found:
            found[lname] = _header_value(raw, start, end)
    message_id = decode_header_value(found.get(b"message-id", ""))
    date = parse_date(decode_header_value(found.get(b"date", "")))
    return message_id.strip().strip("<>").strip()[:998], date


def add_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    r"""The message byte for byte, with header lines added at the top.

    The rule, so that the added fields are always well-formed and nothing in
    the input can fold into them:

    - they go first, after an mbox ``From `` envelope line if there is one
      (procmail passes it), and after any lines that begin with a space or tab
      before the first header field (a parser ignores such lines at the top,
      but would fold them into a header placed above them);
    - they end with the input's own line ending (the first one found: CRLF,
      CR or LF; LF for input that has none), except that where that is a
      bare CR and the byte after the block is LF they end with CRLF (a CR
      before that LF would read as one CRLF, and a whitespace line after it
      would fold into the last added field);
    - names and values are ASCII (others replaced by ``?``) on one line
      (CR and LF become spaces);
    - the only byte ever added besides the block is one line ending, after an
      input that ends inside that first line (an unterminated ``From `` line
      or an unterminated whitespace line, which the block would otherwise be
      glued onto or folded into).

    So the output is ``prefix + block + rest`` where ``prefix + rest`` is the
    input (plus that one line ending), and every parser sees exactly the
    values given here.

    Examples
    --------
    >>> add_headers(b"From a@b Thu Jan  1 00:00:00 2004\r\nSubject: x\r\n\r\nbody", [("X-Spamtl-Status", "ham")])
    b'From a@b Thu Jan  1 00:00:00 2004\r\nX-Spamtl-Status: ham\r\nSubject: x\r\n\r\nbody'
    >>> add_headers(b"From a@b Thu Jan  1 00:00:00 2004", [("X-Spamtl-Status", "ham")])
    b'From a@b Thu Jan  1 00:00:00 2004\nX-Spamtl-Status: ham\n'
    """
    raw = bytes(raw)
    end, nxt = _LineEnds(raw, min(len(raw), MAX_HEADER_SCAN_BYTES)).after(0)
    eol = raw[end:nxt] if end >= 0 else b"\n"
    block = b"".join(_header_line(name, value) + eol for name, value in headers)
    pos = _skip_blank_led(_LineEnds(raw, len(raw)), _envelope_end(raw))
    if eol == b"\r" and raw[pos:pos + 1] == b"\n":
        # Mixed endings: a bare CR before the input's LF would read as one CRLF, and a whitespace
        # line after it would fold into our last header; end our lines with CRLF there instead.
        block = b"".join(_header_line(name, value) + b"\r\n" for name, value in headers)
    prefix = raw[:pos]
    if pos == len(raw) and pos > 0 and raw[pos - 1:pos] not in (b"\n", b"\r"):
        prefix += eol  # an unterminated From or whitespace line: the one added line ending
    elif pos < len(raw) and raw[pos:pos + 1] in _BLANKS:
        # An unterminated whitespace line after the envelope (the regex needs a line end).
        prefix, raw, pos = raw + eol, b"", 0
    return prefix + block + raw[pos:]


_UNSAFE_NAME_RE = re.compile(r"[^\x21-\x39\x3b-\x7e]")


def _header_line(name: str, value: str) -> bytes:
    name = _UNSAFE_NAME_RE.sub("-", name) or "X-Spamtl"
    value = value.replace("\r", " ").replace("\n", " ")
    return f"{name}: {value}".encode("ascii", "replace")


NOT_MAIL_SNIFF_BYTES = 1024
"""Bytes searched for a NUL to call input without a header field binary rather than text (a reason only)."""


def not_mail_reason(raw: bytes) -> str | None:
    r"""Why ``raw`` is not a mail message at all, or None when it is one (damaged or not).

    Not mail: empty or whitespace-only input, and input whose first line is
    not a header field (``Name: value``, the name starting with a letter),
    once an mbox ``From `` envelope line and lines starting with a blank (which
    parsers skip) are passed: no header section, so a text file, a picture,
    an executable.  Anything that starts with a header field is mail, however
    damaged after it: garbage or a NUL byte further down must never let a
    sender's message through unscanned (and an MTA always puts its own
    ``Received`` field first).  Looks at the first field only: linear in the
    skipped blank lines, at most ``MAX_HEADER_BYTES`` for the field name.

    Examples
    --------
    >>> not_mail_reason(b"Subject: hi\n\nbody") is None
    True
    >>> not_mail_reason(b" \r\n"), not_mail_reason(b"\x89PNG\r\n\x1a\n\x00\x00"), not_mail_reason(b"hello\n")
    ('empty message', 'not mail: binary data', 'not mail: no header fields')
    """
    raw = bytes(raw)
    pos = _skip_blank_led(_LineEnds(raw, len(raw)), _envelope_end(raw))
    match = _FIELD_RE.match(raw, pos, min(len(raw), pos + MAX_HEADER_BYTES))
    if match is not None and match.group(1)[:1].isalpha():
        return None
    if not raw[pos:].strip():
        return "empty message"
    if b"\x00" in raw[:NOT_MAIL_SNIFF_BYTES]:
        return "not mail: binary data"
    return "not mail: no header fields"
