"""How the command line shows a long job's progress (what the services report: :mod:`spamtl.progress`).

On a terminal a rich bar per stage; otherwise one :mod:`spamtl.logs` line per finished stage
(``event=stage command=train stage=fit ... seconds=12.3``).  Both go to stderr, so stdout holds exactly the
command's result, and ``log_level``/``log_destination`` do not apply to them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from spamtl.progress import NO_PROGRESS, Progress

__all__ = ["show_progress", "StageLines", "StageBar"]

REFRESH_S = 0.25
"""How often the bar is redrawn (its spinner and clocks move between counts)."""

_DRAW = threading.Lock()
"""Held while a bar is drawn.  A fork waits for it (below), so a training worker forked while the bar's
thread draws never inherits stderr's or rich's locks half-held (see :mod:`spamtl.parallel`)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_DRAW.acquire, after_in_parent=_DRAW.release, after_in_child=_DRAW.release)


def _shown(value: object) -> object:
    return f"{value:g}" if isinstance(value, float) else value


class StageLines:
    """One log line per stage, written when the stage ends (the next one begins, or :meth:`done`)."""

    def __init__(self, command: str, stream: TextIO) -> None:
        self.command = command
        self.stream = stream
        self._lock = threading.Lock()  # advance() may come from another thread
        self._stage: dict[str, Any] | None = None

    def stage(self, name: str, total: int | None = None, *, unit: str = "", **fields: object) -> None:
        with self._lock:
            self._end()
            self._stage = {"name": name, "unit": unit, "fields": fields, "count": 0, "began": time.monotonic()}

    def set_total(self, total: int) -> None:
        pass  # a line reports what was done, not what was expected

    def advance(self, n: int = 1) -> None:
        with self._lock:
            if self._stage is not None:
                self._stage["count"] += n

    def done(self) -> None:
        with self._lock:
            self._end()

    def close(self) -> None:
        self._stage = None  # an unfinished stage is not reported: the error line says what happened

    def _end(self) -> None:
        if self._stage is None:
            return
        from spamtl.logs import format_line

        s, self._stage = self._stage, None
        fields: dict[str, object] = {"event": "stage", "command": self.command, "stage": s["name"]}
        fields.update((key, _shown(value)) for key, value in s["fields"].items())
        if s["unit"]:
            fields[s["unit"]] = s["count"]
        fields["seconds"] = f"{time.monotonic() - s['began']:.1f}"
        try:
            self.stream.write(format_line(fields, created=time.time()) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail the job it reports on
            pass


class StageBar:
    """A rich progress bar per stage on ``console`` (a terminal), redrawn by a thread of its own."""

    def __init__(self, command: str, console: Any, *, transient: bool = False) -> None:
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.command = command
        self._bar = RichProgress(SpinnerColumn(finished_text="✓"), TextColumn("{task.description}", markup=False), BarColumn(),
                                 _count_column(), TimeElapsedColumn(), _eta_column(), console=console,
                                 auto_refresh=False, transient=transient, redirect_stdout=False)
        self._transient = transient
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StageBar:
        from spamtl.parallel import mark_fork_safe

        self._bar.start()
        self._thread = mark_fork_safe(threading.Thread(target=self._tick, daemon=True, name="spamtl-progress"))
        self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._draw()

    def _draw(self) -> None:
        with _DRAW:
            self._bar.refresh()

    def stage(self, name: str, total: int | None = None, *, unit: str = "", **fields: object) -> None:
        self._end()
        detail = " ".join(f"{key}={_shown(value)}" for key, value in fields.items())
        self._task = self._bar.add_task(f"{self.command}: {name}" + (f" ({detail})" if detail else ""),
                                        total=total, unit=unit)
        self._draw()

    def set_total(self, total: int) -> None:
        if self._task is not None:
            self._bar.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def done(self) -> None:
        self._end()
        self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with _DRAW:
            self._bar.stop()

    def _end(self) -> None:
        if self._task is None:
            return
        task = self._bar.tasks[-1]
        # A finished stage shows a full bar and its duration: its count becomes its total (1 of 1 uncounted).
        end = task.completed if task.fields.get("unit") else 1
        self._bar.update(self._task, total=end, completed=end)
        self._bar.stop_task(self._task)
        if not self._transient:
            # A finished stage is printed above the live bar and leaves it: with many stages (a replay's days)
            # the live area would outgrow the screen, and rich crops it from the bottom, the running bar first.
            with _DRAW:
                self._bar.console.print(self._bar.make_tasks_table([task]))
                self._bar.remove_task(self._task)
        self._task = None


def _count_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        """``1,200/14,000 messages`` (``1,200 messages`` while the total is unknown; nothing without a unit)."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit")
            if not unit:
                return Text("")
            done = f"{int(task.completed):,}"
            of = "" if task.total is None else f"/{int(task.total):,}"
            return Text(f"{done}{of} {unit}", style="progress.download")

    return Count()


def _eta_column() -> Any:
    from rich.progress import TimeRemainingColumn
    from rich.text import Text

    class Eta(TimeRemainingColumn):
        """``eta 0:01:23`` while a counted stage runs."""

        def render(self, task: Any) -> Text:
            if task.finished or task.total is None or not task.fields.get("unit"):
                return Text("")
            return Text("eta ") + super().render(task)

    return Eta()


@contextlib.contextmanager
def show_progress(command: str, *, lines: bool = True, stream: TextIO | None = None,
                  console: Any = None) -> Iterator[Progress]:
    """The reporter for ``command``: a bar when ``stream`` (default stderr) is a terminal, else stage lines
    (``lines=False``: nothing).  ``console``: a rich Console to draw the bar on instead (tests).

    Leaving the block normally ends the last stage; on an exception the unfinished stage is not reported.
    """
    stream = stream if stream is not None else sys.stderr
    reporter: StageLines | StageBar | None = None
    if console is None and _is_terminal(stream):
        from rich.console import Console

        console = Console(file=stream)
        if not console.is_interactive:  # TERM=dumb: no cursor movement, so no bar
            console = None
    if console is not None:
        reporter = StageBar(command, console, transient=not lines).start()
    elif lines:
        reporter = StageLines(command, stream)
    if reporter is None:
        yield NO_PROGRESS
        return
    try:
        yield reporter
        reporter.done()
    finally:
        reporter.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
