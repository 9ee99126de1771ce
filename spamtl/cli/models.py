"""``spamtl models``: list model versions; ``models activate``, ``pin`` and ``unpin``."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.options import DbOption, OutputFormat, engine_for, exit_on_errors, new_typer, print_json, settings_from

app = new_typer()
models_app = new_typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    output: Annotated[OutputFormat, typer.Option("--format", help="text table or JSON list.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """List model versions with status and held-out metrics; `models activate` rolls back or forward.

    Example: spamtl models --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    with exit_on_errors():
        from spamtl.services.models import list_versions

        versions = list_versions(engine_for(settings_from(db)))
        if output is OutputFormat.json:
            print_json([v.as_dict() for v in versions])
        elif not versions:
            typer.echo("No models yet; run `spamtl train`.")
        else:
            _print_table(versions)


def _print_table(versions: list) -> None:  # type: ignore[type-arg]
    typer.echo(f"{'version':>7}  {'status':<9}  {'created (UTC)':<19}  {'users':>5}  {'messages':>8}  "
               f"{'1-AUC %':>8}  note")
    for v in versions:
        err = v.metrics.get("candidate_auc_error_pct")
        err_text = f"{err:8.4f}" if isinstance(err, int | float) else f"{'-':>8}"
        typer.echo(f"{v.version:>7}  {v.status:<9}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.users:>5}  "
                   f"{v.messages:>8}  {err_text}  {v.note or ''}")


@models_app.command("activate")
def models_activate(
    version: Annotated[int, typer.Argument(metavar="VERSION", help="The model version to make active.")],
    db: DbOption = None,
) -> None:
    """Make VERSION the active model (roll back or forward).

    Example: spamtl models activate 3
    """
    with exit_on_errors():
        from spamtl.services.models import activate

        info = activate(engine_for(settings_from(db)), version)
        typer.echo(f"Model v{info.version} is now active.")


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


def _pin(version: int, db: str | None, pinned: bool) -> None:
    with exit_on_errors():
        from spamtl.services.models import pin

        info = pin(engine_for(settings_from(db)), version, pinned)
        typer.echo(f"Model v{info.version} is {'pinned: retention keeps its weights' if pinned else 'unpinned'}.")
