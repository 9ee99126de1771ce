"""The SPAMC/SPAMD protocol (as SpamAssassin's ``spamd`` speaks it): parsing and formatting, no I/O.

A request is ``COMMAND SPAMC/1.5`` on one line, header lines ``Name: value``,
an empty line, then ``Content-length`` bytes of message.  A response is
``SPAMD/1.5 CODE MESSAGE``, headers, an empty line and a body.  Lines end in
``\\r\\n`` (a bare ``\\n`` is accepted).  Codes are the ``sysexits.h`` numbers
spamc knows.

spamtl's score scale (what ``Spam: True ; S / T`` says):

    S = 10 * ln(p / (1 - p))      p = the user's spam probability
    T = 10 * ln(c / (1 - c))      c = the user's spam cutoff

so S >= T exactly when p >= c, a probability of 0.5 is 0, 0.9 is 22.0 and
0.99 is 46.0.  Both are shown with one decimal (as spamc prints them); when
rounding would contradict the verdict (or the user's own label decides), S is
moved to T (spam) or to T - 0.1 (not spam), so ``S >= T`` holds exactly when
``Spam: True`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["PROTOCOL_VERSION", "COMMANDS", "ProtocolError", "Request", "parse_request_line", "parse_header",
           "build_request", "response", "spam_header", "score_scale", "EX_OK", "EX_USAGE", "EX_DATAERR",
           "EX_NOUSER", "EX_SOFTWARE", "EX_TEMPFAIL", "EX_PROTOCOL", "EX_UNAVAILABLE"]

PROTOCOL_VERSION = "1.5"
COMMANDS = frozenset({"PING", "CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS", "TELL", "SKIP"})
"""Commands spamtl answers (SKIP: the client hangs up without a reply, as in spamd)."""
BODY_COMMANDS = COMMANDS - {"PING", "SKIP"}

MAX_LINE_BYTES = 1024
"""Longest request or header line (spamc's are well under 100 bytes; a user name is <= 255 characters)."""
MAX_HEADERS = 32
"""Most header lines in one request (spamc sends at most 6)."""

# sysexits.h, the codes spamc understands.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
_CODE_NAMES = {EX_OK: "EX_OK", EX_USAGE: "EX_USAGE", EX_DATAERR: "EX_DATAERR", EX_NOUSER: "EX_NOUSER",
               EX_UNAVAILABLE: "EX_UNAVAILABLE", EX_SOFTWARE: "EX_SOFTWARE", EX_TEMPFAIL: "EX_TEMPFAIL",
               EX_PROTOCOL: "EX_PROTOCOL"}

_P_EPSILON = 1e-9
"""Probabilities are clamped to [1e-9, 1 - 1e-9] for the score (|S| <= 207.2)."""


class ProtocolError(Exception):
    """A request spamtl cannot serve; ``code`` is the sysexits code of the error response."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Request:
    command: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or len(value) > 12:
            raise ProtocolError(EX_PROTOCOL, f"bad Content-length {value[:20]!r}")
        return int(value)

    @property
    def user(self) -> str | None:
        value = self.headers.get("user")
        return value.strip() if value is not None and value.strip() else None

    @property
    def is_compressed(self) -> bool:
        value = self.headers.get("compress")
        if value is None:
            return False
        if value.strip().lower() != "zlib":
            raise ProtocolError(EX_PROTOCOL, f"unknown Compress {value.strip()[:20]!r}")
        return True

    def tell(self) -> tuple[str | None, bool, bool]:
        """(message class, set locally, remove locally) of a TELL; ProtocolError if it asks for nothing."""
        cls = self.headers.get("message-class", "").strip().lower() or None
        if cls is not None and cls not in ("spam", "ham"):
            raise ProtocolError(EX_PROTOCOL, f"bad Message-class {cls[:20]!r}")
        sets = _words(self.headers.get("set", ""))
        removes = _words(self.headers.get("remove", ""))
        do_set, do_remove = "local" in sets, "local" in removes
        if do_set and cls is None:
            raise ProtocolError(EX_PROTOCOL, "TELL with Set needs Message-class: spam or ham")
        if not do_set and not do_remove:
            raise ProtocolError(EX_PROTOCOL, "TELL needs Set: local or Remove: local")
        return cls, do_set, do_remove


def _words(value: str) -> set[str]:
    return {w.strip().lower() for w in value.split(",") if w.strip()}


def _text(line: bytes) -> str:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(EX_PROTOCOL, f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        return line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(EX_PROTOCOL, "line is not UTF-8") from None


def parse_request_line(line: bytes) -> tuple[str, str]:
    """``(command, version)`` of ``b"CHECK SPAMC/1.5\\r\\n"``; ProtocolError otherwise."""
    text = _text(line)
    parts = text.split(" ")
    if len(parts) != 2 or not parts[1].startswith("SPAMC/"):
        raise ProtocolError(EX_PROTOCOL, "bad request line; expected 'COMMAND SPAMC/1.5'")
    command, version = parts[0], parts[1][len("SPAMC/"):]
    major, dot, minor = version.partition(".")
    if not (major.isdigit() and dot and minor.isdigit() and len(version) <= 8):
        raise ProtocolError(EX_PROTOCOL, "bad protocol version")
    if command not in COMMANDS:
        raise ProtocolError(EX_PROTOCOL, f"unknown command {command[:20]!r}")
    return command, version


def parse_header(line: bytes) -> tuple[str, str]:
    """``(lower-cased name, value)`` of ``b"User: alice\\r\\n"``; ProtocolError otherwise."""
    text = _text(line)
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ProtocolError(EX_PROTOCOL, "bad header line")
    if not value.strip().isprintable():
        raise ProtocolError(EX_PROTOCOL, f"bad value of header {name[:20]}")
    return name.lower(), value.strip()


def build_request(request_line: bytes, header_lines: list[bytes]) -> Request:
    """A :class:`Request` from its first line and its header lines (without the empty line)."""
    command, version = parse_request_line(request_line)
    if len(header_lines) > MAX_HEADERS:
        raise ProtocolError(EX_PROTOCOL, f"more than {MAX_HEADERS} header lines")
    request = Request(command, version)
    for line in header_lines:
        name, value = parse_header(line)
        request.headers[name] = value
    request.content_length  # noqa: B018 - validates early
    request.is_compressed  # noqa: B018
    if command in BODY_COMMANDS and request.content_length is None:
        raise ProtocolError(EX_PROTOCOL, f"{command} needs a Content-length header")
    return request


def response(code: int, message: str | None = None, headers: list[tuple[str, str]] | None = None,
             body: bytes | None = None) -> bytes:
    """One response: status line, headers (Content-length added when there is a body), empty line, body."""
    status = message or _CODE_NAMES.get(code, "EX_SOFTWARE")
    status = "".join(ch if ch.isprintable() else "?" for ch in status)[:200]
    lines = [f"SPAMD/{PROTOCOL_VERSION} {code} {status}"]
    if body is not None:
        lines.append(f"Content-length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b"")


def _logit10(p: float) -> float:
    p = min(max(p, _P_EPSILON), 1.0 - _P_EPSILON)
    return 10.0 * math.log(p / (1.0 - p))


def score_scale(probability: float, cutoff: float, is_spam: bool) -> tuple[float, float]:
    """``(S, T)`` as shown, one decimal each; ``S >= T`` exactly when ``is_spam`` (see module doc)."""
    threshold = round(_logit10(cutoff), 1)
    score = round(_logit10(probability), 1)
    if is_spam and score < threshold:
        score = threshold
    elif not is_spam and score >= threshold:
        score = round(threshold - 0.1, 1)
    return score, threshold


def spam_header(probability: float, cutoff: float, is_spam: bool) -> tuple[str, str]:
    """The ``Spam: True ; S / T`` header."""
    score, threshold = score_scale(probability, cutoff, is_spam)
    return "Spam", f"{'True' if is_spam else 'False'} ; {score:.1f} / {threshold:.1f}"
