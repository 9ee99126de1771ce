"""The ``spamtl`` command line: options -> Settings -> one service call -> print.

Expected failures (``SpamtlError``) become one ``Error: ...`` line on stderr
and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from spamtl.config import ENV_DATABASE_URL, Settings
from spamtl.errors import SpamtlError, redact

app = typer.Typer(
    name="spamtl",
    help="A per-user spam filter that learns from every user's mail (multi-task learning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # message bodies are private
    rich_markup_mode=None,
)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar=ENV_DATABASE_URL, show_envvar=True, metavar="URL",
                 help="SQLAlchemy database URL. Default: sqlite in $XDG_DATA_HOME/spamtl/."),
]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class TableFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class LabelChoice(str, Enum):
    spam = "spam"
    ham = "ham"


_CONFIG_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("spamtl_config", default=None)
"""The global --config option of this invocation (read by _settings)."""


def _version_callback(value: bool) -> None:
    if value:
        from spamtl import __version__

        typer.echo(f"spamtl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    config: Annotated[str | None, typer.Option("--config", metavar="PATH",
                                               help="Configuration file (TOML); default: $SPAMTL_CONFIG, else "
                                                    "~/.config/spamtl/config.toml and /etc/spamtl/config.toml.")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version_callback,
                                          help="Show the version and exit.")] = False,
) -> None:
    """A per-user spam filter that learns from every user's mail (multi-task learning)."""
    _CONFIG_PATH.set(config)  # set on every invocation, so one run's --config never leaks into the next


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextlib.contextmanager
def _errors(exit_code: int | None = None) -> Iterator[None]:
    """The one place where expected errors become a line on stderr and an exit code.

    With ``exit_code`` (``classify --exit-code``) every failure exits with it, a bug too (its
    traceback still printed): a script reading verdicts from exit codes must never read an error as one.
    """
    try:
        yield
    except SpamtlError as exc:
        # One line, and never a password, whatever the message quotes.
        typer.echo(f"Error: {' '.join(redact(str(exc)).split())}", err=True)
        raise typer.Exit(exc.exit_code if exit_code is None else exit_code) from None
    except Exception as exc:
        problem = _database_problem(exc)
        if problem is None:
            if exit_code is None:
                raise  # a bug: keep the traceback
            import traceback

            traceback.print_exc()
            raise typer.Exit(exit_code) from None
        typer.echo(f"Error: {problem}", err=True)
        raise typer.Exit(problem.exit_code if exit_code is None else exit_code) from None


def _database_problem(exc: BaseException) -> SpamtlError | None:
    """A driver error that escaped the services (a damaged file, a full disk) as a one-line error."""
    import sqlite3

    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg"):
        from spamtl.store.lite import translate

        return translate(exc)
    return None


def _loaded_settings(db: str | None, options: dict[str, tuple[str, Any]] | None = None) -> Any:
    """Settings from every source (option > environment > config files > default) and their sources.

    ``options`` maps a Settings field to (the option's spelling, its value or None when not given).
    """
    from spamtl.settings_file import load_settings

    config = _CONFIG_PATH.get()
    if db is not None and db == os.environ.get(ENV_DATABASE_URL):
        db = None  # Typer filled --db from the environment: say so in `spamtl config`
    given = {"database_url": ("--db", db), **(options or {})}
    return load_settings({name: value for name, (_, value) in given.items()}, config=config,
                         option_names={name: spelling for name, (spelling, _) in given.items()})


def _settings(db: str | None, options: dict[str, tuple[str, Any]] | None = None) -> Settings:
    return _loaded_settings(db, options).settings  # type: ignore[no-any-return]


def _engine(settings: Settings, *, create: bool = False) -> Any:
    from spamtl.store.engine import make_engine

    return make_engine(settings.database_url, create_dir=create)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


