"""`spamtl cutoffs`: each user's spam/ham cutoffs and where they come from; per-user overrides."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.options import DbOption, OutputFormat, engine_for, exit_on_errors, new_typer, print_json, settings_from
from spamtl.cli.users import NO_USERS

app = new_typer()
cutoffs_app = new_typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(cutoffs_app, name="cutoffs")


def _show(rows: list, output: OutputFormat) -> None:  # type: ignore[type-arg]
    if output is OutputFormat.json:
        print_json([r.as_dict() for r in rows])
        return
    if not rows:
        typer.echo(NO_USERS)
        return
    width = max(4, *(len(r.user) for r in rows))
    typer.echo(f"{'user':<{width}}  {'spam':>8}  {'ham':>8}  source")
    for r in rows:
        typer.echo(f"{r.user:<{width}}  {r.spam_cutoff:8.4f}  {r.ham_cutoff:8.4f}  {r.source}")


@cutoffs_app.callback(invoke_without_command=True)
def cutoffs(
    ctx: typer.Context,
    output: Annotated[OutputFormat, typer.Option("--format", help="text table or JSON list.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """List each user's effective spam and ham cutoffs and where they come from.

    Precedence: `spamtl cutoffs set` (administrator) > configuration
    (user_cutoffs) > the active model's training (target ham false-positive
    rate) > the global spam_cutoff/ham_cutoff.

    Example: spamtl cutoffs --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    with exit_on_errors():
        from spamtl.services.cutoffs import list_cutoffs

        settings = settings_from(db)
        _show(list_cutoffs(engine_for(settings), settings), output)


@cutoffs_app.command("set")
def cutoffs_set(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user whose cutoffs to set.")],
    spam: Annotated[float, typer.Option("--spam", help="Spam at or above this probability.")],
    ham: Annotated[float | None, typer.Option("--ham", help="Ham at or below this probability "
                                              "(default: the global ham_cutoff, or --spam if lower).")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Result as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Override USER's cutoffs (wins over configuration and training until `cutoffs unset`).

    Example: spamtl cutoffs set alice --spam 0.98 --ham 0.3
    """
    with exit_on_errors():
        from spamtl.services.cutoffs import set_cutoffs

        settings = settings_from(db)
        _show([set_cutoffs(engine_for(settings), settings, user=user, spam=spam, ham=ham)], output)


@cutoffs_app.command("unset")
def cutoffs_unset(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user whose override to drop.")],
    output: Annotated[OutputFormat, typer.Option("--format", help="Result as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Drop USER's override: configuration, training or the global cutoffs apply again.

    Example: spamtl cutoffs unset alice
    """
    with exit_on_errors():
        from spamtl.services.cutoffs import unset_cutoffs

        settings = settings_from(db)
        _show([unset_cutoffs(engine_for(settings), settings, user=user)], output)
