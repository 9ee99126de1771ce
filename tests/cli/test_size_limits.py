"""The size limit, hit exactly: a message of ``max_message_bytes`` is scanned, one byte more is not.

Catches: ``>`` turned into ``>=`` in the size checks of filter mode
(``spamtl/services/filtering.py``, ``_filter_one``) or the daemon (``spamtl/serve/connection.py``, ``_read_body``, plain and
zlib-compressed bodies), which skipped a message of exactly the limit.  The limit is set small
(``SPAMTL_MAX_MESSAGE_BYTES``) so the messages stay small.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import make_mail
from ..small_store import build_store

runner = CliRunner()
LIMIT = 3000
ENV = {"SPAMTL_MAX_MESSAGE_BYTES": str(LIMIT)}
TOO_BIG = f"message larger than {LIMIT} bytes; not scanned".encode()


def sized(n: int) -> bytes:
    """A spammy message of exactly ``n`` bytes."""
    head = make_mail("win the lottery now", "claim your prize viagra casino ")
    raw = head + b"x" * (n - len(head) - 1) + b"\n"
    assert len(raw) == n
    return raw


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("size-limits")
    yield {"db": build_store(tmp, {"alice": (None, False), "bob": (None, False)}).database_url, "tmp": tmp}


@pytest.mark.parametrize(("size", "scanned"), [(LIMIT - 1, True), (LIMIT, True), (LIMIT + 1, False)],
                         ids=["under", "exactly", "one-byte-more"])
def test_filter_mode_scans_a_message_of_exactly_the_limit(store: dict[str, object], size: int, scanned: bool) -> None:
    raw = sized(size)
    result = runner.invoke(app, ["classify", "alice", "--filter", "--db", str(store["db"])], input=raw, env=ENV,
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    status = result.stdout_bytes.split(b"\n", 1)[0].decode()
    if scanned:
        assert status.startswith("X-Spamtl-Status: spam, probability="), status
    else:
        assert status == f"X-Spamtl-Status: skipped, larger than {LIMIT} bytes"
    assert result.stdout_bytes.endswith(raw)


@pytest.fixture(scope="module")
def daemon(store: dict[str, object]) -> Iterator[object]:
    from ..serve.test_daemon import Daemon

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAMTL_MAX_MESSAGE_BYTES", str(LIMIT))
        d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    yield d
    code, err = d.stop()
    assert code == 0, err


def _check(daemon, body: bytes, *extra: str) -> bytes:  # type: ignore[no-untyped-def]
    head = "\r\n".join(["CHECK SPAMC/1.5", "User: alice", *extra, f"Content-length: {len(body)}"])
    return daemon.exchange(head.encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize(("size", "scanned"), [(LIMIT, True), (LIMIT + 1, False)], ids=["exactly", "one-byte-more"])
def test_the_daemon_scans_a_message_of_exactly_the_limit(daemon, size: int, scanned: bool) -> None:  # type: ignore[no-untyped-def]
    out = _check(daemon, sized(size))
    if scanned:
        assert out.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; "), out
    else:
        assert out == b"SPAMD/1.5 65 " + TOO_BIG + b"\r\n\r\n"


@pytest.mark.parametrize(("size", "scanned"), [(LIMIT, True), (LIMIT + 1, False)], ids=["exactly", "one-byte-more"])
def test_the_daemon_scans_a_compressed_message_of_exactly_the_limit(daemon, size: int, scanned: bool) -> None:  # type: ignore[no-untyped-def]
    packed = zlib.compress(sized(size))
    assert len(packed) < LIMIT  # the limit applies to the inflated message
    out = _check(daemon, packed, "Compress: zlib")
    if scanned:
        assert out.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; "), out
    else:
        assert out == b"SPAMD/1.5 65 " + TOO_BIG + b"\r\n\r\n"
