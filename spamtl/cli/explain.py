"""Commands that say why: ``explain``, ``history`` and ``review``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from spamtl.cli.options import (
    DbOption,
    OutputFormat,
    engine_for,
    exit_on_errors,
    new_typer,
    print_json,
    read_message,
    settings_from,
)

app = new_typer()
_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@app.command()
def explain(
    user: Annotated[str, typer.Argument(metavar="USER", help="Whose filter to explain.")],
    path: Annotated[str | None, typer.Argument(metavar="[PATH|-]", help="The message (file or - for stdin).")] = None,
    ref: Annotated[str | None, typer.Option("--id", metavar="ID_OR_MESSAGE_ID",
                                            help="A stored message: the id= of X-Spamtl-Status, a sha256 "
                                                 "prefix or a Message-ID.")] = None,
    top: Annotated[int, typer.Option("--top", "-n", min=0, max=100,
                                     help="Strongest tokens shown per part and direction.")] = 5,
    output: Annotated[OutputFormat, typer.Option("--format", help="text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Say why a message got its score for USER: the shared, group and personal parts and their strongest tokens.

    The parts add up to the score (the logit of the probability).  A token's
    contribution is its weight times its value in the message's vector.

    Example: spamtl explain alice --id 3f2c9a1b7e4d
    """
    with exit_on_errors():
        from spamtl.errors import UsageError
        from spamtl.services.explain import explain_message

        if ref is not None and path is not None:
            raise UsageError("give either a message or --id, not both")
        raw = read_message(path) if ref is None else None
        settings = settings_from(db)
        result = explain_message(engine_for(settings), settings, user=user, raw=raw, ref=ref, top=top)
        if output is OutputFormat.json:
            print_json(result.as_dict())
            return
        _print_explanation(result)


def _print_explanation(result: Any) -> None:
    by = ", your label" if result.reason == "label" else ""
    typer.echo(f"{result.user}: {result.verdict} (probability {result.probability:.4f}, score {result.logit:+.3f}; "
               f"spam cutoff {result.spam_cutoff:.4f}, ham cutoff {result.ham_cutoff:.4f} from "
               f"{result.cutoff_source}{by}), model v{result.model_version}, "
               f"id {result.short_id}")
    typer.echo(result.sentence())
    for part in result.parts:
        label = part.kind + (f" {part.name}" if part.kind == "group" else "")
        typer.echo(f"  {label:<20} {part.total:+8.3f}   (intercept {part.intercept:+.3f}, tokens {part.features:+.3f})")
        for title, evidence in (("toward spam", part.spam), ("toward ham ", part.ham)):
            if evidence:
                typer.echo(f"    {title}: " + ", ".join(f"{e.name} {e.contribution:+.3f}" for e in evidence))
    for note in result.notes:
        typer.echo(f"note: {note}")


@app.command()
def history(
    user: Annotated[str | None, typer.Argument(metavar="[USER]", help="Whose verdicts; omit with --summary "
                                               "for every user.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", formats=_DATE_FORMATS, metavar="DATE",
                                                   help="Only classifications at or after DATE (UTC).")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=0, max=10_000, help="Most recent N verdicts.")] = 20,
    summary: Annotated[bool, typer.Option("--summary", help="Only the error counts (per user and overall).")] = False,
    output: Annotated[OutputFormat, typer.Option("--format", help="text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """What the filter said about which message, and whether the user corrected it later.

    A verdict is "corrected" when the user later gave the message the other
    label (spam corrected to ham is a false positive, ham to spam a false
    negative), "confirmed" when they gave the same label.

    Example: spamtl history alice --since 2026-11-01 -n 50
    """
    with exit_on_errors():
        from spamtl.errors import UsageError
        from spamtl.services.history import history as load_history

        if user is None and not summary:
            raise UsageError("name a USER, or use --summary for every user")
        result = load_history(engine_for(settings_from(db)), user=user, since=since, limit=limit, entries=not summary)
        if output is OutputFormat.json:
            print_json(result.as_dict())
        else:
            _print_history(result, user, with_entries=not summary)


def _print_history(result: Any, user: str | None, *, with_entries: bool) -> None:
    if with_entries:
        if not result.entries:
            typer.echo(f"No verdicts logged for {user} yet.")
        else:
            typer.echo(f"{'classified (UTC)':<19}  {'id':<12}  {'verdict':<7} {'prob':>6}  {'model':>5}  "
                       f"{'outcome':<20}  subject")
        for e in result.entries:
            outcome = f"{e.outcome} ({e.label})" if e.outcome else "-"
            subject = (e.subject or "-").replace("\n", " ")[:60]
            typer.echo(f"{e.classified_at:%Y-%m-%d %H:%M:%S}  {e.id}  {e.verdict:<7} {e.probability:6.4f}  "
                       f"{'v' + str(e.model_version) if e.model_version else '-':>5}  {outcome:<20}  {subject}")
        typer.echo("")
    typer.echo(f"{'user':<14} {'verdicts':>8} {'labelled':>8} {'confirmed':>9} {'false pos':>9} "
               f"{'false neg':>9} {'unsure':>6}")
    for c in [*result.users, result.overall] if result.user is None else result.users:
        typer.echo(f"{c.user:<14} {c.classifications:>8} {c.labelled:>8} {c.confirmed:>9} "
                   f"{c.false_positives:>9} {c.false_negatives:>9} {c.unsure_labelled:>6}")


@app.command()
def review(
    user: Annotated[str, typer.Argument(metavar="USER", help="Whose mail to review.")],
    n: Annotated[int, typer.Option("-n", "--limit", min=1, max=1000, help="How many messages.")] = 10,
    output: Annotated[OutputFormat, typer.Option("--format", help="text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """List USER's unlabelled mail whose label would teach the filter most (near a cutoff, or where
    the user's own model disagrees with everyone's); label them with `spamtl feedback USER --id ID`.

    Example: spamtl review alice -n 5
    """
    with exit_on_errors():
        from spamtl.services.review import review_queue

        settings = settings_from(db)
        items = review_queue(engine_for(settings), settings, user=user, n=n)
        if output is OutputFormat.json:
            print_json([item.as_dict() for item in items])
        elif not items:
            typer.echo(f"Nothing to review for {user}: no unlabelled classified mail with its text stored.")
        else:
            _print_review(items, user)


def _print_review(items: list[Any], user: str) -> None:
    typer.echo(f"{user}'s cutoffs: spam {items[0].spam_cutoff:.4f}, ham {items[0].ham_cutoff:.4f} "
               "(spam at or above the first, ham at or below the second, unsure between)")
    typer.echo(f"{'id':<12}  {'verdict':<7} {'prob':>6}  {'why':<34}  subject")
    for item in items:
        subject = (item.subject or "-").replace("\n", " ")[:50]
        typer.echo(f"{item.id}  {item.verdict:<7} {item.probability:6.4f}  {item.why:<34}  {subject}")
    typer.echo(f"\nLabel one: spamtl feedback {user} --spam --id {items[0].id}   (or --ham)")
