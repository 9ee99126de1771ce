"""spamtl.sources: mbox (plain and gzip), Maildir, folders of .eml, unreadable files."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from spamtl.sources import RawMail, Unreadable, iter_mail, read_mbox

from .conftest import make_mail, write_mbox


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
    """read_mbox pulls lines lazily: the first message comes out before the stream is exhausted."""
    consumed = []

    def lines():
        for i in range(10_000):
            consumed.append(i)
            yield b"From x Thu Jan  1 00:00:00 2004\n" if i % 5 == 0 else (b"Subject: s\n" if i % 5 == 1 else b"\n")

    first = next(read_mbox(lines(), "gen"))  # type: ignore[arg-type]
    assert isinstance(first, RawMail)
    assert len(consumed) < 20


@pytest.mark.parametrize("junk", [b"not an mbox at all\n", b"\x00\x01\x02"], ids=["text", "binary"])
def test_non_mbox_file_is_one_message(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(junk)
    assert _raws(list(iter_mail([path]))) == [junk]
