"""Progress of long work (train, import, evaluate, replay): what a service reports, never how it is shown.

A service takes ``progress`` (default :data:`NO_PROGRESS`) and calls ``stage(name, **fields)``,
``set_total(n)`` and ``advance(n)`` (from any thread); the caller that made it calls :meth:`Progress.done`.
The command line passes one of :mod:`spamtl.cli.progress`'s reporters.
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
