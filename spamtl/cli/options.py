"""What every command shares: the common options, settings, the engine, output, and the one error exit.

Command modules import this; :mod:`spamtl.cli.app` imports the command modules.
Expected failures (``SpamtlError``) become one ``Error: ...`` line on stderr
and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from spamtl.errors import SpamtlError, UsageError, redact
from spamtl.settings import ENV_DATABASE_URL, Settings
from spamtl.store import utcnow as now  # the store's clock, for the commands' `now`

__all__ = ["DbOption", "OutputFormat", "TableFormat", "LabelChoice", "CONFIG_PATH", "exit_on_errors",
           "loaded_settings", "settings_from", "engine_for", "now", "print_json", "fmt", "read_message", "new_typer"]

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar=ENV_DATABASE_URL, show_envvar=True, metavar="URL",
                 help="SQLAlchemy database URL. Default: sqlite in $XDG_DATA_HOME/spamtl/."),
]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class TableFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class LabelChoice(str, Enum):
    spam = "spam"
    ham = "ham"


CONFIG_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("spamtl_config", default=None)
"""The global --config option of this invocation (set by the app's callback, read by :func:`loaded_settings`)."""


def new_typer(**kwargs: Any) -> typer.Typer:
    """A command group's Typer (merged into the app, or named with ``add_typer(..., name=...)``)."""
    return typer.Typer(rich_markup_mode=None, **kwargs)


@contextlib.contextmanager
def exit_on_errors(exit_code: int | None = None) -> Iterator[None]:
    """The one place where expected errors become a line on stderr and an exit code.

    With ``exit_code`` (``classify --exit-code``) every failure exits with it, a bug too (its
    traceback still printed): a script reading verdicts from exit codes must never read an error as one.
    """
    try:
        yield
    except SpamtlError as exc:
        # One line, and never a password, whatever the message quotes.
        typer.echo(f"Error: {' '.join(redact(str(exc)).split())}", err=True)
        raise typer.Exit(exc.exit_code if exit_code is None else exit_code) from None
    except Exception as exc:
        problem = _database_problem(exc)
        if problem is None:
            if exit_code is None:
                raise  # a bug: keep the traceback
            import traceback

            traceback.print_exc()
            raise typer.Exit(exit_code) from None
        typer.echo(f"Error: {problem}", err=True)
        raise typer.Exit(problem.exit_code if exit_code is None else exit_code) from None


def _database_problem(exc: BaseException) -> SpamtlError | None:
    """A driver error that escaped the services (a damaged file, a full disk) as a one-line error."""
    from spamtl.store.engine import translate

    return translate(exc)


def loaded_settings(db: str | None, options: dict[str, tuple[str, Any]] | None = None) -> Any:
    """Settings from every source (option > environment > config files > default) and their sources.

    ``options`` maps a Settings field to (the option's spelling, its value or None when not given).
    """
    from spamtl.settings import load_command_line

    return load_command_line(db, options, config=CONFIG_PATH.get())


def settings_from(db: str | None, options: dict[str, tuple[str, Any]] | None = None) -> Settings:
    """The effective Settings of this invocation (see :func:`loaded_settings`)."""
    return loaded_settings(db, options).settings  # type: ignore[no-any-return]


def engine_for(settings: Settings) -> Any:
    """The SQLAlchemy engine of ``settings.database_url``."""
    from spamtl.store.engine import make_engine

    return make_engine(settings.database_url)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell; ``-`` for None or NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


def read_message(path: str | None) -> bytes:
    """The one message of a command: the file at ``path``, or stdin for None or ``-``; never empty."""
    if path in (None, "-"):
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise UsageError("the message is empty")
    return raw
