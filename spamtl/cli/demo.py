"""``spamtl demo``: the whole story on the generated demo corpus, told on stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from spamtl.cli.options import exit_on_errors, new_typer, now
from spamtl.cli.training import print_evaluation

app = new_typer()


@app.command()
def demo(
    db: Annotated[str | None, typer.Option("--db", metavar="URL", help="Database to create (default: a new "
                                           "SQLite file in a temporary folder; never your real store).")] = None,
) -> None:
    """Run the whole story on the built-in demo corpus (8 users, 3 groups) in under a minute.

    Creates a database, imports every user's labelled mail, trains, compares
    the multi-task model with single-task learning, classifies held-back mail
    and applies one user's correction.

    Example: spamtl demo
    """
    with exit_on_errors():
        import tempfile
        from pathlib import Path

        from spamtl.cli.progress import show_progress
        from spamtl.errors import redact
        from spamtl.services.demo import next_commands, run_demo

        folder = Path(tempfile.mkdtemp(prefix="spamtl-demo-"))
        url = db or f"sqlite:///{folder / 'demo.sqlite3'}"
        with show_progress("demo", lines=False) as progress:  # stdout tells the story; stage lines would repeat it
            report = run_demo(url, now=now(), progress=progress)
        typer.echo(f"Demo database: {redact(url)}")
        _print_story(report)
        typer.echo(f"\nDone in {report.seconds:.0f} s. Try next (runs as printed, no venv needed):")
        for line in next_commands(report, folder, sys.executable):
            typer.echo(f"  {line}")


def _print_story(report: Any) -> None:
    from spamtl.services.demo import summary

    typer.echo(f"Corpus: {report.corpus}")
    labels = sum(s.imported for s in report.imports)
    users = len({s.user for s in report.imports})
    typer.echo(f"\n1. Imported {labels} labelled messages for {users} users.")
    typer.echo(f"2. Trained model v{report.training.version} "
               f"(alpha={report.training.metrics['alpha']:g}, mu={report.training.metrics['mu']:g}) "
               f"in {report.training.seconds:.1f} s.")
    typer.echo("3. Multi-task learning against the single-task alternatives, on identical splits:\n")
    print_evaluation(report.evaluation)
    counts = summary(report)
    typer.echo(f"\n4. Classified {counts['messages']} held-back messages: {counts['correct']} right, "
               f"{counts['unsure']} unsure. A few:")
    shown: set[tuple[str, str]] = set()
    for user, truth, v in report.incoming:  # one ham and one spam per user
        if (user, truth) not in shown:
            shown.add((user, truth))
            typer.echo(f"   {user:<7} {v.verdict:<6} p={v.probability:.3f}  (really {truth})")
    if report.feedback is not None and report.feedback_before and report.feedback_after:
        b, a = report.feedback_before, report.feedback_after
        typer.echo(f"\n5. {report.feedback.user} says a message the filter let through is spam: "
                   f"{b.verdict} (p={b.probability:.3f}) -> {a.verdict} (p={a.probability:.3f}) after "
                   f"refitting only {report.feedback.user}'s weights.")