# ---------------------------------------------------------------- commands
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
    with _errors():
        from spamtl.store.engine import display_url, make_engine, permission_warnings, upgrade

        settings = _settings(db)
        engine = make_engine(settings.database_url, create_dir=True, group=group)
        for warning in permission_warnings(settings.database_url):
            typer.echo(f"warning: {warning}", err=True)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        typer.echo(f"Database ready: {display_url(settings.database_url)}")


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
    with _errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services.importing import ImportInterrupted, import_mail

        settings = _settings(db)
        try:
            with show_progress("import") as progress:
                summary = import_mail(_engine(settings), user=user, paths=[str(p) for p in paths],
                                      label=label.value, group=group, now=_now(), chunk_size=settings.chunk_size,
                                      progress=progress, move_group=move_group)
        except ImportInterrupted as exc:
            _print_import(exc.summary, output)
            raise
        _print_import(summary, output)


def _print_import(summary: Any, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        _print_json(summary.as_dict())
        return
    typer.echo(f"{summary.user} ({summary.label}): {summary.imported} imported, {summary.known} already known, "
               f"{summary.relabelled} relabelled, {len(summary.unreadable)} unreadable")
    for path, reason in summary.unreadable[:50]:
        typer.echo(f"  unreadable: {path}: {reason}", err=True)
    if len(summary.unreadable) > 50:
        typer.echo(f"  ... and {len(summary.unreadable) - 50} more unreadable", err=True)


users_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, rich_markup_mode=None)
app.add_typer(users_app, name="users")


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
    with _errors():
        from spamtl.services.reports import list_users

        settings = _settings(db)
        rows = list_users(_engine(settings), settings)
        if output is OutputFormat.json:
            _print_json([{"user": r.user, "group": r.group, "ham": r.ham, "spam": r.spam,
                          "spam_cutoff": r.spam_cutoff, "ham_cutoff": r.ham_cutoff,
                          "cutoff_source": r.cutoff_source} for r in rows])
            return
        if not rows:
            typer.echo("No users yet; add mail with `spamtl import USER PATH --label spam|ham`.")
            return
        width = max(4, *(len(r.user) for r in rows))
        gwidth = max(5, *(len(r.group or "-") for r in rows))
        typer.echo(f"{'user':<{width}}  {'group':<{gwidth}}  {'ham':>7}  {'spam':>7}  {'cutoff':>7}  source")
        for r in rows:
            typer.echo(f"{r.user:<{width}}  {r.group or '-':<{gwidth}}  {r.ham:>7}  {r.spam:>7}  "
                       f"{r.spam_cutoff:7.4f}  {r.cutoff_source}")


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
    with _errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services.training import train as run_training

        settings = _settings(db)
        with show_progress("train") as progress:
            result = run_training(_engine(settings), settings, now=_now(), progress=progress)
        if output is OutputFormat.json:
            _print_json(result.as_dict())
        else:
            verdict = "promoted to active" if result.promoted else "NOT promoted"
            typer.echo(f"Model v{result.version} {verdict}: {result.reason}")
            auto = int(result.metrics.get("uncorrected_verdicts", 0))
            learned = f" (of them {auto} uncorrected verdicts)" if auto else ""
            typer.echo(f"{result.users} users, {result.messages} labelled messages{learned}, {result.seconds:.1f} s")
        if not result.promoted:
            from spamtl.services.training import EXIT_REFUSED

            raise typer.Exit(EXIT_REFUSED)


