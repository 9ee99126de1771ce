"""Progress of long work (train, import, evaluate, replay): what a service reports, never how it is shown.

A service that can run for minutes takes a ``progress`` argument (default
:data:`NO_PROGRESS`) and calls, in order::

    progress.stage("fit", labels=14000, users=1200)           # a step begins (the previous one ends)
    progress.stage("load", unit="messages")                    # a step with a count ...
    progress.set_total(13950)                                  # ... whose total is known a little later
    progress.advance(1000)                                     # units done, in batches: a call takes a lock

Stage names are short and stable (``load``, ``search``, ``fit``, ``gate``,
``save``, ``prune``, ``import``, ``folds``, ``days``); the keyword fields are
numbers or short words known when the step begins.  The caller that made the
object calls :meth:`Progress.done` once the whole job succeeded; a service
never does (a service may run inside another, as training runs inside the
replay).  The reporters accept :meth:`Progress.advance` from any thread.

Services, the model and the store never import rich or typer: the command
line passes one of :mod:`spamtl.cli.progress`'s reporters (a bar on a
terminal, one log line per stage otherwise).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress", "NoProgress", "NO_PROGRESS"]


class Progress(Protocol):
    """Where a long job reports its steps and counts."""

    def stage(self, name: str, total: int | None = None, *, unit: str = "", **fields: object) -> None:
        """Step ``name`` begins: ``total`` units of ``unit`` (None: not known, or not counted)."""

    def set_total(self, total: int) -> None:
        """The current step's total, once known."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current step are done."""

    def done(self) -> None:
        """The job is finished (ends the last step)."""


class NoProgress:
    """Reports nothing (the default for library callers and tests)."""

    def stage(self, name: str, total: int | None = None, *, unit: str = "", **fields: object) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def done(self) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()
