"""Find and stream raw messages from files: .eml, directories, Maildir, mbox, gzip.

Everything streams: an mbox is read line by line and yields one message at a
time, so memory stays flat however large the file is.  A file that cannot be
read is reported as a :class:`Unreadable` item in the same stream and the rest
goes on.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["RawMail", "Unreadable", "iter_mail", "read_mbox", "MAX_MESSAGE_BYTES"]

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


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _is_mbox(head: bytes) -> bool:
    return head.startswith(b"From ")


_BLOCK = 1 << 20
_UNQUOTE_RE = re.compile(rb"^>(>*From )", re.MULTILINE)


def _finish(content: bytes) -> bytes:
    """Drop the blank line that precedes the next separator and unquote ``>From `` lines (mboxrd)."""
    if content.endswith(b"\r\n\r\n"):
        content = content[:-2]
    elif content.endswith(b"\n\n"):
        content = content[:-1]
    if b">From " in content:
        content = _UNQUOTE_RE.sub(rb"\1", content)
    return content


def read_mbox(fh: BinaryIO, origin: str) -> Iterator[RawMail | Unreadable]:
    """Split an mbox stream into messages (mboxo/mboxrd; ``>From `` lines unquoted).

    A ``From `` line separates messages only at the start of the file, or
    after an empty line when it carries the envelope date (``From sender
    asctime``), which avoids splitting on unquoted body text.  The stream is
    read in 1 MiB blocks; memory is bounded by the largest message kept
    (``MAX_MESSAGE_BYTES``), not by the file.
    """
    buf = fh.read(_BLOCK)
    eof = not buf
    count = 0
    start = 0  # where the current message's content begins in buf
    if buf.startswith(b"From "):
        eol = buf.find(b"\n")
        while eol < 0 and not eof:
            more = fh.read(_BLOCK)
            eof = not more
            buf += more
            eol = buf.find(b"\n")
        start = len(buf) if eol < 0 else eol + 1
    search = start
    too_big = False

    def emit(content: bytes) -> RawMail | Unreadable:
        nonlocal count
        count += 1
        name = f"{origin}#{count}"
        if too_big:
            return Unreadable(name, f"message larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
        return RawMail(name, _finish(content))

    while True:
        i = buf.find(b"\nFrom ", search)
        eol = buf.find(b"\n", i + 1) if i >= 0 else -1
        if i < 0 or (eol < 0 and not eof):
            if eof:
                if buf[start:].strip():
                    yield emit(buf[start:])
                return
            # Need more data: resume at the unfinished separator, or a few bytes
            # back so that one split across two blocks is still found.
            resume = i if i >= 0 else max(start, len(buf) - 8)
            if len(buf) - start > MAX_MESSAGE_BYTES:
                too_big = True
                start = resume = max(start, len(buf) - 16)
            buf, search, start = buf[start:], resume - start, 0
            more = fh.read(_BLOCK)
            eof = not more
            buf += more
            continue
        line = buf[i + 1: eol + 1 if eol >= 0 else len(buf)]
        blank_before = buf[i - 1:i] == b"\n" or buf[i - 2:i] == b"\n\r"
        if blank_before and i >= start and _SEPARATOR_RE.match(line):
            yield emit(buf[start:i + 1])
            too_big = False
            start = eol + 1 if eol >= 0 else len(buf)
            buf = buf[start:]
            start = search = 0
        else:
            search = i + 1


def _read_file(path: Path) -> Iterator[RawMail | Unreadable]:
    origin = str(path)
    try:
        size = path.stat().st_size
        with _open(path) as fh:
            head = fh.read(5)
            if _is_mbox(head):
                fh.seek(0)
                yield from read_mbox(fh, origin)
                return
            if size > MAX_MESSAGE_BYTES and not path.name.endswith(".gz"):
                yield Unreadable(origin, f"file larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
                return
            data = head + fh.read(MAX_MESSAGE_BYTES + 1 - len(head))
            if len(data) > MAX_MESSAGE_BYTES:
                yield Unreadable(origin, f"message larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
                return
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        yield Unreadable(origin, _reason(exc))
        return
    if not data.strip():
        yield Unreadable(origin, "empty file")
        return
    yield RawMail(origin, data)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError)):
        return f"corrupt gzip data ({exc})"
    return f"{exc.__class__.__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"


def _walk(folder: Path) -> Iterator[Path]:
    """Message files under a folder, sorted, skipping Maildir tmp/ and index files."""
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if d != "tmp" and not d.startswith("."))
        for name in sorted(files):
            if not name.lower().startswith(_NOT_MAIL_PREFIXES):
                yield Path(root) / name


def iter_mail(paths: Iterable[str | os.PathLike[str]]) -> Iterator[RawMail | Unreadable]:
    """Stream every message found under ``paths``.

    A path may be a message file (``.eml`` or anything RFC 5322), an mbox
    (optionally gzip-compressed), a Maildir (its ``cur/`` and ``new/``) or any
    directory of those (searched recursively, in sorted order).
    """
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = False
            for file in _walk(path):
                found = True
                yield from _read_file(file)
            if not found:
                yield Unreadable(str(path), "no mail files in this folder")
        elif path.exists():
            yield from _read_file(path)
        else:
            yield Unreadable(str(path), "no such file or directory")