models_app = typer.Typer(no_args_is_help=False,
                         invoke_without_command=True, rich_markup_mode=None)
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
    with _errors():
        from spamtl.services.models import list_versions

        versions = list_versions(_engine(_settings(db)))
        if output is OutputFormat.json:
            _print_json([v.as_dict() for v in versions])
            return
        if not versions:
            typer.echo("No models yet; run `spamtl train`.")
            return
        typer.echo(f"{'version':>7}  {'status':<9}  {'created (UTC)':<19}  {'users':>5}  {'messages':>8}  "
                   f"{'1-AUC %':>8}  note")
        for v in versions:
            err = v.metrics.get("candidate_auc_error_pct")
            err_text = f"{err:8.4f}" if isinstance(err, (int, float)) else f"{'-':>8}"
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
    with _errors():
        from spamtl.services.models import activate

        info = activate(_engine(_settings(db)), version)
        typer.echo(f"Model v{info.version} is now active.")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


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
    retrained every night.

    Example: spamtl evaluate --chronological --format json
    Example: spamtl evaluate --replay --days 20 --bootstrap 20
    """
    if replay:
        from spamtl.cli.replay import run_replay

        return run_replay(users_, days, bootstrap, label_all, systems, output, db)
    with _errors():
        from spamtl.services.evaluate import SYSTEMS
        from spamtl.services.evaluate import evaluate as run_evaluation

        if plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                from spamtl.errors import OptionalDependencyError

                raise OptionalDependencyError("--plot needs matplotlib; install it with "
                                              "`pip install 'spamtl[plot]'`") from None
        from spamtl.cli.progress import show_progress

        settings = _settings(db)
        with show_progress("evaluate") as progress:
            result = run_evaluation(_engine(settings), settings, users=users_, folds=folds,
                                    chronological=chronological, progress=progress, with_curves=plot is not None)
        if plot is not None:
            _plot_curves(result.curves, plot, result.users, settings.spam_cutoff)
            if output is not TableFormat.table:  # keep stdout parseable: the line goes to stderr
                typer.echo(f"ROC curves written to {plot.resolve()}", err=True)
        if output is TableFormat.json:
            _print_json(result.as_dict())
            return
        if output is TableFormat.csv:
            typer.echo("user,system,metric,value")
            for user, entry in [*result.users.items(), ("MACRO", result.macro)]:
                for system in SYSTEMS:
                    for metric, value in entry[system].items():
                        typer.echo(f"{user},{system},{metric},{'' if value != value else value}")
            return
        _print_evaluation(result)
        if plot is not None:
            typer.echo(f"\nROC curves written to {plot.resolve()}")


def _print_evaluation(result: Any) -> None:
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
        cells = [f"{_fmt(errs[s])}{'*' if best is not None and errs[s] == best else ' '}" for s in SYSTEMS]
        typer.echo(f"{user:<14} {n_train!s:>6} {n_test!s:>6}  {cells[0]:>9} {cells[1]:>9} {cells[2]:>9}   "
                   f"{_fmt(entry['mtl']['ham_fpr']):>11} {_fmt(entry['mtl']['recall']):>10}")
        if isinstance(entry.get("note"), str):
            typer.echo(f"  note: {entry['note']}")


def _plot_curves(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path,
                 metrics: dict[str, Any] | None = None, spam_cutoff: float = 0.9) -> dict[str, list[str]]:
    """Per-user ROC curves; the legend gives each curve's AUC, a dot marks the spam cutoff's operating point.

    Returns each user's legend entries (what a reader of the figure sees).
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metrics or {}
    with warnings.catch_warnings():
        # symlog axes and tight_layout warn about cosmetic details; they are not the user's business
        warnings.simplefilter("ignore")
        return _draw_curves(plt, curves, path, metrics, spam_cutoff)


