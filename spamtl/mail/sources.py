"""Find and stream raw messages from files: .eml, directories, Maildir, mbox, gzip.

Everything streams, one message at a time.  A file that cannot be read, is not a regular file (FIFOs are
never opened) or is damaged is reported as an :class:`Unreadable` item in the same stream and the rest goes
on; a file that does not start like mail is skipped.  Gzip is read twice: a first pass checks every member's
CRC, so that nothing of a damaged member and no message cut by damage is imported.
"""

from __future__ import annotations

import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["RawMail", "Unreadable", "iter_mail", "count_mail", "read_mbox", "is_single_message", "MAX_MESSAGE_BYTES", "MAIL_SNIFF_BYTES"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A single message larger than this is reported unreadable rather than loaded."""

_GZIP_MAGIC = b"\x1f\x8b"
# "From sender asctime": the envelope time and year tell a separator from body text.
_SEPARATOR_RE = re.compile(rb"From \S+ +.*\d\d?:\d\d(?::\d\d)?\D.*\d")
# Files that live in Maildirs but are not messages (Dovecot, Courier, mutt).
_NOT_MAIL_PREFIXES = (".", "dovecot", "courier", "maildirfolder", "maildirsize", "subscriptions")


@dataclass(frozen=True, slots=True)
class RawMail:
    """One message's bytes and where it came from (``path`` or ``path#N`` inside an mbox)."""

    origin: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file or message that could not be read, and why."""

    origin: str
    reason: str
    # Set when the file was read but is not mail (empty, a picture, prose): the reason in
    # spamtl.mail.headers.not_mail_reason's words, so that classify reports it as skipped, as it does stdin.
    not_mail: str | None = None


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind}); skipped"


def _open_regular(path: Path) -> BinaryIO:
    """Open a file that ``os.stat`` said is regular, without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once, in case a regular file was
    replaced by one since it was checked; fstat then refuses it.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        reason = _not_regular(os.fstat(fd).st_mode)
        if reason:
            raise _NotRegular(reason)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _NotRegular(OSError):
    pass


def _is_mbox(head: bytes) -> bool:
    return head.startswith(b"From ")


def is_single_message(path: str | os.PathLike[str]) -> bool:
    """True for a regular file that is neither an mbox nor gzip: one message (a file that cannot be
    opened counts as one, so that reading it reports why)."""
    if not Path(path).is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(5)
    except OSError:
        return True
    return not (_is_mbox(head) or head.startswith(_GZIP_MAGIC))


MAIL_SNIFF_BYTES = 4096


def _not_mail(head: bytes) -> str | None:
    """Why a file that starts with ``head`` is no mail message (:func:`spamtl.mail.headers.not_mail_reason`), or None.

    A file may start with a UTF-8 byte-order mark and empty lines, which editors and exports add; a
    file that starts with an mbox ``From `` line is a mailbox, whose messages are judged one by one.
    """
    from spamtl.mail.headers import not_mail_reason

    text = head[:MAIL_SNIFF_BYTES].removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return None if text.startswith(b"From ") else not_mail_reason(text)


_BLOCK = 1 << 20


class _Gunzip:
    """Decompress a gzip file (all its members) block by block, noting damage instead of raising.

    ``chunks()`` yields decompressed data.  Afterwards ``damage`` says what
    went wrong (None if nothing), ``trusted`` how many decompressed bytes may be
    used, and ``cut`` whether the damage cut the data short (so the last message
    in it is incomplete).  Output per step is bounded by ``_BLOCK``, so a
    decompression bomb costs time, never memory.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.out = 0
        self.trusted = 0
        self.damage: str | None = None
        self.cut = False

    def _fail(self, damage: str, trusted: int, cut: bool) -> None:
        self.damage, self.trusted, self.cut = damage, trusted, cut

    def chunks(self) -> Iterator[bytes]:
        data = b""
        while True:  # one gzip member per turn
            while len(data) < 2:
                more = self.fh.read(_BLOCK)
                if not more:
                    break
                data += more
            if not data:
                self.trusted = self.out
                return
            if not data.startswith(_GZIP_MAGIC):
                garbage = len(data) + sum(len(b) for b in iter(lambda: self.fh.read(_BLOCK), b""))
                self._fail(f"{garbage} bytes of trailing garbage after the gzip stream ignored", self.out, False)
                return
            member_start = self.out
            d = zlib.decompressobj(wbits=31)
            while not d.eof:
                if not data:
                    data = self.fh.read(_BLOCK)
                    if not data:  # end of file inside the member
                        try:
                            rest = d.flush()
                        except zlib.error:
                            rest = b""
                        if rest:
                            self.out += len(rest)
                            yield rest
                        self._fail("gzip stream truncated", self.out, True)
                        return
                try:
                    out = d.decompress(data, _BLOCK)
                except zlib.error as exc:
                    if "check" in str(exc):  # "incorrect data check" / "incorrect length check"
                        self._fail(f"gzip member fails its checksum ({exc}); nothing of it imported",
                                   member_start, True)
                    elif self.out == 0:  # nothing came out: not gzip data at all, really
                        self._fail(f"corrupt gzip data ({exc})", 0, True)
                    else:
                        self._fail(f"gzip stream corrupt ({exc})", self.out, True)
                    return
                data = d.unconsumed_tail
                if out:
                    self.out += len(out)
                    yield out
            data = d.unused_data + data


class _TrustedStream:
    """The ``trusted`` bytes of a gzip file (as found by a first :class:`_Gunzip` pass), read like a file."""

    def __init__(self, fh: BinaryIO, limit: int, damage: str | None, cut: bool) -> None:
        self._chunks = _Gunzip(fh).chunks()
        self._buf = bytearray()
        self._left = limit
        self.damage = damage
        self.cut = cut

    def read(self, n: int = -1, /) -> bytes:
        while (n < 0 or len(self._buf) < n) and self._left > 0:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            chunk = chunk[:self._left]
            self._left -= len(chunk)
            self._buf += chunk
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


_UNQUOTE_RE = re.compile(rb"^>(>*From )", re.MULTILINE)
_EMPTY_MESSAGE = "empty message: an mbox `From ` line with nothing after it"


def _finish(content: bytes) -> bytes:
    """Drop the blank line that precedes the next separator and unquote ``>From `` lines (mboxrd)."""
    if content.endswith(b"\r\n\r\n"):
        content = content[:-2]
    elif content.endswith(b"\n\n"):
        content = content[:-1]
    if b">From " in content:
        content = _UNQUOTE_RE.sub(rb"\1", content)
    return content


def read_mbox(fh: _Reader, origin: str, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[RawMail | Unreadable]:
    """Split an mbox stream into messages (mboxo/mboxrd; ``>From `` lines unquoted).

    A ``From `` line separates messages only at the start of the file, or
    after an empty line when it carries the envelope date (``From sender
    asctime``), which avoids splitting on unquoted body text.  The stream is
    read in 1 MiB blocks; memory is bounded by the largest message kept
    (``max_bytes``; a larger one is reported, not yielded), not by the file.

    If ``fh`` has a true ``cut`` attribute (a damaged gzip stream), the data
    ends inside a message: that last message is reported, not yielded.
    """
    buf = fh.read(_BLOCK)
    buf, eof, start = _past_envelope(fh, buf, not buf)  # start: where the current message begins in buf
    search, count, too_big = start, 0, False
    while True:
        i = buf.find(b"\nFrom ", search)
        eol = buf.find(b"\n", i + 1) if i >= 0 else -1
        if i < 0 or (eol < 0 and not eof):
            if eof:
                count += 1
                if not getattr(fh, "cut", False):
                    # A separator with nothing after it (a file of one `From ` line) too.
                    yield _mbox_entry(f"{origin}#{count}", buf[start:], too_big, max_bytes)
                elif buf[start:].strip():
                    yield Unreadable(f"{origin}#{count}", "cut short by damage to the file; not imported")
                return
            # Need more data: resume at the unfinished separator, or a few bytes
            # back so that one split across two blocks is still found.
            resume = i if i >= 0 else max(start, len(buf) - 8)
            if len(buf) - start > max_bytes:
                too_big = True
                start = resume = max(start, len(buf) - 16)
            buf, search, start = buf[start:], resume - start, 0
            more = fh.read(_BLOCK)
            eof = not more
            buf += more
            continue
        line = buf[i + 1: eol + 1 if eol >= 0 else len(buf)]
        # i == start == 0: the message begins with this empty line, right after the previous separator line.
        blank_before = buf[i - 1:i] == b"\n" or buf[i - 2:i] == b"\n\r" or (i == start == 0 and not too_big)
        if blank_before and i >= start and _SEPARATOR_RE.match(line):
            count += 1
            yield _mbox_entry(f"{origin}#{count}", buf[start:i + 1], too_big, max_bytes)
            too_big = False
            start = eol + 1 if eol >= 0 else len(buf)
            buf = buf[start:]
            start = search = 0
        else:
            search = i + 1


def _past_envelope(fh: _Reader, buf: bytes, eof: bool) -> tuple[bytes, bool, int]:
    """(buf, eof, where the first message begins): past a leading ``From `` line, read to its line end."""
    if not buf.startswith(b"From "):
        return buf, eof, 0
    eol = buf.find(b"\n")
    while eol < 0 and not eof:
        more = fh.read(_BLOCK)
        eof = not more
        buf += more
        eol = buf.find(b"\n")
    return buf, eof, len(buf) if eol < 0 else eol + 1


def _mbox_entry(name: str, content: bytes, too_big: bool, max_bytes: int) -> RawMail | Unreadable:
    if too_big:
        return Unreadable(name, f"message larger than {max_bytes // 2**20} MiB; skipped")
    if not content.strip():
        return Unreadable(name, _EMPTY_MESSAGE)
    return RawMail(name, _finish(content))


def _read_file(path: Path) -> Iterator[RawMail | Unreadable]:
    origin = str(path)
    try:
        reason = _not_regular(os.stat(path).st_mode)
        if reason:
            yield Unreadable(origin, reason)
            return
        with _open_regular(path) as fh:
            magic = fh.read(2)
            if magic == _GZIP_MAGIC:
                fh.seek(0)
                scan = _Gunzip(fh)
                for _ in scan.chunks():
                    pass
                fh.seek(0)
                yield from _read_stream(_TrustedStream(fh, scan.trusted, scan.damage, scan.cut), origin, None)
            else:
                fh.seek(0)
                yield from _read_stream(fh, origin, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        yield Unreadable(origin, _reason(exc))


def _read_stream(fh: _Reader, origin: str, size: int | None) -> Iterator[RawMail | Unreadable]:
    """Messages of one opened file (``size`` None for decompressed data of unknown size)."""
    damage: str | None = getattr(fh, "damage", None)
    head = fh.read(MAIL_SNIFF_BYTES)
    if _is_mbox(head):
        kept = 0
        for item in read_mbox(_Prepend(head, fh), origin):
            kept += isinstance(item, RawMail)
            yield item
        if damage:
            yield Unreadable(origin, f"{damage}; {kept} messages before it imported"
                             + ("; the message it cut was not" if getattr(fh, "cut", False) else ""))
        return
    if damage and getattr(fh, "cut", False):
        yield Unreadable(origin, f"{damage}; the message was not imported")
        return
    if not head.strip():
        yield Unreadable(origin, "empty file", not_mail="empty message")
        return
    not_mail = _not_mail(head)
    if not_mail is not None:
        yield Unreadable(origin, "not a mail message (it does not begin with header lines); skipped",
                         not_mail=not_mail)
        return
    if size is not None and size > MAX_MESSAGE_BYTES:
        yield Unreadable(origin, f"file larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
        return
    data = head + fh.read(MAX_MESSAGE_BYTES + 1 - len(head))
    if len(data) > MAX_MESSAGE_BYTES:
        yield Unreadable(origin, f"message larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
        return
    yield RawMail(origin, data)
    if damage:
        yield Unreadable(origin, damage)


class _Prepend:
    """A stream with some bytes already read put back in front."""

    def __init__(self, head: bytes, fh: _Reader) -> None:
        self._head, self._fh = head, fh
        self.cut = getattr(fh, "cut", False)

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._fh.read(n)
        if n < 0:
            out, self._head = self._head + self._fh.read(), b""
            return out
        out, self._head = self._head[:n], self._head[n:]
        if len(out) < n:
            out += self._fh.read(n - len(out))
        return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, _NotRegular):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"


def _walk(folder: Path) -> Iterator[Path | Unreadable]:
    """Message files under a folder, sorted, skipping Maildir tmp/ and index files; unlistable folders reported."""
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        yield from _walk_errors(errors)
        dirs[:] = sorted(d for d in dirs if d != "tmp" and not d.startswith("."))
        for name in sorted(files):
            if not name.lower().startswith(_NOT_MAIL_PREFIXES):
                yield Path(root) / name
    yield from _walk_errors(errors)


def _walk_errors(errors: list[OSError]) -> Iterator[Unreadable]:
    for exc in errors:
        yield Unreadable(str(exc.filename), f"folder not readable: {_reason(exc)}")
    errors.clear()


def iter_mail(paths: Iterable[str | os.PathLike[str]]) -> Iterator[RawMail | Unreadable]:
    """Stream every message found under ``paths``.

    A path may be a message file (``.eml`` or anything RFC 5322), an mbox
    (optionally gzip-compressed), a Maildir (its ``cur/`` and ``new/``) or any
    directory of those (searched recursively, in sorted order).  Special files
    are reported and never opened.
    """
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = False
            for item in _walk(path):
                found = True
                if isinstance(item, Unreadable):
                    yield item
                else:
                    yield from _read_file(item)
            if not found:
                yield Unreadable(str(path), "no mail files in this folder")
        elif path.exists():
            yield from _read_file(path)
        else:
            yield Unreadable(str(path), "no such file or directory")


def count_mail(paths: Iterable[str | os.PathLike[str]]) -> int:
    """About how many items :func:`iter_mail` yields for ``paths``: a progress bar's total.

    One per file, or one per ``From `` line in an mbox (gzip-compressed too),
    so it reads each mbox once more; nothing is parsed.  An unescaped ``From ``
    line in a body counts as a message, a damaged file as what it held so far.
    """
    total = 0
    for p in paths:
        path = Path(p)
        if path.is_dir():
            total += sum(_count_file(item) for item in _walk(path) if isinstance(item, Path))
        elif path.exists():
            total += _count_file(path)
    return total


def _count_file(path: Path) -> int:
    import gzip

    count = 0
    try:
        if _not_regular(os.stat(path).st_mode):
            return 1
        with _open_regular(path) as fh:
            stream: _Reader = fh
            if fh.read(2) == _GZIP_MAGIC:
                stream = gzip.GzipFile(fileobj=fh, mode="rb")
            fh.seek(0)
            block = stream.read(MAIL_SNIFF_BYTES)
            if not _is_mbox(block):
                return 1
            carry = b"\n"  # the file begins a line
            while block:
                data = carry + block
                count += data.count(b"\nFrom ")
                carry = data[-5:]  # shorter than the pattern: a match across two blocks is counted once
                block = stream.read(_BLOCK)
    except (OSError, EOFError, zlib.error):
        pass
    return max(count, 1)
