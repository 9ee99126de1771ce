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
_SEPARATOR_RE = re.compile(rb"From \S+ +.*\d\d?:\d\d.*\d{4}")
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


def read_mbox(fh: BinaryIO, origin: str) -> Iterator[RawMail | Unreadable]:
    """Split an mbox stream into messages (mboxo/mboxrd; ``>From `` lines unquoted).

    A ``From `` line separates messages only at the start of the file, or
    after an empty line when it carries the envelope date (``From sender
    asctime``), which avoids splitting on unquoted body text.
    """
    lines: list[bytes] = []
    size = 0
    count = 0
    too_big = False
    previous_blank = True
    started = False

    def flush() -> RawMail | Unreadable | None:
        nonlocal count
        if not started:
            return None
        count += 1
        name = f"{origin}#{count}"
        if too_big:
            return Unreadable(name, f"message larger than {MAX_MESSAGE_BYTES // 2**20} MiB; skipped")
        body = lines[:-1] if lines and lines[-1].strip() == b"" else lines  # separator blank line
        return RawMail(name, b"".join(body))

    for line in fh:
        if line.startswith(b"From ") and ((previous_blank and _SEPARATOR_RE.match(line)) or not started):
            item = flush()
            if item is not None:
                yield item
            lines, size, too_big, started = [], 0, False, True
            previous_blank = False
            continue
        if not started:  # junk before the first separator: treat as a message anyway
            started = True
        previous_blank = line in (b"\n", b"\r\n")
        if too_big:
            continue
        if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
            line = line[1:]
        size += len(line)
        if size > MAX_MESSAGE_BYTES:
            too_big, lines = True, []
            continue
        lines.append(line)
    item = flush()
    if item is not None:
        yield item


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