def _draw_curves(plt: Any, curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: Path,
                 metrics: dict[str, Any], spam_cutoff: float) -> dict[str, list[str]]:

    n = max(1, len(curves))
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (user, systems) in zip(axes.ravel(), sorted(curves.items())):
        # The multi-task model last and thicker, so it stays visible where curves coincide.
        for system in sorted(systems, key=lambda name: name == "mtl"):
            fpr, tpr = systems[system]
            entry = metrics.get(user, {}).get(system, {})
            auc = entry.get("roc_auc")
            label = f"{system} (AUC {auc:.4f})" if isinstance(auc, float) and auc == auc else system
            (line,) = ax.plot(fpr, tpr, label=label, linewidth=2.6 if system == "mtl" else 1.4,
                              linestyle="-" if system == "mtl" else "--")
            x, y = entry.get("ham_fpr"), entry.get("recall")
            if isinstance(x, float) and isinstance(y, float) and x == x and y == y:
                ax.plot([x], [y], marker="o", markersize=6, color=line.get_color(), linestyle="none",
                        label=f"cutoff {spam_cutoff:g}" if system == "mtl" else None)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_title(user)
        ax.set_xlabel("ham false-positive rate")
        ax.set_ylabel("spam caught")
        ax.legend(loc="lower right", fontsize="small")
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    drawn = {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in axes.ravel() if ax.get_title()}
    plt.close(fig)
    return drawn


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
    with _errors():
        import tempfile

        from spamtl.services.demo import held_back_message, run_demo, summary

        folder = Path(tempfile.mkdtemp(prefix="spamtl-demo-"))
        url = db or f"sqlite:///{folder / 'demo.sqlite3'}"
        from spamtl.cli.progress import show_progress

        with show_progress("demo", lines=False) as progress:  # stdout tells the story; stage lines would repeat it
            report = run_demo(url, now=_now(), progress=progress)
        from spamtl.store.engine import display_url

        typer.echo(f"Demo database: {display_url(url)}")
        typer.echo(f"Corpus: {report.corpus}")
        labels = sum(s.imported for s in report.imports)
        users = len({s.user for s in report.imports})
        typer.echo(f"\n1. Imported {labels} labelled messages for {users} users.")
        assert report.training is not None and report.evaluation is not None
        typer.echo(f"2. Trained model v{report.training.version} "
                   f"(alpha={report.training.metrics['alpha']:g}, mu={report.training.metrics['mu']:g}) "
                   f"in {report.training.seconds:.1f} s.")
        typer.echo("3. Multi-task learning against the single-task alternatives, on identical splits:\n")
        _print_evaluation(report.evaluation)
        counts = summary(report)
        typer.echo(f"\n4. Classified {counts['messages']} held-back messages: {counts['correct']} right, "
                   f"{counts['unsure']} unsure. A few:")
        shown: set[tuple[str, str]] = set()
        for user, truth, v in report.incoming:  # one ham and one spam per user
            if (user, truth) in shown:
                continue
            shown.add((user, truth))
            typer.echo(f"   {user:<7} {v.verdict:<6} p={v.probability:.3f}  (really {truth})")
        if report.feedback is not None and report.feedback_before and report.feedback_after:
            b, a = report.feedback_before, report.feedback_after
            typer.echo(f"\n5. {report.feedback.user} says a message the filter let through is spam: "
                       f"{b.verdict} (p={b.probability:.3f}) -> {a.verdict} (p={a.probability:.3f}) after "
                       f"refitting only {report.feedback.user}'s weights.")
        typer.echo(f"\nDone in {report.seconds:.0f} s. Try next (runs as printed, no venv needed):")
        for line in _demo_hints(url, folder, held_back_message(report, Path(report.corpus))):
            typer.echo(f"  {line}")


def _demo_hints(url: str, folder: Path, message: tuple[str, bytes] | None) -> list[str]:
    """Commands that run as printed: the full path of this spamtl, and a message file that exists."""
    import shlex

    script = Path(sys.executable).parent / "spamtl"
    program = shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(sys.executable)} -m spamtl"
    from spamtl.store.engine import display_url

    hints = [f"export SPAMTL_DATABASE_URL={shlex.quote(display_url(url))}", f"{program} users"]  # never a password
    if message is not None:
        user, raw = message
        path = folder / "held-back.eml"
        path.write_bytes(raw)
        hints += [f"{program} classify {user} < {shlex.quote(str(path))}",
                  f"{program} explain {user} {shlex.quote(str(path))}",
                  f"{program} review {user} -n 3"]
    hints += [f"{program} evaluate --chronological", f"{program} models"]
    return hints


EXIT_FILTER_ERROR = 1
EXIT_FILTER_BUG = 70  # EX_SOFTWARE
_STREAM_CHUNK = 1 << 16
# `classify --exit-code`: bogofilter's codes, which delivery scripts already test.  Skipped input (empty,
# not mail, larger than max_message_bytes) takes ham's 1: delivered as if there were no filter (as spamc
# does with mail over its size limit), never filed as spam nor queued for review as unsure.
EXIT_CODE_BY_VERDICT = {"spam": 0, "ham": 1, "unsure": 2, "skipped": 1}
EXIT_CODE_ERROR = 3


