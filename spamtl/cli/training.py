"""``spamtl train`` and ``spamtl evaluate`` (cross-validation, or a replayed season with ``--replay``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spamtl.cli.options import (
    DbOption,
    OutputFormat,
    TableFormat,
    engine_for,
    exit_on_errors,
    fmt,
    new_typer,
    now,
    print_json,
    settings_from,
)

app = new_typer()


@app.command()
def train(
    output: Annotated[OutputFormat, typer.Option("--format", help="Result as text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Retrain on all current labels (the nightly job).

    Fits a candidate on every label (warm-started from the active model),
    compares it with the active model on mail neither was fitted on, sets each
    user's spam cutoff, and promotes the candidate only if it is not worse;
    otherwise exits 3 and the active model stays.  A crash or kill leaves the
    active model untouched.

    Off a terminal, one line per stage (with its duration) goes to stderr.

    Example: spamtl train --format json   (cron: 15 3 * * *  spamtl train --format json >> /var/log/spamtl-train.log 2>&1)
    """
    with exit_on_errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services.training import EXIT_REFUSED
        from spamtl.services.training import train as run_training

        settings = settings_from(db)
        with show_progress("train") as progress:
            result = run_training(engine_for(settings), settings, now=now(), progress=progress)
        if output is OutputFormat.json:
            print_json(result.as_dict())
        else:
            verdict = "promoted to active" if result.promoted else "NOT promoted"
            typer.echo(f"Model v{result.version} {verdict}: {result.reason}")
            auto = int(result.metrics.get("uncorrected_verdicts", 0))
            learned = f" (of them {auto} uncorrected verdicts)" if auto else ""
            typer.echo(f"{result.users} users, {result.messages} labelled messages{learned}, {result.seconds:.1f} s")
        if not result.promoted:
            raise typer.Exit(EXIT_REFUSED)


@app.command()
def evaluate(
    users_: Annotated[list[str] | None, typer.Option("--users", metavar="USER",
                                                     help="Report these users (repeatable); all are used for training.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="K for task-stratified K-fold cross-validation.")] = 3,
    chronological: Annotated[bool, typer.Option("--chronological", help="Train on each user's older mail, "
                                                "test on the newest 30 % instead of K-fold.")] = False,
    output: Annotated[TableFormat, typer.Option("--format", help="table, json or csv.")] = TableFormat.table,
    plot: Annotated[Path | None, typer.Option("--plot", metavar="FILE.png",
                                              help="Draw per-user ROC curves (needs matplotlib).")] = None,
    replay: Annotated[bool, typer.Option("--replay", help="Backtest a season of use instead: replay the "
                                         "labelled mail day by day with corrections and nightly training.")] = False,
    days: Annotated[int, typer.Option("--days", help="--replay: days to split each user's mail into.")] = 20,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="--replay: first labels per user to start from.")] = 20,
    label_all: Annotated[bool, typer.Option("--label-all", help="--replay: the user labels every message, "
                                            "not only the wrong or unsure ones.")] = False,
    systems: Annotated[list[str] | None, typer.Option("--system", metavar="NAME", help="--replay: mtl, pooled "
                                                      "or per_user (repeatable; default all three).")] = None,
    db: DbOption = None,
) -> None:
    """Compare the multi-task model with one pooled model and per-user models, per user.

    All three are trained and tested on identical splits of the labelled mail;
    the active model is not touched.  Lower 1-AUC % is better.  With --replay,
    the labelled mail is replayed in delivery order in a temporary copy of the
    store: classified day by day, every wrong or unsure verdict corrected,
    retrained every night.  Its progress goes to stderr: on a terminal a bar
    per system and day, otherwise one line per system and day.

    Example: spamtl evaluate --chronological --format json
    Example: spamtl evaluate --replay --days 20 --bootstrap 20
    """
    with exit_on_errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services import plot as plotting

        if replay:
            return _replay(users_, days, bootstrap, label_all, systems, output, db)
        if plot is not None:
            plotting.require_matplotlib()
        from spamtl.services.evaluate import evaluate as run_evaluation

        settings = settings_from(db)
        with show_progress("evaluate") as progress:
            result = run_evaluation(engine_for(settings), settings, users=users_, folds=folds,
                                    chronological=chronological, progress=progress, with_curves=plot is not None)
        if plot is not None:
            plotting.plot_roc_curves(result.curves, plot, result.users, settings.spam_cutoff)
            if output is not TableFormat.table:  # keep stdout parseable: the line goes to stderr
                typer.echo(f"ROC curves written to {plot.resolve()}", err=True)
        _print_evaluation_as(result, output)
        if plot is not None and output is TableFormat.table:
            typer.echo(f"\nROC curves written to {plot.resolve()}")


def _print_evaluation_as(result: Any, output: TableFormat) -> None:
    from spamtl.services.evaluate import SYSTEMS

    if output is TableFormat.json:
        print_json(result.as_dict())
    elif output is TableFormat.csv:
        typer.echo("user,system,metric,value")
        for user, entry in [*result.users.items(), ("MACRO", result.macro)]:
            for system in SYSTEMS:
                for metric, value in entry[system].items():
                    typer.echo(f"{user},{system},{metric},{'' if value != value else value}")
    else:
        print_evaluation(result)


