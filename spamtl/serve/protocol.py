"""The SPAMC/SPAMD protocol as SpamAssassin's ``spamd`` speaks it: parsing and formatting, both sides.

A request is ``COMMAND SPAMC/1.5``, ``Name: value`` header lines, an empty line and ``Content-length``
bytes of message; a response is ``SPAMD/1.5 CODE MESSAGE``, headers, an empty line and a body (lines end
in ``\\r\\n``, a bare ``\\n`` is accepted; codes are spamc's ``sysexits.h`` numbers).  ``Spam: True ; S / 5.0``
is the score on SpamAssassin's scale (:mod:`spamtl.services.points`).  The client side is for ``spamtl tell``.

TELL: ``local`` is the user's own label, learnt at once; ``remote`` is the shared model, trained from those
labels at the next ``spamtl train``.  As in spamd, ``DidSet``/``DidRemove: local`` is sent only when the
user's label changed; ``Spamtl-Label: spam|ham|none`` says the label after the request, so ``spamtl tell``
tells "already learned" from "not stored".
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from spamtl.services.points import score_scale

__all__ = ["PROTOCOL_VERSION", "COMMANDS", "ProtocolError", "Request", "Tell", "parse_request_line", "parse_header",
           "build_request", "response", "spam_header", "TELL_LABEL_HEADER", "tell_answer_headers", "Response", "TELL_LABELS",
           "MAX_SENT_BYTES", "tell_request", "exchange", "parse_response", "tell_outcome", "EX_OK", "EX_USAGE",
           "EX_DATAERR", "EX_NOUSER", "EX_SOFTWARE", "EX_TEMPFAIL", "EX_PROTOCOL", "EX_UNAVAILABLE", "EX_NOPERM"]

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
EX_NOPERM = 77
_CODE_NAMES = {EX_OK: "EX_OK", EX_USAGE: "EX_USAGE", EX_DATAERR: "EX_DATAERR", EX_NOUSER: "EX_NOUSER",
               EX_UNAVAILABLE: "EX_UNAVAILABLE", EX_SOFTWARE: "EX_SOFTWARE", EX_TEMPFAIL: "EX_TEMPFAIL",
               EX_PROTOCOL: "EX_PROTOCOL", EX_NOPERM: "EX_NOPERM"}


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

    def tell(self) -> Tell:
        """What a TELL asks (see :class:`Tell`); ProtocolError if it asks for nothing spamtl does."""
        cls = self.headers.get("message-class", "").strip().lower() or None
        if cls is not None and cls not in ("spam", "ham"):
            raise ProtocolError(EX_PROTOCOL, f"bad Message-class {cls[:20]!r}")
        sets = _words(self.headers.get("set", ""))
        removes = _words(self.headers.get("remove", ""))
        tell = Tell(cls, "local" in sets, "local" in removes, "remote" in sets, "remote" in removes)
        if tell.set_local and cls is None:
            raise ProtocolError(EX_PROTOCOL, "TELL with Set needs Message-class: spam or ham")
        if not tell.set_local and not tell.remove_local:
            # remote alone: spamtl's shared model learns only from users' own (local) labels
            raise ProtocolError(EX_PROTOCOL, "TELL needs Set: local or Remove: local")
        if tell.set_remote and cls is None:
            raise ProtocolError(EX_PROTOCOL, "TELL with Set needs Message-class: spam or ham")
        if tell.set_remote and tell.remove_remote:
            raise ProtocolError(EX_PROTOCOL, "TELL cannot Set: remote and Remove: remote at once")
        return tell


@dataclass(frozen=True)
class Tell:
    """What a TELL asks: the message's class, and what to set and remove, locally and remotely.

    spamc ``-L spam|ham`` sends ``Set: local``, ``-L forget`` ``Remove: local``, ``-C report``
    ``Message-class: spam`` and ``Set: local,remote``, ``-C revoke`` ``Message-class: ham``, ``Set:
    local`` and ``Remove: remote``.  ``remote`` is spamtl's shared model (see the module doc).
    """

    message_class: str | None
    set_local: bool
    remove_local: bool
    set_remote: bool = False
    remove_remote: bool = False


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


def spam_header(probability: float, spam_cutoff: float, ham_cutoff: float, verdict: str) -> tuple[str, str]:
    """The ``Spam: True ; S / 5.0`` header (True for a spam verdict only)."""
    score, threshold = score_scale(probability, spam_cutoff, ham_cutoff, verdict)
    return "Spam", f"{'True' if verdict == 'spam' else 'False'} ; {score:.1f} / {threshold:.1f}"


TELL_LABEL_HEADER = "Spamtl-Label"
"""The header of every successful TELL answer that says the user's label of the message after it."""