def _filter_one(settings: Settings, user: str, *, exit_code: bool = False) -> int:
    """Filter mode: write the message back with verdict headers; on any failure write it unchanged.

    At most ``settings.max_message_bytes`` are read before deciding: a larger
    message is passed through unscanned (``X-Spamtl-Status: skipped``), streamed
    from stdin to stdout in blocks, never held in memory whole.  So is input that
    is empty or not mail (``skip_reason``), unscored.  With ``exit_code`` the exit
    status is the verdict's (:data:`EXIT_CODE_BY_VERDICT`), or ``EXIT_CODE_ERROR``.
    """
    from spamtl.mail.parse import add_headers

    stdin = sys.stdin.buffer
    limit = settings.max_message_bytes
    raw = stdin.read(limit + 1)
    out = sys.stdout.buffer
    if len(raw) > limit:
        out.write(add_headers(raw, [("X-Spamtl-Status", f"skipped, larger than {limit} bytes")]))
        while block := stdin.read(_STREAM_CHUNK):
            out.write(block)
        out.flush()
        _log_skipped(settings, user, f"larger than {limit} bytes")
        return EXIT_CODE_BY_VERDICT["skipped"] if exit_code else 0
    code = 0
    try:
        headers, verdict = _filter_headers(settings, user, raw)
        code = EXIT_CODE_BY_VERDICT[verdict] if exit_code else 0
    except SpamtlError as exc:
        typer.echo(f"Error: {' '.join(redact(str(exc)).split())} (message passed through unfiltered)", err=True)
        headers, code = [("X-Spamtl-Status", "error")], EXIT_CODE_ERROR if exit_code else EXIT_FILTER_ERROR
    except Exception as exc:  # noqa: BLE001 - never lose mail, whatever went wrong
        typer.echo(f"Error: internal error {exc.__class__.__name__}: {' '.join(redact(str(exc)).split())} "
                   "(message passed through unfiltered)", err=True)
        headers, code = [("X-Spamtl-Status", "error")], EXIT_CODE_ERROR if exit_code else EXIT_FILTER_BUG
    out.write(add_headers(raw, headers))
    out.flush()
    return code


def pass_through(code: int) -> int:
    """Write stdin to stdout marked ``X-Spamtl-Status: error`` (a pipeline whose command line is wrong)."""
    from spamtl.mail.parse import add_headers

    raw = sys.stdin.buffer.read(_STREAM_CHUNK)
    sys.stdout.buffer.write(add_headers(raw, [("X-Spamtl-Status", "error")]))
    while block := sys.stdin.buffer.read(_STREAM_CHUNK):
        sys.stdout.buffer.write(block)
    sys.stdout.flush()
    return code


def _filter_headers(settings: Settings, user: str, raw: bytes) -> tuple[list[tuple[str, str]], str]:
    """The headers to add, and the verdict (``skipped`` for input that is not mail: not scored, not logged)."""
    from spamtl.config import validate_name
    from spamtl.services.classify import VerdictLogger, open_reader, prepare, skip_reason, verdict_headers

    validate_name(user)
    reason = skip_reason(raw)
    if reason is not None:
        _log_skipped(settings, user, reason)
        return [("X-Spamtl-Status", f"skipped, {reason}")], "skipped"
    reader = open_reader(settings)
    try:
        model = reader.user_model(user)
        if model.user_id is None:
            _note_unknown_user(settings, user)
        message = prepare(raw)
        verdict = reader.classify(model, message, "<stdin>")
        VerdictLogger(reader.store, create_users=settings.auto_create_users).log(model, [(message, verdict)], _now())
        headers = verdict_headers(verdict)
        if settings.filter_report:
            from spamtl.services.explain import explain, report_header

            headers.append(("X-Spamtl-Report", report_header(explain(model, message, scored=verdict.scored))))
    finally:
        reader.store.close()
    from spamtl.logs import log_verdict

    log_verdict(settings, verdict)
    return headers, verdict.verdict


