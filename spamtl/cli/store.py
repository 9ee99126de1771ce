"""Commands that look after the store: ``prune``, ``models pin|unpin``, ``users delete|rename``.

Registered on the app of :mod:`spamtl.cli.app` (imported at its end).
"""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.app import DbOption, OutputFormat, _engine, _errors, _now, _print_json, _settings, models_app, users_app
from spamtl.cli.app import app as _app

__all__: list[str] = []


@_app.command()
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; change nothing.")] = False,
    output: Annotated[OutputFormat, typer.Option("--format", help="Result as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Apply retention: drop old unlabelled mail bodies, old verdicts, and weights of old model versions.

    Labelled mail is never pruned.  Bodies of mail nobody labelled go after 30
    days, verdicts after 180 days, and model weights except the active model,
    the last 5 promoted and pinned ones (`spamtl models pin N`).  `spamtl
    train` runs this after every training.

    Example: spamtl prune --dry-run
    """
    with _errors():
        from spamtl.services.retention import prune as run_prune

        settings = _settings(db)
        result = run_prune(_engine(settings), settings, now=_now(), dry_run=dry_run)
        if output is OutputFormat.json:
            _print_json(result.as_dict())
            return
        would = "Would drop" if dry_run else "Dropped"
        stripped = ", ".join(f"v{v}" for v in result.versions_stripped or []) or "none"
        typer.echo(f"{would} {result.bodies_dropped} message bodies, {result.classifications_deleted} verdicts, "
                   f"{result.messages_deleted} messages; weights of model versions: {stripped}")


def _pin(version: int, db: str | None, pinned: bool) -> None:
    with _errors():
        from spamtl.services.models import pin

        info = pin(_engine(_settings(db)), version, pinned)
        typer.echo(f"Model v{info.version} is {'pinned: retention keeps its weights' if pinned else 'unpinned'}.")


@models_app.command("pin")
def models_pin(
    version: Annotated[int, typer.Argument(metavar="VERSION", help="The model version to keep.")],
    db: DbOption = None,
) -> None:
    """Keep VERSION's weights whatever retention says (to roll back to it later).

    Example: spamtl models pin 12
    """
    _pin(version, db, True)


@models_app.command("unpin")
def models_unpin(
    version: Annotated[int, typer.Argument(metavar="VERSION", help="The model version to release.")],
    db: DbOption = None,
) -> None:
    """Let retention drop VERSION's weights again once it is old.

    Example: spamtl models unpin 12
    """
    _pin(version, db, False)


@users_app.command("delete")
def users_delete(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user to remove.")],
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (without it: say what would be deleted).")] = False,
    db: DbOption = None,
) -> None:
    """Delete USER and everything of theirs: labels, verdicts, personal weights in every
    model version, and mail only they received or labelled.  One transaction.

    Example: spamtl users delete bob --yes
    """
    with _errors():
        from spamtl.errors import UsageError
        from spamtl.services.users import delete_user

        result = delete_user(_engine(_settings(db)), user, dry_run=not yes)
        what = (f"{result.labels} labels, {result.classifications} verdicts, personal weights in "
                f"{result.model_parts} model versions and {result.messages} messages only they had")
        if not yes:
            raise UsageError(f"this would delete user {user!r} with {what}; add --yes to do it")
        typer.echo(f"Deleted user {user!r} with {what}.")


@users_app.command("rename")
def users_rename(
    old: Annotated[str, typer.Argument(metavar="OLD", help="The current name.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="The new name.")],
    db: DbOption = None,
) -> None:
    """Rename a user; their labels and personal weights (in every model version) follow.

    Example: spamtl users rename bob robert
    """
    with _errors():
        from spamtl.services.users import rename_user

        versions = rename_user(_engine(_settings(db)), old, new)
        typer.echo(f"Renamed {old!r} to {new!r} (personal weights in {versions} model versions).")
