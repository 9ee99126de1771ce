"""A real ``spamtl web`` on loopback over a small trained store, and a cookie-keeping HTTP client for it.

The store (SQLite, or PostgreSQL with $SPAMTL_TEST_POSTGRES) has two users: alice calls the garden
newsletter spam, bob wants it.  Two trainings (v1 retired, v2 active: there is a version to roll back
to), then each user's new mail is classified; alice's cutoffs are set wide (spam at 0.999, ham below
0.001) so her new mail is unsure.  Tokens: alice, bob, and an admin called ``root``.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cli.test_loop import _mails
from tests.conftest import free_port, make_mail, migrated_database, run, write_mbox

pytest.importorskip("starlette", reason="the web extra is not installed")

START_SECONDS = 30.0


@dataclass
class Site:
    url: str
    db: str
    tokens: dict[str, str]
    messages: dict[str, list[str]] = field(default_factory=dict)  # user -> sha256 of each classified message
    hostile: str = ""  # sha256 of alice's message whose text is HTML and script
    tmp: Path = Path(".")


class Client:
    """A browser-like HTTP client: keeps cookies, sends the CSRF value with each form, never follows
    redirects by itself (a test sees the 303 and where it points)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def csrf(self) -> str:
        if self.cookie("spamtl_csrf") is None:
            self.request("/login")
        value = self.cookie("spamtl_csrf")
        assert value, "the login page set no CSRF cookie"
        return value

    def post(self, path: str, data: dict[str, str], headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], str]:
        return self.request(path, {"csrf": self.csrf(), **data}, headers)

    def login(self, token: str) -> Client:
        status, headers, _ = self.post("/login", {"token": token})
        assert status == 303, status
        return self


def start_web(db: str, tmp: Path, *extra: str, env: dict[str, str] | None = None
              ) -> tuple[subprocess.Popen[bytes], str]:
    """``spamtl web`` in a process of its own on a free loopback port; returns it and its base URL."""
    port = free_port()
    log = (tmp / f"web-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "spamtl", "web", "--listen", f"127.0.0.1:{port}", "--db", db,
                             *extra], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"spamtl web exited {proc.returncode}: {(tmp / f'web-{port}.log').read_text()}")
        try:
            urllib.request.urlopen(url + "/login", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("spamtl web did not answer within 30 s")


def stop_web(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


HOSTILE = make_mail("<b>bold</b> offer", '<script>alert("x")</script><img src="http://tracker.example/p.gif"> '
                    "win the lottery now claim your prize",
                    extra_headers="Content-Type: text/plain; charset=utf-8\n")


def _build(tmp: Path, db: str) -> Site:
    for user, news_is_spam, seed in (("alice", True, 3), ("bob", False, 4)):
        news = _mails(2, "newsletter", 8)
        spam = _mails(1, "spam", 16) + (news if news_is_spam else [])
        ham = _mails(seed, user, 16) + ([] if news_is_spam else news)
        for label, mails in (("spam", spam), ("ham", ham)):
            box = write_mbox(tmp / f"{user}-{label}.mbox", mails)
            # one group for both: an explanation has all three parts (shared, group, personal)
            assert run(db, "import", user, str(box), "--label", label, "--group", "home").exit_code == 0
    for _ in range(2):
        result = run(db, "train")
        assert result.exit_code == 0, result.output
    site = Site(url="", db=db, tokens={}, tmp=tmp)
    for user, seed in (("alice", 3), ("bob", 4)):  # each user's new mail is their own (no message in common)
        new = _mails(seed + 10, "newsletter", 3) + _mails(seed + 15, "spam", 3) + _mails(seed + 20, user, 3)
        if user == "alice":
            new.append(HOSTILE)
        box = write_mbox(tmp / f"{user}-new.mbox", new)
        result = run(db, "classify", user, str(box), "--format", "json")
        assert result.exit_code == 0, result.output
        site.messages[user] = re.findall(r'"sha256": "([0-9a-f]{64})"', result.output)
        assert len(site.messages[user]) == len(new), result.output
    site.hostile = site.messages["alice"][-1]
    assert run(db, "cutoffs", "set", "alice", "--spam", "0.999", "--ham", "0.001").exit_code == 0
    for name, args in (("alice", ()), ("bob", ()), ("root", ("--admin",))):
        result = run(db, "users", "token", name, *args)
        assert result.exit_code == 0, result.output
        site.tokens[name] = result.output.strip()
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A running ``spamtl web`` over the store above (one per test module; stopped after it)."""
    tmp = tmp_path_factory.mktemp("web")
    with migrated_database(tmp, "web") as db:
        built = _build(tmp, db)
        proc, built.url = start_web(db, tmp)
        try:
            yield built
        finally:
            stop_web(proc)
