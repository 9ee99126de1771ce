"""``spamtl init`` and ``spamtl prune``: create or upgrade the store, apply retention."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.options import (
    DbOption,
    OutputFormat,
    engine_for,
    exit_on_errors,
    new_typer,
    now,
    print_json,
    settings_from,
)

app = new_typer()


@app.command()
def init(
    db: DbOption = None,
    group: Annotated[str | None, typer.Option(
        "--group", metavar="GROUP", help="Share the SQLite file with this group (mode 0660) instead of keeping it "
                                         "to its owner (0600); also applies to an existing file.")] = None,
) -> None:
    """Create the database, or upgrade it to the current schema.

    A new SQLite file is readable by its owner only (mode 0600, whatever the
    umask); an existing one that every account may read gets a warning.

    Example: spamtl init --db sqlite:////var/lib/spamtl/spamtl.sqlite3
             spamtl init --group spamtl   (shared with the group's accounts)
    """
    with exit_on_errors():
        from spamtl.errors import redact
        from spamtl.store.engine import make_engine, permission_warnings, upgrade

        settings = settings_from(db)
        engine = make_engine(settings.database_url, create_dir=True, group=group)
        for warning in permission_warnings(settings.database_url):
            typer.echo(f"warning: {warning}", err=True)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        typer.echo(f"Database ready: {redact(settings.database_url)}")


@app.command()
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
    with exit_on_errors():
        from spamtl.services.retention import prune as run_prune

        settings = settings_from(db)
        result = run_prune(engine_for(settings), settings, now=now(), dry_run=dry_run)
        if output is OutputFormat.json:
            print_json(result.as_dict())
            return
        would = "Would drop" if dry_run else "Dropped"
        stripped = ", ".join(f"v{v}" for v in result.versions_stripped or []) or "none"
        typer.echo(f"{would} {result.bodies_dropped} message bodies, {result.classifications_deleted} verdicts, "
                   f"{result.messages_deleted} messages; weights of model versions: {stripped}")
