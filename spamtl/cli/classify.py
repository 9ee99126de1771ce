"""``spamtl classify``: verdicts for files, stdin, or a message passing through a mail pipeline."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from spamtl.cli.options import DbOption, OutputFormat, engine_for, exit_on_errors, new_typer, now, settings_from

app = new_typer()


@app.command()
def classify(
    user: Annotated[str, typer.Argument(metavar="USER", help="Whose filter to use.")],
    paths: Annotated[list[str] | None, typer.Argument(metavar="[PATH|-]...",
                                                      help="Message files, Maildirs or mboxes; - or nothing reads one message from stdin.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="text, or JSON lines (one object per message).")] = OutputFormat.text,
    filter_mode: Annotated[bool, typer.Option("--filter", help="Read one message on stdin and write it back with "
                                              "X-Spamtl-Status (and X-Spam-Flag: YES for spam) headers.")] = False,
    report: Annotated[bool, typer.Option("--report", help="With --filter: also add a one-line X-Spamtl-Report "
                                         "header saying why (setting filter_report).")] = False,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit with the verdict, as bogofilter does: 0 spam, "
                                            "1 ham (or skipped), 2 unsure, 3 error. One message only.")] = False,
    db: DbOption = None,
) -> None:
    """Classify mail for USER: spam, ham or unsure, with the spam probability and both cutoffs.

    spam at or above the spam cutoff, ham at or below the ham cutoff, unsure
    between.  Input that is empty or not mail (no header fields) is skipped:
    never scored, nor logged.

    In --filter mode the message is always written back, even when something
    fails (then with "X-Spamtl-Status: error"); exit code 0 means classified
    (or passed through unscanned, "X-Spamtl-Status: skipped", because it is
    larger than the size limit, empty or not mail), 1 an expected error (e.g.
    no model yet), 70 an internal error.  The id= in the header works with
    `feedback --id`.

    With --exit-code the exit code is the verdict instead (also with --filter):
    0 spam, 1 ham, 2 unsure, 1 skipped (delivered as if unfiltered), 3 any
    error (also a wrong command line).  It takes exactly one message (stdin,
    a file, or a folder or mbox holding one); several are refused with 3.

    Example: spamtl classify --filter -- alice < message.eml > tagged.eml
             spamtl classify --exit-code alice message.eml; echo $?
    """
    from spamtl.services.filtering import EXIT_CODE_ERROR, classify_input, exit_code_of, filter_stdin, to_stderr

    if filter_mode:  # also run without this parser for a piped line (spamtl.cli.entry): the same call
        raise typer.Exit(filter_stdin(lambda: settings_from(db), user, paths=paths or [], report=report,
                                      verdict_codes=exit_code, source=sys.stdin.buffer, sink=sys.stdout.buffer,
                                      now=now(), warn=to_stderr))
    code = EXIT_CODE_ERROR
    with exit_on_errors(EXIT_CODE_ERROR if exit_code else None):
        settings = settings_from(db)
        for item in classify_input(engine_for(settings), settings, user, paths or [], stdin=sys.stdin.buffer,
                                   is_one=exit_code, now=now(), warn=_warn):
            code = exit_code_of(item)
            _print_item(item, output)
    if exit_code:
        raise typer.Exit(code)


def _warn(line: str) -> None:
    typer.echo(line, err=True)


def _print_item(item: Any, output: OutputFormat) -> None:
    """One line per message: a verdict or a skip on stdout, an unreadable file on stderr."""
    from spamtl.mail.sources import Unreadable
    from spamtl.services.classify import Skipped

    if isinstance(item, Unreadable):
        typer.echo(f"unreadable: {item.origin}: {item.reason}", err=True)
    elif output is OutputFormat.json:
        typer.echo(json.dumps(item.as_dict()))
    elif isinstance(item, Skipped):
        typer.echo(f"{item.origin}: skipped ({item.reason})")
    else:
        mid = f" <{item.message_id}>" if item.message_id else ""
        why = ", your label" if item.reason == "label" else ""
        typer.echo(f"{item.origin}{mid}: {item.verdict} (probability {item.probability:.4f}, "
                   f"spam cutoff {item.spam_cutoff:.4f}, ham cutoff {item.ham_cutoff:.4f}{why}, "
                   f"model v{item.model_version}, id {item.short_id})")
    if not isinstance(item, Unreadable | Skipped):
        for warning in item.warnings:
            typer.echo(f"warning: {item.origin}: {warning} (scored from the text recovered)", err=True)
