"""spamtl.mail.sources on hostile input: special files, unlistable folders, damaged gzip, non-mail files."""

from __future__ import annotations

import gzip
import io
import mailbox
import os
import socket
import tempfile
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from spamtl.mail.sources import RawMail, Unreadable, iter_mail, read_mbox

from ..conftest import corpus, make_mail

SEP = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n"


def _items(paths: list[Path], timeout: float = 20.0) -> list[RawMail | Unreadable]:
    """iter_mail in a daemon thread, so that a hang (an opened FIFO) fails the test instead of blocking it."""
    out: list[RawMail | Unreadable] = []
    worker = threading.Thread(target=lambda: out.extend(iter_mail(paths)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "iter_mail hung (did it open a FIFO?)"
    return out


def _raws(items: list[RawMail | Unreadable]) -> list[bytes]:
    return [i.raw for i in items if isinstance(i, RawMail)]


def _reasons(items: list[RawMail | Unreadable]) -> dict[str, str]:
    return {Path(i.origin).name: i.reason for i in items if isinstance(i, Unreadable)}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to about 100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="stl") as name:
        yield Path(name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_reported_and_never_opened(short_dir: Path) -> None:
    folder = short_dir / "Maildir" / "cur"
    folder.mkdir(parents=True)
    good = make_mail("fine", "a real message")
    (folder / "1.eml").write_bytes(good)
    os.mkfifo(folder / "2.fifo")
    os.symlink(folder / "2.fifo", folder / "3.link-to-fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "4.sock"))
    try:
        os.symlink("/dev/null", folder / "5.devnull")
        items = _items([short_dir / "Maildir", folder / "2.fifo", Path("/dev/null")])
    finally:
        sock.close()
    assert _raws(items) == [good]
    reasons = {i.origin.removeprefix(str(folder) + "/"): i.reason for i in items if isinstance(i, Unreadable)}
    assert reasons == {
        "2.fifo": "not a regular file (a FIFO); skipped",
        "3.link-to-fifo": "not a regular file (a FIFO); skipped",
        "4.sock": "not a regular file (a socket); skipped",
        "5.devnull": "not a regular file (a character device); skipped",
        "/dev/null": "not a regular file (a character device); skipped",
    }


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root lists every folder")
def test_unlistable_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.eml").write_bytes(make_mail("one", "x"))
    locked = tmp_path / "b"
    locked.mkdir()
    (locked / "2.eml").write_bytes(make_mail("two", "y"))
    locked.chmod(0)
    try:
        items = _items([tmp_path])
    finally:
        locked.chmod(0o755)
    assert len(_raws(items)) == 1
    assert _reasons(items) == {"b": "folder not readable: permission denied"}


def test_unlistable_folder_is_reported_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, with listing refused by a stand-in for os.scandir (root may list every folder)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.eml").write_bytes(make_mail("one", "x"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.eml").write_bytes(make_mail("two", "y"))
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(iter_mail([tmp_path]))
    assert len(_raws(items)) == 1
    assert _reasons(items) == {"b": "folder not readable: permission denied"}


def _mbox(n: int, size: int = 300) -> bytes:
    return b"".join(SEP + make_mail(f"message {i}", f"body {i} " + "x" * size) + b"\n" for i in range(n))


def _expected_before(prefix: bytes) -> list[bytes]:
    """Messages read_mbox finds in a prefix of an mbox, without the last (which the cut may have shortened)."""
    return _raws(list(read_mbox(io.BytesIO(prefix), "p")))[:-1]


def _gunzip_prefix(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=31)
    return d.decompress(data)


def test_truncated_gzip_keeps_every_whole_message_before_the_cut(tmp_path: Path) -> None:
    plain = _mbox(1000)
    packed = gzip.compress(plain)
    path = tmp_path / "box.mbox.gz"
    path.write_bytes(packed[: len(packed) // 2])
    items = _items([path])
    want = _expected_before(_gunzip_prefix(packed[: len(packed) // 2]))
    assert len(want) > 100
    assert _raws(items) == want
    unreadable = [i for i in items if isinstance(i, Unreadable)]
    assert [u.origin for u in unreadable] == [f"{path}#{len(want) + 1}", str(path)]
    assert unreadable[0].reason == "cut short by damage to the file; not imported"
    assert unreadable[1].reason == (f"gzip stream truncated; {len(want)} messages before it imported; "
                                    "the message it cut was not")


def test_trailing_garbage_keeps_the_whole_stream(tmp_path: Path) -> None:
    plain = _mbox(1000)
    path = tmp_path / "box.mbox.gz"
    path.write_bytes(gzip.compress(plain) + b"this is not gzip at all" * 10)
    items = _items([path])
    assert len(_raws(items)) == 1000
    assert _raws(items) == _raws(list(read_mbox(io.BytesIO(plain), "p")))
    assert _reasons(items) == {"box.mbox.gz": "230 bytes of trailing garbage after the gzip stream ignored; "
                                              "1000 messages before it imported"}


def test_checksum_failure_imports_nothing_of_that_member(tmp_path: Path) -> None:
    first, second = _mbox(10), _mbox(5000)  # member two decompresses in several steps before its CRC
    bad = bytearray(gzip.compress(second))
    bad[-8] ^= 0xFF  # the CRC-32 in the trailer
    path = tmp_path / "box.mbox.gz"
    path.write_bytes(gzip.compress(first) + bytes(bad))
    items = _items([path])
    # Member one is verified, but where a message ends is only known from the next one: the last is held back.
    assert _raws(items) == _raws(list(read_mbox(io.BytesIO(first), "p")))[:-1]
    reason = _reasons(items)["box.mbox.gz"]
    assert reason.startswith("gzip member fails its checksum") and "nothing of it imported" in reason
    # A single damaged member: nothing at all, and said so.
    path.write_bytes(bytes(bad))
    items = _items([path])
    assert _raws(items) == []
    assert "fails its checksum" in _reasons(items)["box.mbox.gz"]


def test_corrupt_deflate_data_keeps_what_came_before(tmp_path: Path) -> None:
    plain = _mbox(2000)
    packed = bytearray(gzip.compress(plain))
    middle = len(packed) // 2
    packed[middle:middle + 64] = os.urandom(64)
    path = tmp_path / "box.mbox.gz"
    path.write_bytes(bytes(packed))
    items = _items([path])
    raws = _raws(items)
    good = _raws(list(read_mbox(io.BytesIO(plain), "p")))
    assert raws == good[: len(raws)]  # only verbatim messages, in order, none invented
    reason = _reasons(items)["box.mbox.gz"]
    assert reason.startswith(("gzip stream corrupt", "gzip member fails its checksum"))


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    a, b = _mbox(5), _mbox(7)
    path = tmp_path / "cat.mbox.gz"
    path.write_bytes(gzip.compress(a) + gzip.compress(b))
    items = _items([path])
    assert len(_raws(items)) == 12 and not _reasons(items)


def test_truncated_gzip_of_one_message_is_not_imported(tmp_path: Path) -> None:
    packed = gzip.compress(make_mail("single", "y" * 5000))
    path = tmp_path / "one.eml.gz"
    path.write_bytes(packed[:-20])
    items = _items([path])
    assert _raws(items) == []
    assert _reasons(items)["one.eml.gz"] == "gzip stream truncated; the message was not imported"


def test_gzip_is_read_in_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.mbox.gz"
    path.write_bytes(gzip.compress(_mbox(20_000, size=1500), compresslevel=1))  # about 36 MB inside
    tracemalloc.start()
    try:
        count = sum(isinstance(i, RawMail) for i in iter_mail([path]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 12 * 2**20, peak


NOT_MAIL = {
    "picture.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "program": b"\x7fELF\x02\x01\x01\x00" + bytes(200),
    "paper.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\n",
    "archive.zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(100),
    "README": b"spamtl test folder\n\nNote: these files are not mail.\n",
    "README.md": b"# Corpus\n\nSubject: not a header here\n",
    "notes.txt": b"\n\nsome text written by hand: it has a colon\n",
}


def test_non_mail_files_are_reported_not_imported(tmp_path: Path) -> None:
    for name, data in NOT_MAIL.items():
        (tmp_path / name).write_bytes(data)
    good = make_mail("real", "mail among junk")
    (tmp_path / "message.eml").write_bytes(good)
    items = _items([tmp_path])
    assert _raws(items) == [good]
    assert set(_reasons(items)) == set(NOT_MAIL)
    assert all(r.startswith("not a mail message") for r in _reasons(items).values())


@pytest.mark.parametrize("head", [b"Return-Path: <a@b>\n", b"Received: from x\r\n", b"\n\nSubject: late\n",
                                  b"\xef\xbb\xbfFrom: bom@x\n", b"X-Foo:bar\n", b"From a@b Mon Jan  1 00:00:00 2001\n",
                                  b"Subject : spaced colon\n", b"  \nTo: x\n"])
def test_files_that_start_like_mail_are_read(tmp_path: Path, head: bytes) -> None:
    (tmp_path / "m.eml").write_bytes(head + b"\nbody\n")
    [item] = list(iter_mail([tmp_path / "m.eml"]))
    assert isinstance(item, RawMail), item


def test_every_corpus_message_still_looks_like_mail(tmp_path: Path) -> None:
    """Real messages saved one per file (as in a Maildir) are all still yielded, byte for byte."""
    boxes = [corpus("spamassassin", name) for name in ("spam.mbox", "easy_ham.mbox", "hard_ham.mbox", "spam_2.mbox")]
    raw_dir = corpus("enron-spam-raw")
    boxes += sorted(raw_dir.glob("*/*.mbox"))[:4]
    written: list[bytes] = []
    for n, box in enumerate(boxes):
        mb = mailbox.mbox(str(box), create=False)
        for key in mb.keys()[:150]:
            raw = mb.get_bytes(key)
            (tmp_path / f"{n}-{key}.eml").write_bytes(raw)
            written.append(raw)
    items = _items([tmp_path], timeout=120)
    assert not _reasons(items)
    assert sorted(_raws(items)) == sorted(r for r in written if r.strip())