def _note_unknown_user(settings: Settings, user: str) -> None:
    """Say that ``user`` is not in the store, in the log (a warning) and on stderr (once: the log may be there).

    A typo in a recipe's user name must not go unnoticed, nor a new mailbox that nobody registered.
    """
    import logging

    from spamtl.logs import is_shown_on_stderr, log_event

    stored = "registered as a new user" if settings.auto_create_users else "verdicts not stored"
    message = f"scored with the shared model, {stored} (see spamtl users)"
    log_event(settings, "unknown_user", {"user": user, "msg": message}, level=logging.WARNING)
    if not is_shown_on_stderr(settings, logging.WARNING):
        typer.echo(f"spamtl: unknown user {user!r}; {message}", err=True)


def _log_skipped(settings: Settings, user: str, reason: str, origin: str | None = None) -> None:
    """One log line for input passed through without a verdict (never a verdict line)."""
    from spamtl.logs import log_event

    log_event(settings, "skipped", {"user": user, "reason": reason, **({"origin": origin} if origin else {})})


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
    if filter_mode:
        failed = EXIT_CODE_ERROR if exit_code else EXIT_FILTER_ERROR
        try:
            settings = _settings(db)
        except SpamtlError as exc:  # a bad configuration must not lose mail either
            typer.echo(f"Error: {exc} (message passed through unfiltered)", err=True)
            raise typer.Exit(pass_through(failed)) from None
        if report:
            settings = dataclasses.replace(settings, filter_report=True)
        if paths and paths != ["-"]:
            typer.echo(f"Error: --filter reads one message from stdin; unexpected {paths[0]!r} "
                       "(message passed through unfiltered)", err=True)
            raise typer.Exit(pass_through(failed))
        raise typer.Exit(_filter_one(settings, user, exit_code=exit_code))
    code = EXIT_CODE_ERROR
    with _errors(EXIT_CODE_ERROR if exit_code else None):
        import itertools

        from spamtl.config import validate_name
        from spamtl.errors import UsageError
        from spamtl.logs import log_verdict
        from spamtl.mail.sources import RawMail, Unreadable, iter_mail
        from spamtl.services.classify import Skipped, classify_messages, open_reader

        settings = _settings(db)

        validate_name(user)
        if not paths or paths == ["-"]:
            mails: Any = [RawMail("<stdin>", sys.stdin.buffer.read())]
        else:
            missing = [p for p in paths if p != "-" and not Path(p).exists()]
            if missing:
                raise UsageError(f"no such file or directory: {missing[0]}")
            if exit_code and len(paths) > 1:
                raise UsageError("--exit-code gives the verdict of one message; pass one, not several paths")
            mails = iter_mail(paths)
            if exit_code:
                mails = list(itertools.islice(mails, 2))
                if len(mails) != 1:
                    held = "more than one message" if mails else "no message"
                    raise UsageError(f"--exit-code gives the verdict of one message; {paths[0]} holds {held}")
        reader = open_reader(settings)
        try:
            model = reader.user_model(user)
            if model.user_id is None:
                _note_unknown_user(settings, user)
            elif not model.is_known_user:
                typer.echo(f"note: {user!r} has no personal model yet; scored by the shared model", err=True)
            for item in classify_messages(reader, user=user, mails=mails, now=_now(), model=model):
                if isinstance(item, Unreadable):
                    typer.echo(f"unreadable: {item.origin}: {item.reason}", err=True)
                    code = EXIT_CODE_ERROR
                    continue
                if isinstance(item, Skipped):
                    _log_skipped(settings, user, item.reason, item.origin)
                    code = EXIT_CODE_BY_VERDICT["skipped"]
                    typer.echo(json.dumps(item.as_dict()) if output is OutputFormat.json
                               else f"{item.origin}: skipped ({item.reason})")
                    continue
                log_verdict(settings, item)
                code = EXIT_CODE_BY_VERDICT[item.verdict]
                if output is OutputFormat.json:
                    typer.echo(json.dumps(item.as_dict()))
                else:
                    mid = f" <{item.message_id}>" if item.message_id else ""
                    why = ", your label" if item.reason == "label" else ""
                    typer.echo(f"{item.origin}{mid}: {item.verdict} (probability {item.probability:.4f}, "
                               f"spam cutoff {item.spam_cutoff:.4f}, ham cutoff {item.ham_cutoff:.4f}{why}, "
                               f"model v{item.model_version}, id {item.short_id})")
                for warning in item.warnings:
                    typer.echo(f"warning: {item.origin}: {warning} (scored from the text recovered)", err=True)
        finally:
            reader.store.close()
    if exit_code:
        raise typer.Exit(code)


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
    with _errors():
        from spamtl.errors import UsageError
        from spamtl.services.feedback import record_feedback, record_feedback_batch

        if spam == ham:
            raise UsageError("say either --spam or --ham")
        paths = [p for p in paths or [] if p != "-"] if paths != ["-"] else []
        if ref is not None and paths:
            raise UsageError("give either a message or --id, not both")
        label = "spam" if spam else "ham"
        settings = _settings(db)
        if ref is None and paths and not _is_one_message(paths):
            from spamtl.cli.progress import show_progress

            with show_progress("feedback", lines=False) as progress:  # a bar on a terminal, else quiet as before
                batch = record_feedback_batch(_engine(settings), settings, user=user, label=label, paths=paths,
                                              now=_now(), progress=progress)
            _print_feedback_batch(batch, output)
            return
        raw = None
        if ref is None:
            if not paths:
                raw = sys.stdin.buffer.read()
            else:
                try:
                    raw = Path(paths[0]).read_bytes()
                except OSError as exc:
                    raise UsageError(f"cannot read {paths[0]}: {exc.strerror or exc}") from None
            if not raw.strip():
                raise UsageError("the message is empty")
        result = record_feedback(_engine(settings), settings, user=user, label=label, raw=raw, ref=ref, now=_now())
        if result.user_created:  # on purpose (a new mailbox), or a typo: either way, say so
            typer.echo(f"note: new user {user!r} registered by this label (see spamtl users)", err=True)
        if output is OutputFormat.json:
            _print_json(result.as_dict())
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


