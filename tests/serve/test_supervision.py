"""``spamtl serve`` keeps scanning when its workers die or hang, and tells systemd how it is."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from .test_daemon import SPAM, Daemon, store  # noqa: F401 - the module's trained store fixture

pytestmark = pytest.mark.sqlite_only(reason="moves the SQLite file away to make workers fail at start")


def workers_of(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def serving_workers(pid: int, count: int = 2, gone: set[int] = frozenset()) -> set[int] | None:  # type: ignore[assignment]
    """The daemon's worker pids once there are ``count`` of them and none of ``gone`` (else None)."""
    found = workers_of(pid)
    return found if len(found) == count and not found & gone else None


def wait_for(predicate, timeout: float, step: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def scanned(d: Daemon, count: int) -> int:
    """How many of ``count`` CHECKs come back scanned (EX_OK with a Spam line)."""
    ok = 0
    for _ in range(count):
        try:
            answer = d.request("CHECK", SPAM, user="alice")
        except OSError:
            continue
        ok += answer.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: ")
    return ok


def db_file(store: dict[str, object]) -> Path:  # noqa: F811
    return Path(str(store["db"]).removeprefix("sqlite:///"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV], ids=lambda s: s.name)
def test_a_dead_worker_is_replaced_within_a_second(store: dict[str, object], sig: signal.Signals) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    try:
        before = wait_for(lambda: serving_workers(d.proc.pid), 5)
        victim = min(before)
        os.kill(victim, sig)
        started = time.monotonic()
        after = wait_for(lambda: serving_workers(d.proc.pid, gone={victim}), 1.0)
        assert after, f"no replacement within 1 s: {workers_of(d.proc.pid)}"
        assert time.monotonic() - started <= 1.0
        assert scanned(d, 20) == 20
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert re.search(rf"worker {victim} (was killed by {sig.name}|exited with code 0) after [\d.]+ s; "
                     r"starting another\b", err), err


def test_every_worker_killed_at_once_is_replaced(store: dict[str, object]) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    try:
        before = wait_for(lambda: serving_workers(d.proc.pid), 5)
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: len(workers_of(d.proc.pid) - before) == 2, 1.0)
        assert scanned(d, 20) == 20
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_workers_that_keep_dying_are_backed_off_logged_and_come_back(store: dict[str, object]) -> None:  # noqa: F811
    """The store vanishes (a bad mount, an admin's mistake): workers die at start; the supervisor waits
    longer each time and says so, and serves again once the store is back."""
    path = db_file(store)
    away = path.with_suffix(".away")
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    try:
        before = wait_for(lambda: serving_workers(d.proc.pid), 5)
        path.rename(away)
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        time.sleep(4.5)  # two immediate replacements die, then waits of 1 s and 2 s
        away.rename(path)
        assert wait_for(lambda: scanned(d, 1) == 1, 12, step=0.2), "never served again"
        assert scanned(d, 10) == 10
    finally:
        if away.exists():
            away.rename(path)
        code, err = d.stop()
    assert code == 0, err
    assert re.search(r"exited with code 70 after [\d.]+ s; starting another in 1 s \(3 young deaths in a row\)", err), err
    assert re.search(r"exited with code 70 after [\d.]+ s; starting another in 2 s \(4 young deaths in a row\)", err), err
    assert "no worker is serving" in err


def test_a_worker_whose_loop_hangs_is_killed_and_replaced(store: dict[str, object],  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAMTL_SERVE_HUNG_TIMEOUT", "1.5")
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    try:
        before = wait_for(lambda: serving_workers(d.proc.pid), 5)
        stuck = min(before)
        os.kill(stuck, signal.SIGSTOP)  # alive, but its loop answers nothing
        assert wait_for(lambda: stuck not in workers_of(d.proc.pid) and len(workers_of(d.proc.pid)) == 2, 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)  # never leave a stopped process holding the daemon's pipes
        code, err = d.stop()
    assert code == 0, err
    assert f"worker {stuck} has not answered for 1.5 s; killing it" in err



@pytest.mark.slow
def test_a_stop_while_a_worker_is_being_replaced_stops_at_once(store: dict[str, object]) -> None:  # noqa: F811
    """SIGTERM right after a worker died: the replacement being forked must not swallow the stop.

    Without signals blocked around the fork, the new child could run the supervisor's own handler and keep
    serving, and the daemon hung for the 45 s stop limit in about one stop of five here.
    """
    for delay in [i / 1000 for i in range(0, 24, 2)] * 2:  # the replacement is forked a few ms after the death
        d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
        before = wait_for(lambda: serving_workers(d.proc.pid), 5)  # noqa: B023 - called at once
        os.kill(min(before), signal.SIGKILL)
        time.sleep(delay)
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(timeout=10)
        except Exception:
            d.proc.kill()
            for pid in workers_of(d.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            d.stop()
            pytest.fail("the daemon did not stop within 10 s of SIGTERM while replacing a worker")
        d.stop()

class Notifications:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.seen: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        new: list[str] = []
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.split("\n"):
                self.seen.append((time.monotonic(), line))
                new.append(line)
        return new


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_hears_ready_status_and_watchdog_only_while_a_worker_serves(
        store: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str) -> None:  # noqa: F811
    notify = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", workers)
    path = db_file(store)
    away = path.with_suffix(".away")
    try:
        lines = notify.collect(2.0)
        assert "READY=1" in lines
        assert lines.count("WATCHDOG=1") >= 3, lines
        if workers == "2":
            assert "STATUS=2 of 2 workers serving" in lines
            path.rename(away)  # no worker can start: systemd must stop hearing that all is well
            for pid in workers_of(d.proc.pid):
                os.kill(pid, signal.SIGKILL)
            notify.collect(1.0)
            quiet = notify.collect(2.0)
            assert "WATCHDOG=1" not in quiet, quiet
            assert "STATUS=0 of 2 workers serving" in [line for _, line in notify.seen]
            away.rename(path)
            assert "WATCHDOG=1" in notify.collect(8.0)
    finally:
        if away.exists():
            away.rename(path)
        code, err = d.stop()
    assert code == 0, err
    assert "STOPPING=1" in notify.collect(0.5) + [line for _, line in notify.seen]
