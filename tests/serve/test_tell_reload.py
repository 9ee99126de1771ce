"""A TELL is seen by the very next request of the daemon: the worker that learned reloads at once.

Catches: ``spamtl/serve/worker.py`` (``Worker._tell``) not forcing a reload after a
TELL, so the worker kept scoring with the user's cached slice until its next periodic refresh
(a test that sleeps past the refresh interval cannot see it).  Here one worker refreshes every 30 s only
(``SPAMTL_SERVE_REFRESH_INTERVAL``), and no request sleeps: only the forced reload can explain a
moved score.  The test runs as root, whom the daemon trusts to teach for any user.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import make_mail
from ..small_store import build_store

runner = CliRunner()
TAUGHT = make_mail("weekly newsletter digest 31", "this week in gardening news peonies", sender="news@garden.example")
PROBE = make_mail("weekly newsletter digest 32", "this week in gardening news dahlias", sender="news@garden.example")
OTHER = make_mail("weekly newsletter digest 33", "this week in gardening news asters", sender="news@garden.example")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[object, str]]:
    from .test_daemon import Daemon

    db = build_store(tmp_path, {"alice": (None, True), "bob": (None, False)}).database_url
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAMTL_SERVE_REFRESH_INTERVAL", "30")
        d = Daemon(db, tmp_path, "--workers", "1", "--allow-tell")
    yield d, db
    code, err = d.stop()
    assert code == 0, err


def _process(d, raw: bytes) -> tuple[str, float, bool]:  # type: ignore[no-untyped-def]
    """(verdict, probability, decided by bob's label) of a PROCESS for bob."""
    out = d.request("PROCESS", raw, user="bob")
    match = re.search(rb"X-Spamtl-Status: (\w+), probability=([0-9.]+), .*?(, label)?\n", out)
    assert match is not None, out[:300]
    return match.group(1).decode(), float(match.group(2)), match.group(3) is not None


def test_tell_then_an_immediate_request_sees_the_new_label_and_weights(daemon) -> None:  # type: ignore[no-untyped-def]
    d, db = daemon
    verdict, before, by_label = _process(d, PROBE)  # bob's slice is now cached in the one worker
    assert verdict == "ham" and not by_label
    assert _process(d, TAUGHT)[0] == "ham"
    told = d.request("TELL", TAUGHT, user="bob", Message_class="spam", Set="local")
    assert told.startswith(b"SPAMD/1.5 0 EX_OK\r\n") and b"\r\nDidSet: local\r\n" in told, told
    # No sleep: the next requests come within milliseconds, 30 s before any periodic refresh.
    verdict, _, by_label = _process(d, TAUGHT)
    assert (verdict, by_label) == ("spam", True)
    _, after, _ = _process(d, PROBE)
    assert after > before + 0.01, (before, after)  # the refitted personal part scores similar mail
    # The control: a change the worker was not told about (the CLI's feedback) waits for the refresh.
    result = runner.invoke(app, ["feedback", "bob", "--spam", "-", "--db", db], input=OTHER, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _process(d, PROBE)[1] == after