def tell_answer_headers(tell: Tell, *, label: str | None, is_changed: bool, is_removed: bool) -> list[tuple[str, str]]:
    """The headers of a successful answer to ``tell``, as spamd sends them, and ``Spamtl-Label``.

    ``label`` is the user's label of the message after the request (None: none), ``is_changed`` whether
    ``Set: local`` stored a label the user did not have, ``is_removed`` whether ``Remove: local`` removed
    one.  ``local`` is confirmed only for a change (spamc: "Message was already un/learned" otherwise),
    ``remote`` whenever the state it asks for holds (see the module doc).  spamc reads ``DidSet`` and
    ``DidRemove`` as one word: the values are joined by a comma without a space, as spamd does.
    """
    did_set = ((["local"] if tell.set_local and is_changed else [])
               + (["remote"] if tell.set_remote and label is not None and label == tell.message_class else []))
    did_remove = ((["local"] if tell.remove_local and is_removed else [])
                  + (["remote"] if tell.remove_remote and label != "spam" else []))
    headers = [("DidSet", ",".join(did_set))] if did_set else []
    if did_remove:
        headers.append(("DidRemove", ",".join(did_remove)))
    return [*headers, (TELL_LABEL_HEADER, label or "none")]


# ------------------------------------------------------------------ the client side (spamtl tell)
TELL_LABELS = ("spam", "ham", "forget")
"""What a TELL can say: learn spam, learn ham, forget the user's label (spamc ``-L spam|ham|forget``)."""
MAX_SENT_BYTES = 64 << 20
"""Largest message a client sends, and the most of a message over ``max_message_bytes`` that the
daemon reads and drops so that the client gets to read its EX_DATAERR answer (past that the connection
would break mid-send and the reason be lost)."""
MAX_REPLY_BYTES = 64 << 10
"""Longest answer to a TELL the client reads (the daemon's is a status line and two headers)."""


@dataclass
class Response:
    """A daemon's answer: ``SPAMD/1.5 code message``, headers (lower-cased names) and body."""

    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def tell_request(user: str, label: str, message: bytes) -> bytes:
    """The TELL request ``spamc -L label -u user`` sends for ``message``.

    spam and ham: ``Message-class`` and ``Set: local``; forget: ``Remove: local``.  A user name that
    could break the header (a line break, control characters) is refused with EX_NOUSER.
    """
    if label not in TELL_LABELS:
        raise ValueError(f"label must be one of {', '.join(TELL_LABELS)}, not {label!r}")
    if not user or user != user.strip() or not user.isprintable() or len(user.encode("utf-8")) > 255:
        raise ProtocolError(EX_NOUSER, f"bad user name {user[:40]!r}")
    lines = [f"TELL SPAMC/{PROTOCOL_VERSION}", f"Content-length: {len(message)}", f"User: {user}"]
    if label == "forget":
        lines.append("Remove: local")
    else:
        lines += [f"Message-class: {label}", "Set: local"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + message


def exchange(address: str | tuple[str, int], request: bytes, timeout: float) -> bytes:
    """Send one request to the daemon at ``address`` (a Unix socket path, or (host, port)) and return
    its whole answer (the daemon closes the connection after it).

    Every failure is a :class:`ProtocolError` with the exit code it means: EX_UNAVAILABLE when nothing
    listens there, EX_NOPERM when the socket's mode or group keeps this account out, EX_TEMPFAIL when
    the connection breaks or no answer comes within ``timeout`` seconds.
    """
    where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    try:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=timeout)
    except PermissionError as exc:
        raise ProtocolError(EX_NOPERM, f"cannot connect to spamtl serve at {where}: {exc.strerror} "
                                       "(the socket's mode and group: serve --socket-mode/--socket-group)") from None
    except TimeoutError:
        raise ProtocolError(EX_TEMPFAIL, f"cannot connect to spamtl serve at {where}: timed out") from None
    except OSError as exc:
        raise ProtocolError(EX_UNAVAILABLE, f"cannot connect to spamtl serve at {where}: "
                                            f"{exc.strerror or exc} (is it running?)") from None
    with sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise ProtocolError(EX_TEMPFAIL, f"spamtl serve at {where} took no more of the request "
                                             f"within {timeout:g} s") from None
        except OSError:
            pass  # the daemon answered early and hung up (busy, too large): its answer may be waiting
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= MAX_REPLY_BYTES:
                block = sock.recv(1 << 16)
                if not block:
                    break
                chunks.append(block)
                size += len(block)
        except TimeoutError:
            raise ProtocolError(EX_TEMPFAIL, f"no answer from spamtl serve at {where} within {timeout:g} s") from None
        except OSError as exc:
            if not chunks:
                raise ProtocolError(EX_TEMPFAIL, f"spamtl serve at {where} closed the connection without an "
                                                 f"answer: {exc.strerror or exc}") from None
    if not chunks:
        raise ProtocolError(EX_TEMPFAIL, f"spamtl serve at {where} closed the connection without an answer")
    if size > MAX_REPLY_BYTES:
        raise ProtocolError(EX_PROTOCOL, f"the answer of {where} is longer than {MAX_REPLY_BYTES} bytes")
    return b"".join(chunks)