def _is_one_message(paths: list[str]) -> bool:
    """One plain file that is not an mbox (nor gzip): the single-message form of `feedback`."""
    if len(paths) != 1 or not Path(paths[0]).is_file():
        return False
    try:
        with open(paths[0], "rb") as fh:
            head = fh.read(5)
    except OSError:
        return True  # reported as unreadable by the single-message path
    return not head.startswith((b"From ", b"\x1f\x8b"))


def _print_feedback_batch(batch: Any, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        _print_json(batch.as_dict())
        return
    typer.echo(f"Recorded {batch.label} for {batch.user}: {batch.messages} messages ({batch.new} new, "
               f"{batch.relabelled} relabelled, {batch.unchanged} already {batch.label}), "
               f"{len(batch.unreadable)} unreadable")
    for path, reason in batch.unreadable[:50]:
        typer.echo(f"  unreadable: {path}: {reason}", err=True)
    if batch.model_version is not None and (batch.new or batch.relabelled):
        typer.echo(f"Refitted {batch.user}'s personal weights in model v{batch.model_version} on "
                   f"{batch.user_labels} labels.")
    elif batch.new or batch.relabelled:
        typer.echo("No model yet: the labels will be used by the next `spamtl train`.")


def main() -> None:
    """Entry point of the ``spamtl`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
from spamtl.cli import config as _cli_config  # noqa: E402,F401  registers commands
from spamtl.cli import cutoffs as _cli_cutoffs  # noqa: E402,F401  registers commands
from spamtl.cli import explain as _cli_explain  # noqa: E402,F401  registers commands
from spamtl.cli import serve as _cli_serve  # noqa: E402,F401  registers commands
from spamtl.cli import store as _cli_store  # noqa: E402,F401  registers commands
from spamtl.cli import tell as _cli_tell  # noqa: E402  light on purpose: `spamtl tell` also runs it alone

app.command("tell")(_cli_tell.tell)
