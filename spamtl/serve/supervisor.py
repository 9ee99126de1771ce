"""Keeps N forked workers serving the shared sockets: heartbeats, replacement with back-off, systemd status."""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spamtl.serve import systemd
from spamtl.serve.worker import HEARTBEAT_SECONDS, ServeOptions, emit, run_worker
from spamtl.services import telemetry
from spamtl.settings import Settings

if TYPE_CHECKING:
    from spamtl.serve.exporter import Exporter

YOUNG_SECONDS = 10.0
"""A worker that dies younger than this counts towards a crash loop; one that lived longer resets it."""
BACKOFF_MAX_SECONDS = 30.0
"""Longest wait before starting a worker again when workers keep dying young (1, 2, 4 ... 30 s)."""
STOP_SECONDS = 45.0
"""After SIGTERM, workers still running this long are killed (a request is bounded far below)."""


@dataclass(eq=False)
class _Child:
    pid: int
    beats: int  # the read end of the worker's heartbeat pipe
    started: float
    last_beat: float | None = None


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Supervisor:
    """Keeps ``workers`` worker processes serving the shared sockets.

    - A worker that dies (any exit, any signal: kill -9, the OOM killer) is replaced at once; when
      workers keep dying young (a broken store, a bad upgrade) each next start waits 1, 2, 4 ... 30 s,
      and every death is logged with its cause and the wait.
    - A worker whose event loop has not reported for ``serve_hung_timeout`` seconds is killed and replaced.
    - systemd hears READY=1 once every first worker serves (or has died trying), STATUS=N of M
      workers serving, and WATCHDOG=1 only while at least one worker serves: a daemon in which no
      worker serves is restarted by systemd instead of quietly answering nothing.
    - ``exporter`` (``serve_metrics``) serves from this process, whatever happens to the workers; they count
      into the multiprocess directory of :mod:`spamtl.services.telemetry`, and a dead one's counts stay.
    """

    def __init__(self, settings_factory: Callable[[], Settings], options: ServeOptions,
                 sockets: list[socket.socket], workers: int, hung_timeout: float, ready: Callable[[], None],
                 exporter: Exporter | None = None) -> None:
        self.settings_factory, self.options, self.sockets = settings_factory, options, sockets
        self.workers, self.hung_timeout, self.ready = workers, hung_timeout, ready
        self.exporter = exporter
        self.children: dict[int, _Child] = {}
        self.starts: list[float] = []  # when each missing worker is due to start
        self.young_deaths = 0
        self.stopping: float | None = None
        self.selector = selectors.DefaultSelector()
        self.first: set[int] | None = None  # the first workers, until each serves or has died
        self.last_status = ""

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        for _ in range(self.workers):
            self._spawn()
        self.first = set(self.children)
        watchdog = systemd.watchdog_interval()
        next_ping = time.monotonic()
        while self.children or (self.starts and self.stopping is None):
            now = time.monotonic()
            self._read_beats(min(0.2, max(0.0, min(self.starts, default=now + 0.2) - now)))
            self._reap()
            now = time.monotonic()
            if self.stopping is not None:
                if now - self.stopping > STOP_SECONDS:
                    self._kill_all()
                continue
            self._kill_hung(now)
            if self.young_deaths and len(self.children) == self.workers and all(
                    now - c.started >= YOUNG_SECONDS for c in self.children.values()):
                self.young_deaths = 0  # every worker has lived past a crash loop's age: healthy again
            while self.starts and self.starts[0] <= now:
                self.starts.pop(0)
                self._spawn()
            serving = self._report_status(now)
            if watchdog is not None and serving > 0 and now >= next_ping:
                systemd.notify("WATCHDOG=1")
                next_ping = now + watchdog
        self.selector.close()
        return 0

    def _report_status(self, now: float) -> int:
        """READY=1 once the first workers serve, STATUS=N of M when it changes; how many serve."""
        if self.first is not None and all(pid not in self.children or self.children[pid].last_beat is not None
                                          for pid in self.first):
            self.first = None
            self.ready()
        serving = sum(1 for c in self.children.values()
                      if c.last_beat is not None and now - c.last_beat < 3 * HEARTBEAT_SECONDS)
        status = f"STATUS={serving} of {self.workers} workers serving"
        if status != self.last_status and self.first is None:
            if serving == 0:
                emit("error", reason="no worker is serving: requests wait until one starts")
            systemd.notify(status)
            self.last_status = status
        return serving

    def _signal(self, sig: int, _frame: Any) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
            self.stopping = time.monotonic()
            self.starts.clear()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    def _spawn(self) -> None:
        beats_r, beats_w = os.pipe()
        # Signals wait while forking: a SIGTERM that reached the new child before it dropped the
        # supervisor's handler would run that handler there and leave the child serving after a stop.
        # They also wait until the child is on the list, so that a stop reaches it too.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(beats_r, beats_w)
            os.close(beats_w)
            child = _Child(pid, beats_r, time.monotonic())
            self.children[pid] = child
            self.selector.register(beats_r, selectors.EVENT_READ, child)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _child(self, beats_r: int, beats_w: int) -> None:
        """The forked worker: serve, then exit (70 on an unexpected error, which the supervisor logs)."""
        code = 0
        try:
            os.close(beats_r)
            for child in self.children.values():
                os.close(child.beats)
            self.selector.close()
            if self.exporter is not None:
                self.exporter.close_in_child()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: nothing cached yet
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            os.set_blocking(beats_w, False)
            run_worker(self.settings_factory, self.options, self.sockets, beat=functools.partial(_beat, beats_w))
        except BaseException:  # noqa: BLE001 - the supervisor logs the exit code
            import traceback

            traceback.print_exc()
            code = 70
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _read_beats(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            child: _Child = key.data
            try:
                data = os.read(child.beats, 4096)
            except OSError:
                data = b""
            if data:
                child.last_beat = time.monotonic()
            else:  # the worker closed its end: it is exiting; _reap says how
                self.selector.unregister(child.beats)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.beats)
            os.close(child.beats)
            telemetry.note_process_gone(pid)
            if self.stopping is None:
                self._replace(pid, status, time.monotonic() - child.started)

    def _replace(self, pid: int, status: int, lived: float) -> None:
        """Schedule a new worker for the one that died: at once, or after a back-off in a crash loop."""
        self.young_deaths = self.young_deaths + 1 if lived < YOUNG_SECONDS else 0
        # Every worker may die once (kill -9 of all of them) and is replaced at once; a crash loop waits.
        over = self.young_deaths - self.workers
        wait = 0.0 if over <= 0 else min(BACKOFF_MAX_SECONDS, 2.0 ** (over - 1))
        self.starts.append(time.monotonic() + wait)
        self.starts.sort()
        emit("error", reason=f"worker {pid} {_exit_cause(status)} after {lived:.1f} s; "
                             + ("starting another" if wait == 0 else
                                f"starting another in {wait:.0f} s ({self.young_deaths} young deaths in a row)"))

    def _kill_hung(self, now: float) -> None:
        for child in list(self.children.values()):
            if now - (child.last_beat or child.started) > self.hung_timeout:
                emit("error", reason=f"worker {child.pid} has not answered for {self.hung_timeout:g} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.last_beat = now  # killed once; _reap replaces it

    def _kill_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _beat(fd: int) -> bool:
    """One heartbeat byte to the supervisor; False once it is gone (the pipe is broken)."""
    try:
        os.write(fd, b".")
    except BlockingIOError:  # the supervisor is behind on reading: it knows we are alive
        pass
    except OSError:
        return False
    return True


def _exit_cause(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