def parse_response(data: bytes) -> Response:
    """A :class:`Response` from the bytes of a whole answer; ProtocolError (EX_PROTOCOL) if it is not one."""
    head, body = data, b""
    for separator in (b"\r\n\r\n", b"\n\n"):
        if separator in data:
            head, _, body = data.partition(separator)
            break
    lines = head.splitlines()
    if not lines:
        raise ProtocolError(EX_PROTOCOL, "empty answer")
    status = _text(lines[0])
    version, _, rest = status.partition(" ")
    code, _, message = rest.partition(" ")
    if not version.startswith("SPAMD/") or not code.isdigit() or len(code) > 3:
        raise ProtocolError(EX_PROTOCOL, f"not a spamd answer: {status[:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, value = parse_header(line)
        headers[name] = value
    return Response(int(code), message.strip(), headers, body)


def tell_outcome(answer: Response, label: str) -> tuple[int, str]:
    """``(exit code, reason)`` of the answer to a TELL of ``label``: ``(0, "")`` only when the daemon
    says the user's label is now what was asked.

    That is ``DidSet: local`` for spam and ham (``DidRemove: local`` for forget: the label changed), or
    ``Spamtl-Label: spam|ham|none`` equal to what was asked (the user already had it: spamc's "Message
    was already un/learned").  A ``Spamtl-Label`` that says otherwise is never success, whatever else
    the answer says.  A refusal keeps the daemon's code and reason; EX_OK without either confirmation
    (a daemon that ignored the request) is EX_PROTOCOL.
    """
    said = f"spamtl serve answered {answer.code} ({_CODE_NAMES.get(answer.code, 'unknown code')})"
    if answer.code != EX_OK:
        code = answer.code if answer.code in _CODE_NAMES else EX_PROTOCOL
        return code, f"{said}: {answer.message}" if answer.message else said
    wanted = "none" if label == "forget" else label
    stored = answer.headers.get(TELL_LABEL_HEADER.lower())
    if stored is not None and stored.strip().lower() != wanted:
        return EX_PROTOCOL, f"{said} with {TELL_LABEL_HEADER}: {stored[:20]} (not {wanted}: not stored)"
    confirm = "DidRemove" if label == "forget" else "DidSet"
    if stored is None and "local" not in _words(answer.headers.get(confirm.lower(), "")):
        return EX_PROTOCOL, f"{said} without {confirm}: local or {TELL_LABEL_HEADER} (not confirmed)"
    return EX_OK, ""
