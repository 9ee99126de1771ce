"""``spamtl users``: list users; ``users delete``, ``users rename`` and ``users token`` (web logins)."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.options import DbOption, OutputFormat, engine_for, exit_on_errors, new_typer, print_json, settings_from

app = new_typer()
users_app = new_typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(users_app, name="users")

NO_USERS = "No users yet; add mail with `spamtl import USER PATH --label spam|ham`."


@users_app.callback(invoke_without_command=True)
def users(
    ctx: typer.Context,
    output: Annotated[OutputFormat, typer.Option("--format", help="text table or JSON list.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """List users with their group, current ham and spam label counts, and spam cutoff with its source.

    Example: spamtl users --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    with exit_on_errors():
        from spamtl.services.reports import list_users

        settings = settings_from(db)
        rows = list_users(engine_for(settings), settings)
        if output is OutputFormat.json:
            print_json([{"user": r.user, "group": r.group, "ham": r.ham, "spam": r.spam,
                         "spam_cutoff": r.spam_cutoff, "ham_cutoff": r.ham_cutoff,
                         "cutoff_source": r.cutoff_source} for r in rows])
        elif not rows:
            typer.echo(NO_USERS)
        else:
            _print_table(rows)


def _print_table(rows: list) -> None:  # type: ignore[type-arg]
    width = max(4, *(len(r.user) for r in rows))
    gwidth = max(5, *(len(r.group or "-") for r in rows))
    typer.echo(f"{'user':<{width}}  {'group':<{gwidth}}  {'ham':>7}  {'spam':>7}  {'cutoff':>7}  source")
    for r in rows:
        typer.echo(f"{r.user:<{width}}  {r.group or '-':<{gwidth}}  {r.ham:>7}  {r.spam:>7}  "
                   f"{r.spam_cutoff:7.4f}  {r.cutoff_source}")


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
    with exit_on_errors():
        from spamtl.errors import UsageError
        from spamtl.services.users import delete_user

        result = delete_user(engine_for(settings_from(db)), user, dry_run=not yes)
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
    with exit_on_errors():
        from spamtl.services.users import rename_user

        versions = rename_user(engine_for(settings_from(db)), old, new)
        typer.echo(f"Renamed {old!r} to {new!r} (personal weights in {versions} model versions).")


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user the token logs in as (any name with --admin).")],
    admin: Annotated[bool, typer.Option("--admin", help="The token has the admin role (the admin pages).")] = False,
    revoke: Annotated[bool, typer.Option("--revoke", help="Delete every token of NAME instead.")] = False,
    db: DbOption = None,
) -> None:
    """Print a new token that logs in to `spamtl web` as NAME; only its digest is stored, so it is shown
    once.  A user's token sees that user's mail only.

    Example: spamtl users token alice
    """
    with exit_on_errors():
        from datetime import datetime

        from spamtl.services.access import create_token, revoke_tokens

        engine = engine_for(settings_from(db))
        if revoke:
            n = revoke_tokens(engine, name)
            typer.echo(f"Revoked {n} token{'s' if n != 1 else ''} of {name!r}.")
            return
        typer.echo(create_token(engine, name, admin=admin, now=datetime.now()))
