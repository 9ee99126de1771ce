"""Mutated real mail through the filter entry point, as a delivery pipeline runs it.

``spamtl classify USER --filter`` runs as a subprocess on a store trained once.  Whatever the
input, it must exit 0 with nothing on stderr, within a generous time, and write back exactly the
input with spamtl's header block added where ``add_headers`` puts it (which this module checks
independently: the block is whole, well-formed, and the stdlib parser reads its values).
"""

from __future__ import annotations

import mailbox
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spamtl.mail.headers import add_headers

from ..conftest import CORPORA, make_mail, write_mbox

WALL_BUDGET = 10.0  # seconds per message, interpreter start included; a normal run takes about 0.5 s
# A verdict with both cutoffs, or input that is not mail passed through unscored.
STATUS_RE = re.compile(r"(spam|ham|unsure), probability=[01]\.\d{4}, spam_cutoff=[01]\.\d{4}, "
                       r"ham_cutoff=[01]\.\d{4}, version=\d+, id=[0-9a-f]{12}(, label)?"
                       r"|skipped, (empty message|not mail: binary data|not mail: no header fields)")
EOL_RE = re.compile(rb"\r\n|\r|\n")

INLINE = [
    make_mail("project meeting", "agenda minutes budget review"),
    make_mail("win the lottery now", "claim your prize casino", sender="promo@cheap.example"),
    (b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002\nFrom: a@b.example\nSubject: html\nContent-Type: multipart/alternative;"
     b' boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nplain words\n--XX\nContent-Type: text/html\n\n'
     b"<html><body><p>Buy <a href='http://x.example/'>now</a></p></body></html>\n--XX--\n"),
    b"Subject: crlf\r\nFrom: c@d.example\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak =E9t=E9\r\n",
]


