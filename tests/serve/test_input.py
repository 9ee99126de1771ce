"""What the daemon does with input that is not mail, with users it does not know, and with TELL for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..conftest import run_sql
from .test_daemon import SPAM, Daemon, store  # noqa: F401 - fixture

pytestmark = pytest.mark.sqlite_only(reason="uses the SQLite store of tests/serve/test_daemon.py")


def verdict_count(db: str) -> int:
    return int(run_sql(db, "SELECT COUNT(*) FROM classifications")[0][0])


@pytest.mark.parametrize("body", [b"", b" \r\n", b"hello, this is a text file\n", b"\x89PNG\r\n\x1a\n\x00\x00"],
                         ids=["empty", "blank", "text", "binary"])
def test_input_that_is_not_mail_is_passed_back_unscored(store: dict[str, object], body: bytes) -> None:  # noqa: F811
    db = str(store["db"])
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1")
    try:
        before = verdict_count(db)
        processed = d.request("PROCESS", body, user="alice")
        head, _, rest = processed.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"SPAMD/1.5 0 EX_OK" and b"Spam: False ; 0.0 / 5.0" in lines, processed
        status = re.search(rb"X-Spamtl-Status: skipped, [^\r\n]+\r?\n", rest)
        assert status is not None, rest[:200]
        assert rest[:status.start()] + rest[status.end():] == body  # the input, byte for byte
        assert b"X-Spam-Flag" not in rest
        assert d.request("CHECK", body, user="alice") == b"SPAMD/1.5 0 EX_OK\r\nSpam: False ; 0.0 / 5.0\r\n\r\n"
        assert b"\r\nSpam: True ; " in d.request("PROCESS", SPAM, user="alice")
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert verdict_count(db) == before + 1  # only the real message's verdict


def test_an_unknown_user_is_logged_and_tell_does_not_create_them(store: dict[str, object]) -> None:  # noqa: F811
    db = str(store["db"])
    d = Daemon(db, Path(str(store["tmp"])), "--workers", "1", "--allow-tell")
    try:
        assert d.request("CHECK", SPAM, user="zed-unknown").startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: True")
        answer = d.request("TELL", SPAM, user="zed-unknown", Message_class="spam", Set="local")
        assert answer.startswith(b"SPAMD/1.5 67 "), answer
        assert run_sql(db, "SELECT COUNT(*) FROM users WHERE name = 'zed-unknown'")[0][0] == 0
        not_mail = d.request("TELL", b"just text\n", user="alice", Message_class="spam", Set="local")
        assert not_mail.startswith(b"SPAMD/1.5 65 not mail: no header fields; nothing learned"), not_mail
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert "event=unknown_user" in err and "user=zed-unknown" in err, err