def print_evaluation(result: Any) -> None:
    """The evaluation table: 1-AUC % per user and system, the best marked with *."""
    from spamtl.services.evaluate import SYSTEMS

    typer.echo(f"1-AUC % per user ({result.splits}); * marks the best system in each row")
    typer.echo(f"{'user':<14} {'train':>6} {'test':>6}  {'mtl':>9} {'pooled':>9} {'per_user':>9}   "
               f"{'mtl ham FPR':>11} {'mtl recall':>10}")
    rows = [(u, e, e["n_train"], e["n_test"]) for u, e in result.users.items()]
    rows.append(("macro", result.macro, "", ""))
    for user, entry, n_train, n_test in rows:
        errs = {s: entry[s]["auc_error_pct"] for s in SYSTEMS}
        finite = [v for v in errs.values() if v == v]
        best = min(finite) if finite else None
        cells = [f"{fmt(errs[s])}{'*' if best is not None and errs[s] == best else ' '}" for s in SYSTEMS]
        typer.echo(f"{user:<14} {n_train!s:>6} {n_test!s:>6}  {cells[0]:>9} {cells[1]:>9} {cells[2]:>9}   "
                   f"{fmt(entry['mtl']['ham_fpr']):>11} {fmt(entry['mtl']['recall']):>10}")
        if isinstance(entry.get("note"), str):
            typer.echo(f"  note: {entry['note']}")


def _replay(users: list[str] | None, days: int, bootstrap: int, label_all: bool, systems: list[str] | None,
            output: TableFormat, db: str | None) -> None:
    """``evaluate --replay``: options -> one replay -> table, JSON or CSV."""
    from spamtl.cli.progress import show_progress
    from spamtl.services.replay import SYSTEMS, replay

    settings = settings_from(db)
    with show_progress("replay") as progress:
        result = replay(engine_for(settings), settings, now=now(), users=users, days=days, bootstrap=bootstrap,
                        label_all=label_all, systems=systems or SYSTEMS, progress=progress)
    if output is TableFormat.json:
        print_json(result.as_dict())
    elif output is TableFormat.csv:
        _print_replay_csv(result)
    else:
        _print_replay_table(result)


def _print_replay_csv(result: Any) -> None:
    typer.echo("user,system,part,metric,value")
    for user, entry in [*result.users.items(), ("MACRO", result.macro)]:
        for system in result.protocol["systems"]:
            for part, metrics in (("all", entry[system]), ("first_third", entry[system]["first_third"]),
                                  ("last_third", entry[system]["last_third"])):
                for metric, value in metrics.items():
                    if not isinstance(value, dict):
                        typer.echo(f"{user},{system},{part},{metric},{'' if value != value else value}")


def _pct(value: Any) -> str:
    return fmt(None if value is None else 100.0 * value, 2)


def _print_replay_table(result: Any) -> None:
    p = result.protocol
    typer.echo(f"Replay: {p['days']} days after the first {p['bootstrap']} labels per user, "
               f"{p['feedback']} feedback; lower is better everywhere")
    typer.echo(f"{'user':<14} {'system':<9} {'msgs':>6}  {'ham FPR%':>8} {'miss%':>7} {'unsure%':>7} "
               f"{'corr/1k':>8} {'1-AUC%':>7}  {'corr/1k first->last third':>26}")
    rows = [(u, e, e["messages"]) for u, e in result.users.items()]
    rows.append(("macro", result.macro, None))
    for user, entry, n in rows:
        for system in p["systems"]:
            m = entry[system]
            count = m["messages"] if n is None else n
            trend = f"{fmt(m['first_third']['corrections_per_1000'], 1)} -> " \
                    f"{fmt(m['last_third']['corrections_per_1000'], 1)}"
            typer.echo(f"{user:<14} {system:<9} {count:>6}  {_pct(m['ham_fpr']):>8} {_pct(m['spam_miss']):>7} "
                       f"{_pct(m['unsure_rate']):>7} {fmt(m['corrections_per_1000'], 1):>8} "
                       f"{fmt(m['auc_error_pct'], 3):>7}  {trend:>26}")
    for system in p["systems"]:
        nights = result.nights[system]
        refused = [n for n in nights if not n["promoted"]]
        typer.echo(f"{system}: {len(nights) - len(refused)} nights promoted, {len(refused)} refused"
                   + (f" (e.g. night {refused[0]['night']}: {refused[0]['reason']})" if refused else ""))
    typer.echo(f"ordering: {p['note']}")
    by_position = [u for u, how in p["orderings"].items() if how != "date"]
    if by_position:
        typer.echo(f"  merged by relative position: {', '.join(by_position)}")
        for user in by_position:
            typer.echo(f"    {user}: {result.users[user]['ordering_reason']}")
