"""The ``spamtl`` command line: options -> Settings -> one service call -> print.

Expected failures (``SpamtlError``) become one ``Error: ...`` line on stderr
and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from spamtl.config import ENV_DATABASE_URL, Settings, database_url_from_env
from spamtl.errors import SpamtlError

app = typer.Typer(
    name="spamtl",
    help="A per-user spam filter that learns from every user's mail (multi-task learning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # message bodies are private
    rich_markup_mode=None,
)

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


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The one place where expected errors become a line on stderr and an exit code."""
    try:
        yield
    except SpamtlError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


class _Progress:
    """A one-line progress counter on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.shown = 0.0
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()

    def __call__(self, n: int = 1, total: int | None = None) -> None:
        self.done += n
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.enabled and now - self.shown > 0.2:
            self.shown = now
            rate = self.done / max(now - self.start, 1e-9)
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.label}: {self.done}{of} ({rate:,.0f}/s)   ")
            sys.stderr.flush()

    def stage(self, label: str, total: int | None = None) -> None:
        self.finish()
        self.label, self.total, self.done, self.start = label, total, 0, time.monotonic()

    def finish(self) -> None:
        if self.enabled and self.shown:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()
        self.shown = 0.0


def _settings(db: str | None) -> Settings:
    return Settings(database_url=database_url_from_env(db))


def _engine(settings: Settings, *, create: bool = False) -> Any:
    from spamtl.store.db import make_engine

    return make_engine(settings.database_url, create_dir=create)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


# ---------------------------------------------------------------- commands
@app.command()
def init(db: DbOption = None) -> None:
    """Create the database, or upgrade it to the current schema.

    Example: spamtl init --db sqlite:////var/lib/spamtl/spamtl.sqlite3
    """
    with _errors():
        from spamtl.store.db import upgrade

        settings = _settings(db)
        upgrade(_engine(settings, create=True))
        typer.echo(f"Database ready: {settings.database_url}")


@app.command("import")
def import_(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user (mailbox owner) the labels belong to.")],
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help=".eml files, Maildir folders, directories, mbox or mbox.gz files.")],
    label: Annotated[LabelChoice, typer.Option("--label", "-l", help="What these messages are for this user.")],
    group: Annotated[str | None, typer.Option(help="Put the user in this group (an organisation, a domain).")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Summary as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Import labelled mail for a user.

    Importing the same mail again adds nothing; importing it with the other
    label records the new label, which wins.  Unreadable files are reported
    and skipped.

    Example: spamtl import alice ~/Maildir/.Junk --label spam
    """
    with _errors():
        from spamtl.services.importing import ImportInterrupted, import_mail

        settings = _settings(db)
        progress = _Progress(f"importing for {user}")
        try:
            summary = import_mail(_engine(settings), user=user, paths=[str(p) for p in paths], label=label.value,
                                  group=group, now=_now(), chunk_size=settings.chunk_size, progress=progress)
        except ImportInterrupted as exc:
            progress.finish()
            _print_import(exc.summary, output)
            raise
        progress.finish()
        _print_import(summary, output)


def _print_import(summary: Any, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        _print_json(summary.as_dict())
        return
    typer.echo(f"{summary.user} ({summary.label}): {summary.imported} imported, {summary.known} already known, "
               f"{summary.relabelled} relabelled, {len(summary.unreadable)} unreadable")
    for path, reason in summary.unreadable[:50]:
        typer.echo(f"  unreadable: {path}: {reason}", err=True)
    if len(summary.unreadable) > 50:
        typer.echo(f"  ... and {len(summary.unreadable) - 50} more unreadable", err=True)


@app.command()
def users(
    output: Annotated[OutputFormat, typer.Option("--format", help="text table or JSON list.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """List users with their group and current ham and spam label counts.

    Example: spamtl users --format json
    """
    with _errors():
        from spamtl.services.reports import list_users

        rows = list_users(_engine(_settings(db)))
        if output is OutputFormat.json:
            _print_json([{"user": r.user, "group": r.group, "ham": r.ham, "spam": r.spam} for r in rows])
            return
        if not rows:
            typer.echo("No users yet; add mail with `spamtl import USER PATH --label spam|ham`.")
            return
        width = max(4, *(len(r.user) for r in rows))
        gwidth = max(5, *(len(r.group or "-") for r in rows))
        typer.echo(f"{'user':<{width}}  {'group':<{gwidth}}  {'ham':>7}  {'spam':>7}")
        for r in rows:
            typer.echo(f"{r.user:<{width}}  {r.group or '-':<{gwidth}}  {r.ham:>7}  {r.spam:>7}")


def main() -> None:
    """Entry point of the ``spamtl`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
