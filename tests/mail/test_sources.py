"""spamtl.mail.sources: mbox (plain and gzip), Maildir, folders of .eml, unreadable files."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from spamtl.mail.sources import RawMail, Unreadable, iter_mail, read_mbox

from ..conftest import make_mail, write_mbox


def _raws(items: list[RawMail | Unreadable]) -> list[bytes]:
    return [i.raw for i in items if isinstance(i, RawMail)]


def test_mbox_split_and_from_unquoting() -> None:
    data = (b"From a@b Thu Jan  1 00:00:00 2004\nSubject: one\n\nline\n>From the start\n\n"
            b"From c@d Thu Jan  1 00:00:00 2004\nSubject: two\n\nFrom here, not a separator\n\n")
    items = list(read_mbox(io.BytesIO(data), "box"))
    raws = _raws(items)
    assert raws == [b"Subject: one\n\nline\nFrom the start\n", b"Subject: two\n\nFrom here, not a separator\n"]
    assert [i.origin for i in items] == ["box#1", "box#2"]


def test_mbox_crlf_and_no_trailing_blank() -> None:
    data = b"From x\r\nSubject: a\r\n\r\nbody\r\n\r\nFrom y Thu Jan  1 00:00:00 2004\r\nSubject: b\r\n\r\nlast"
    assert _raws(list(read_mbox(io.BytesIO(data), "b"))) == [b"Subject: a\r\n\r\nbody\r\n", b"Subject: b\r\n\r\nlast"]


def test_gzip_mbox_and_eml_and_maildir(tmp_path: Path) -> None:
    msgs = [make_mail(f"s{i}", f"body {i}") for i in range(5)]
    mbox = write_mbox(tmp_path / "plain.mbox", msgs[:2])
    gz = tmp_path / "box.mbox.gz"
    gz.write_bytes(gzip.compress(mbox.read_bytes()))
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1:2,S").write_bytes(msgs[2])
    (maildir / "new" / "2").write_bytes(msgs[3])
    (maildir / "tmp" / "half-written").write_bytes(b"partial")
    (maildir / "dovecot-uidlist").write_bytes(b"3 V1 N2")
    eml = tmp_path / "single.eml"
    eml.write_bytes(msgs[4])
    assert _raws(list(iter_mail([gz]))) == [m.rstrip(b"\n") + b"\n" for m in msgs[:2]]
    assert _raws(list(iter_mail([maildir]))) == [msgs[2], msgs[3]]
    assert _raws(list(iter_mail([eml]))) == [msgs[4]]


def test_unreadable_files_are_reported_and_skipped(tmp_path: Path) -> None:
    good = tmp_path / "dir" / "good.eml"
    good.parent.mkdir()
    good.write_bytes(make_mail("ok", "fine"))
    (tmp_path / "dir" / "empty.eml").write_bytes(b"")
    (tmp_path / "dir" / "broken.gz").write_bytes(b"\x1f\x8bnot really gzip")
    secret = tmp_path / "dir" / "secret.eml"
    secret.write_bytes(make_mail("x", "y"))
    secret.chmod(0)
    items = list(iter_mail([tmp_path / "dir", tmp_path / "missing.mbox"]))
    reasons = {Path(i.origin).name: i.reason for i in items if isinstance(i, Unreadable)}
    assert _raws(items) == [good.read_bytes()] + ([secret.read_bytes()] if os.geteuid() == 0 else [])
    assert reasons["empty.eml"] == "empty file"
    assert reasons["broken.gz"].startswith("corrupt gzip data")
    assert reasons["missing.mbox"] == "no such file or directory"
    if os.geteuid() != 0:  # root reads everything
        assert reasons["secret.eml"] == "permission denied"


def test_mbox_streams_without_loading_the_file() -> None:
    """read_mbox reads in blocks: the first message comes out long before the stream is exhausted."""
    one = b"From x Thu Jan  1 00:00:00 2004\nSubject: s\n\n" + b"body line\n" * 100 + b"\n"

    class CountingStream(io.BytesIO):
        consumed = 0

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            data = super().read(n)
            self.consumed += len(data)
            return data

    stream = CountingStream(one * 20_000)  # about 20 MB
    messages = read_mbox(stream, "big")  # type: ignore[arg-type]
    first = next(messages)
    assert isinstance(first, RawMail) and first.raw.startswith(b"Subject: s")
    assert stream.consumed <= 2 * 1024 * 1024
    assert sum(1 for _ in messages) == 20_000 - 1


def test_mbox_separator_split_across_blocks() -> None:
    from spamtl.mail import sources

    for pad in range(sources._BLOCK - 40, sources._BLOCK + 5):
        data = b"From a Thu Jan  1 00:00:00 2004\nSubject: 1\n\n" + b"x" * pad + b"\n\n"
        data += b"From b Thu Jan  1 00:00:00 2004\nSubject: 2\n\nlast\n"
        raws = _raws(list(read_mbox(io.BytesIO(data), "m")))
        assert [r[:10] for r in raws] == [b"Subject: 1", b"Subject: 2"], pad
        assert raws[1] == b"Subject: 2\n\nlast\n"


def test_oversized_mbox_message_is_skipped() -> None:
    from spamtl.mail import sources

    sep = b"From a Thu Jan  1 00:00:00 2004\n"
    data = sep + b"Subject: small\n\nok\n\n" + sep + b"Subject: huge\n\n" + b"y" * (5 * sources._BLOCK) + b"\n\n"
    data += sep + b"Subject: after\n\nfine\n"
    items = list(read_mbox(io.BytesIO(data), "m", max_bytes=3 * sources._BLOCK))
    assert isinstance(items[0], RawMail) and isinstance(items[2], RawMail)
    assert isinstance(items[1], Unreadable) and "larger than" in items[1].reason
    assert items[2].raw == b"Subject: after\n\nfine\n"


@pytest.mark.parametrize("junk", [b"not an mbox at all\n", b"\x00\x01\x02"], ids=["text", "binary"])
def test_non_mail_file_is_reported_not_yielded(tmp_path: Path, junk: bytes) -> None:
    # Once such files were yielded as one message each (and imported as ham without a warning).
    path = tmp_path / "junk"
    path.write_bytes(junk)
    [item] = list(iter_mail([path]))
    assert isinstance(item, Unreadable) and item.reason.startswith("not a mail message")


SEPARATOR = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n"
EMPTY = "empty message: an mbox `From ` line with nothing after it"


@pytest.mark.parametrize(("data", "expected"), [
    (SEPARATOR, [("box#1", EMPTY)]),
    (SEPARATOR + b"\n\n", [("box#1", EMPTY)]),
    (SEPARATOR + b"Subject: a\n\nx\n\n" + SEPARATOR + b"\n" + SEPARATOR, [("box#1", None), ("box#2", EMPTY),
                                                                          ("box#3", EMPTY)]),
    (SEPARATOR + b"Subject: a\n\nx\n\n" + SEPARATOR, [("box#1", None), ("box#2", EMPTY)]),
], ids=["separator-only", "separator-and-blank-lines", "empty-in-the-middle", "empty-at-the-end"])
def test_an_mbox_separator_with_no_message_is_reported(data: bytes, expected: list[tuple[str, str | None]]) -> None:
    items = list(read_mbox(io.BytesIO(data), "box"))
    assert [(i.origin, i.reason if isinstance(i, Unreadable) else None) for i in items] == expected
