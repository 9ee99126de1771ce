"""``spamtl evaluate --replay``: print a replay backtest (the service is spamtl.services.replay)."""

from __future__ import annotations

from typing import Any

import typer

from spamtl.cli.app import TableFormat, _engine, _errors, _fmt, _now, _print_json, _settings

__all__ = ["run_replay"]


def run_replay(users: list[str] | None, days: int, bootstrap: int, label_all: bool, systems: list[str] | None,
               output: TableFormat, db: str | None) -> None:
    """Options -> one replay -> table, JSON or CSV."""
    with _errors():
        from spamtl.cli.progress import show_progress
        from spamtl.services.replay import SYSTEMS, replay

        settings = _settings(db)
        with show_progress("replay") as progress:
            result = replay(_engine(settings), settings, now=_now(), users=users, days=days, bootstrap=bootstrap,
                            label_all=label_all, systems=systems or SYSTEMS, progress=progress)
        if output is TableFormat.json:
            _print_json(result.as_dict())
        elif output is TableFormat.csv:
            _print_csv(result)
        else:
            _print_table(result)


def _print_csv(result: Any) -> None:
    typer.echo("user,system,part,metric,value")
    rows = [*result.users.items(), ("MACRO", result.macro)]
    for user, entry in rows:
        for system in result.protocol["systems"]:
            for part, metrics in (("all", entry[system]), ("first_third", entry[system]["first_third"]),
                                  ("last_third", entry[system]["last_third"])):
                for metric, value in metrics.items():
                    if isinstance(value, dict):
                        continue
                    typer.echo(f"{user},{system},{part},{metric},{'' if value != value else value}")


def _pct(value: Any) -> str:
    return _fmt(None if value is None else 100.0 * value, 2)


def _print_table(result: Any) -> None:
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
            trend = f"{_fmt(m['first_third']['corrections_per_1000'], 1)} -> " \
                    f"{_fmt(m['last_third']['corrections_per_1000'], 1)}"
            typer.echo(f"{user:<14} {system:<9} {count:>6}  {_pct(m['ham_fpr']):>8} {_pct(m['spam_miss']):>7} "
                       f"{_pct(m['unsure_rate']):>7} {_fmt(m['corrections_per_1000'], 1):>8} "
                       f"{_fmt(m['auc_error_pct'], 3):>7}  {trend:>26}")
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
