"""``spamtl import`` and ``spamtl feedback``: labelled mail in, from folders or one message at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spamtl.cli.options import (
    DbOption,
    LabelChoice,
    OutputFormat,
    engine_for,
    exit_on_errors,
    new_typer,
    now,
    print_json,
    read_message,
    settings_from,
)

app = new_typer()

MAX_UNREADABLE_SHOWN = 50


@app.command("import")
def import_(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user (mailbox owner) the labels belong to.")],
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help=".eml files, Maildir folders, directories, mbox or mbox.gz files.")],
    label: Annotated[LabelChoice, typer.Option("--label", "-l", help="What these messages are for this user.")],
    group: Annotated[str | None, typer.Option(help="Put a new user in this group (an organisation, a domain).")] = None,
    move_group: Annotated[bool, typer.Option("--move-group", help="Move an existing user to --group.")] = False,
    output: Annotated[OutputFormat, typer.Option("--format", help="Summary as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Import labelled mail for a user.

    Importing the same mail again adds nothing; importing it with the other
    label records the new label, which wins.  Unreadable files are reported
    and skipped.

    Example: spamtl import alice ~/Maildir/.Junk --label spam
    """
    with exit_on_errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services.importing import ImportInterrupted, import_mail

        settings = settings_from(db)
        try:
            with show_progress("import") as progress:
                summary = import_mail(engine_for(settings), user=user, paths=[str(p) for p in paths],
                                      label=label.value, group=group, now=now(), chunk_size=settings.chunk_size,
                                      progress=progress, move_group=move_group)
        except ImportInterrupted as exc:
            _print_import(exc.summary, output)
            raise
        _print_import(summary, output)


def _print_import(summary: Any, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        print_json(summary.as_dict())
        return
    typer.echo(f"{summary.user} ({summary.label}): {summary.imported} imported, {summary.known} already known, "
               f"{summary.relabelled} relabelled, {len(summary.unreadable)} unreadable")
    _print_unreadable(summary.unreadable)
    if len(summary.unreadable) > MAX_UNREADABLE_SHOWN:
        typer.echo(f"  ... and {len(summary.unreadable) - MAX_UNREADABLE_SHOWN} more unreadable", err=True)


def _print_unreadable(unreadable: list[tuple[str, str]]) -> None:
    for path, reason in unreadable[:MAX_UNREADABLE_SHOWN]:
        typer.echo(f"  unreadable: {path}: {reason}", err=True)


@app.command()
def feedback(
    user: Annotated[str, typer.Argument(metavar="USER", help="Who is correcting the filter.")],
    paths: Annotated[list[str] | None, typer.Argument(
        metavar="[PATH|-]...", help="The message (file, or - / nothing for stdin), or many: files, directories, "
                                    "Maildirs, mbox files.")] = None,
    spam: Annotated[bool, typer.Option("--spam", help="The message is spam.")] = False,
    ham: Annotated[bool, typer.Option("--ham", help="The message is not spam.")] = False,
    ref: Annotated[str | None, typer.Option("--id", metavar="SHA256_OR_MESSAGE_ID",
                                            help="Refer to a stored message instead of passing it.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Result as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Tell the filter mail was spam or ham for USER; their model is refitted at once.

    Only USER's personal weights change; every other user's scores stay the
    same.  Give one message, or whole folders (a Junk Maildir, an mbox): the
    labels are stored in chunks and USER is refitted once at the end.

    Example: spamtl feedback alice --spam < missed-spam.eml
             spamtl feedback alice --spam ~/Maildir/.Junk/cur ~/Maildir/.Junk/new
    """
    with exit_on_errors():
        from spamtl.errors import UsageError
        from spamtl.mail.sources import is_single_message
        from spamtl.services.feedback import record_feedback, record_feedback_batch

        if spam == ham:
            raise UsageError("say either --spam or --ham")
        files = [p for p in paths or [] if p != "-"]
        if ref is not None and files:
            raise UsageError("give either a message or --id, not both")
        label = "spam" if spam else "ham"
        settings = settings_from(db)
        if ref is None and files and not (len(files) == 1 and is_single_message(files[0])):
            from spamtl.cli.progress import show_progress

            with show_progress("feedback", lines=False) as progress:  # a bar on a terminal, else quiet
                batch = record_feedback_batch(engine_for(settings), settings, user=user, label=label, paths=files,
                                              now=now(), progress=progress)
            _print_feedback_batch(batch, output)
            return
        raw = read_message(files[0] if files else None) if ref is None else None
        result = record_feedback(engine_for(settings), settings, user=user, label=label, raw=raw, ref=ref, now=now())
        _print_feedback(result, user, output)


def _print_feedback(result: Any, user: str, output: OutputFormat) -> None:
    if result.user_created:  # on purpose (a new mailbox), or a typo: either way, say so
        typer.echo(f"note: new user {user!r} registered by this label (see spamtl users)", err=True)
    if output is OutputFormat.json:
        print_json(result.as_dict())
        return
    was = f" (was {result.previous_label})" if result.previous_label else ""
    typer.echo(f"Recorded {result.label}{was} for {user}: message {result.sha256[:16]}...")
    if result.body_missing:
        typer.echo("The message body is no longer stored; pass the message itself to learn from it.")
    elif result.model_version is None:
        typer.echo("No model yet: the label will be used by the next `spamtl train`.")
    else:
        typer.echo(f"Refitted {user}'s personal weights in model v{result.model_version} on "
                   f"{result.user_labels} labels: spam probability {result.probability_before:.4f} -> "
                   f"{result.probability_after:.4f}")


def _print_feedback_batch(batch: Any, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        print_json(batch.as_dict())
        return
    typer.echo(f"Recorded {batch.label} for {batch.user}: {batch.messages} messages ({batch.new} new, "
               f"{batch.relabelled} relabelled, {batch.unchanged} already {batch.label}), "
               f"{len(batch.unreadable)} unreadable")
    _print_unreadable(batch.unreadable)
    if batch.model_version is not None and (batch.new or batch.relabelled):
        typer.echo(f"Refitted {batch.user}'s personal weights in model v{batch.model_version} on "
                   f"{batch.user_labels} labels.")
    elif batch.new or batch.relabelled:
        typer.echo("No model yet: the labels will be used by the next `spamtl train`.")