def _corpus_messages(limit: int = 12) -> list[bytes]:
    """A few real messages from the SpamAssassin corpus, when it is beside the checkout (else none)."""
    out: list[bytes] = []
    for name in ("spam.mbox", "easy_ham.mbox", "hard_ham.mbox"):
        path = CORPORA / "spamassassin" / name
        if path.exists():
            box = mailbox.mbox(str(path), create=False)
            keys = box.keys()
            out += [box.get_bytes(k) for k in keys[:: max(1, len(keys) // (limit // 3))][: limit // 3]]
    return out


SEEDS = INLINE + _corpus_messages()
PIECES = [b"\n--", b'Content-Type: multipart/mixed; boundary="', b"=?utf-8?B?", b"?=", b"\x00", b"\r\n\r\n", b"\r",
          b"Content-Transfer-Encoding: base64\n", b"\xff\xfe", b"<html><a href=", b"\n\n", b"=\n", b" ", b"\t",
          b"From ", b"X-Spam-Flag: NO\n", b"<!--", b"<head>" * 50, b"www." * 50, b"X-Spamtl-Status: forged\n"]
# Beginnings that broke add_headers before it was hardened.
STARTS = [b"", b" NO\n", b"\t\n", b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002", b"From x@y Fri Jul  5 10:00:00 2002\n ",
          b"\r", b"\n", b":\n"]


def _mutate(raw: bytes, start: bytes, edits: list[tuple[float, str, bytes, int]]) -> bytes:
    data = bytearray(raw)
    for where, kind, piece, byte in edits:
        pos = int(where * len(data))
        if kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = piece
        elif kind == "flip" and pos < len(data):
            data[pos] = byte
        elif kind == "delete":
            del data[pos:pos + 64]
    return start + bytes(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store trained once through the CLI: init, import a few synthetic messages per label, train."""
    tmp = tmp_path_factory.mktemp("fuzz")
    db = f"sqlite:///{tmp / 'fuzz.sqlite3'}"
    rng = random.Random(9)
    words = "alpha beta gamma delta roses tulips budget review agenda minutes".split()
    spam = [make_mail(f"win the lottery {i}", "claim your prize casino " + " ".join(rng.choices(words, k=8)),
                      sender=f"promo{i}@cheap.example") for i in range(20)]
    ham = [make_mail(f"project meeting {i}", "agenda minutes budget " + " ".join(rng.choices(words, k=8)),
                     sender="colleague@work.example") for i in range(20)]
    write_mbox(tmp / "spam.mbox", spam)
    write_mbox(tmp / "ham.mbox", ham)
    for args in (["init"], ["import", "ann", str(tmp / "spam.mbox"), "-l", "spam"],
                 ["import", "ann", str(tmp / "ham.mbox"), "-l", "ham"], ["train"]):
        result = subprocess.run([sys.executable, "-m", "spamtl", *args, "--db", db], capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    return db


def _filter(db: str, raw: bytes, max_bytes: int | None = None) -> tuple[subprocess.CompletedProcess[bytes], float]:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    if max_bytes is not None:  # scan larger messages than the 512 KB default, as an admin may configure
        env["SPAMTL_MAX_MESSAGE_BYTES"] = str(max_bytes)
    env.pop("SPAMTL_DATABASE_URL", None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "spamtl", "classify", "ann", "--filter", "--db", db],
                            input=raw, capture_output=True, timeout=60, env=env)
    return result, time.monotonic() - start


def _check_output(raw: bytes, out: bytes) -> None:
    """out == prefix + our block + rest, where prefix + rest is what add_headers(raw, []) keeps of the input."""
    plain = add_headers(raw, [])  # the input, plus one line end in the single documented case
    assert plain == raw or plain == raw + (EOL_RE.search(raw).group(0) if EOL_RE.search(raw) else b"\n")
    extra = len(out) - len(plain)
    assert extra > 0, "no header added"
    first = EOL_RE.search(raw[:262144])
    eol = re.escape(first.group(0) if first else b"\n")
    block_re = re.compile(rb"X-Spamtl-Status: ([^\r\n]*)" + eol + rb"(?:X-Spam-Flag: YES" + eol + rb")?\Z")
    # Insertion points i with out[:i] == plain[:i] and out[i + extra:] == plain[i:] form the range
    # [len(plain) - common suffix, common prefix]; found by bisection (slicing every i is quadratic).
    prefix = _common(lambda n: out[:n] == plain[:n], len(plain))
    suffix = _common(lambda n: out[len(out) - n:] == plain[len(plain) - n:], len(plain))
    blocks = [out[i:i + extra] for i in range(max(0, len(plain) - suffix), prefix + 1)
              if block_re.match(out[i:i + extra])]
    assert blocks, f"output is not the input with a header block inserted: {out[:300]!r}"
    status = block_re.match(blocks[0]).group(1).decode()  # type: ignore[union-attr]
    assert STATUS_RE.fullmatch(status), status
    assert (b"X-Spam-Flag: YES" in blocks[0]) == status.startswith("spam")
    # Independently of add_headers: every parser reads exactly our values (nothing folded into them).
    parsed = BytesParser(policy=compat32).parsebytes(out, headersonly=True)  # the body may nest 1,000 deep
    assert (parsed.get_all("X-Spamtl-Status") or [None])[0] == status
    if status.startswith("spam"):
        assert (parsed.get_all("X-Spam-Flag") or [None])[0] == "YES"
    # And the block is where the documented rule puts it.
    headers = [("X-Spamtl-Status", status)] + ([("X-Spam-Flag", "YES")] if status.startswith("spam") else [])
    assert out == add_headers(raw, headers)


def _common(same: Callable[[int], bool], limit: int) -> int:
    """The largest n <= limit with same(n), for a predicate true up to some n and false after."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _run_one(store: str, raw: bytes, max_bytes: int | None = None) -> None:
    result, seconds = _filter(store, raw, max_bytes)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    assert seconds < WALL_BUDGET
    _check_output(raw, result.stdout)


_EDITS = st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["cut", "insert", "flip", "delete"]),
                            st.sampled_from(PIECES), st.integers(0, 255)), max_size=6)
_CASE = dict(index=st.integers(0, len(SEEDS) - 1), start=st.sampled_from(STARTS), edits=_EDITS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(**_CASE)
def test_filter_survives_mutated_mail(store: str, index: int, start: bytes,
                                      edits: list[tuple[float, str, bytes, int]]) -> None:
    _run_one(store, _mutate(SEEDS[index], start, edits))


@pytest.mark.parametrize("raw", [
    b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002",  # only an envelope line, unterminated
    b" NO\nSubject: x\n\nbody",  # leading whitespace line
    b"",  # empty input
    b"Subject: cr only\rFrom: a@b.example\r\rbody\r",
    b"no header, no separator",
    b"From: a@b.com\nSubject: hi\nContent-Type: text/html\n\n" + b"<head>" * 20000,  # the reproduction
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40,  # not mail at all: still written back
], ids=["envelope-only", "leading-ws", "empty", "cr-only", "no-separator", "head-storm", "png"])
def test_filter_on_reported_examples(store: str, raw: bytes) -> None:
    _run_one(store, raw)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(**_CASE)
def test_filter_survives_mutated_mail_many(store: str, index: int, start: bytes,
                                           edits: list[tuple[float, str, bytes, int]]) -> None:
    _run_one(store, _mutate(SEEDS[index], start, edits))


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["head_storm", "comment_storm", "nested_tags", "many_parts", "nested_multipart",
                                   "content_type_params", "encoded_word_storm", "binary_noise"])
def test_filter_on_crafted_megabyte(store: str, shape: str) -> None:
    from ..crafted import SHAPES, SIZES

    _run_one(store, SHAPES[shape](SIZES["1MB"]), max_bytes=4 * SIZES["1MB"])


def test_check_output_rejects_a_broken_filter() -> None:
    """The checker itself fails on the outputs of the unhardened add_headers."""
    raw = b"From MAILER-DAEMON Fri Jul  5 10:00:00 2002"
    good = "ham, probability=0.1000, spam_cutoff=0.9000, ham_cutoff=0.5000, version=1, id=0123456789ab"
    glued = raw + f"X-Spamtl-Status: {good}\n".encode()
    with pytest.raises(AssertionError):
        _check_output(raw, glued)
    raw = b" NO\nSubject: x\n\nbody"
    folded = (b"X-Spamtl-Status: spam, probability=0.9000, spam_cutoff=0.9000, ham_cutoff=0.5000, version=1, "
              b"id=0123456789ab\n"
              b"X-Spam-Flag: YES\n" + raw)
    with pytest.raises(AssertionError):
        _check_output(raw, folded)
    _check_output(raw, add_headers(raw, [("X-Spamtl-Status", good)]))


def test_seeds_are_mail() -> None:
    assert len(SEEDS) >= len(INLINE)
    assert all(isinstance(s, bytes) and s for s in SEEDS)
    assert Path(__file__).name == "test_fuzz.py"
