"""`spamtl cutoffs` (list, set, unset) and the cutoff columns of `spamtl users`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import NOW, run_sql
from .test_training import _build

runner = CliRunner()


def run(db: str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], catch_exceptions=False)


def _generation(db: str) -> int:
    return int(run_sql(db, "SELECT value FROM store_state WHERE key = 'generation'")[0][0])  # type: ignore[call-overload]


def test_cutoffs_list_set_unset_and_users_columns(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = _build(engine, tmp_path).database_url
    listed = json.loads(run(db, "cutoffs", "--format", "json").stdout)
    assert [r["user"] for r in listed] == ["ann", "bob", "cat"]
    # Each says how much of the cutoff is the user's own (30 ham prove nothing at 0.1 %: the shared one).
    assert all(r["source"].startswith("model v1: target 0.1% ham FPR: shared, 0 of ")
               and "ham at or above it (own 0%); ham: 5% of spam below on " in r["source"] for r in listed)
    assert all("ham at or above it (own 0%)" in line for line in run(db, "cutoffs").stdout.splitlines()[1:])
    bob = listed[1]
    assert 0.5 <= bob["spam_cutoff"] < 1 and 0.5 <= bob["ham_cutoff"] <= bob["spam_cutoff"]

    before = _generation(db)
    result = run(db, "cutoffs", "set", "bob", "--spam", "0.99", "--ham", "0.3")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1].split() == ["bob", "0.9900", "0.3000", "set", "by", "administrator"]
    assert _generation(db) == before + 1
    verdict = json.loads(runner.invoke(app, ["classify", "bob", "-", "--format", "json", "--db", db],
                                       input=b"Subject: hi\n\nhello").stdout)
    assert verdict["spam_cutoff"] == 0.99
    # Without --ham: the global ham cutoff (0.5), or the spam cutoff where that is lower.
    only_spam = json.loads(run(db, "cutoffs", "set", "cat", "--spam", "0.99", "--format", "json").stdout)[0]
    assert only_spam["ham_cutoff"] == 0.5
    low = json.loads(run(db, "cutoffs", "set", "cat", "--spam", "0.4", "--format", "json").stdout)[0]
    assert (low["spam_cutoff"], low["ham_cutoff"]) == (0.4, 0.4)

    users = json.loads(run(db, "users", "--format", "json").stdout)
    assert (users[1]["spam_cutoff"], users[1]["ham_cutoff"], users[1]["cutoff_source"]) == (
        0.99, 0.3, "set by administrator")
    table = run(db, "users").stdout.splitlines()
    assert table[0].split() == ["user", "group", "ham", "spam", "cutoff", "source"]
    assert table[2].split()[4:] == ["0.9900", "set", "by", "administrator"]

    result = run(db, "cutoffs", "unset", "bob", "--format", "json")
    assert json.loads(result.stdout)[0]["source"] == bob["source"] and _generation(db) == before + 4

    for args, message in ((["set", "zed", "--spam", "0.9"], "Error: no user 'zed' in the store; `spamtl users` lists them"),
                          (["set", "bob", "--spam", "1.5"], "Error: --spam must be a probability in (0, 1], got 1.5"),
                          (["set", "bob", "--spam", "0.8", "--ham", "0.9"],
                           "Error: --ham must be between 0 and --spam (0.8), got 0.9"),
                          (["unset", "-x"], None)):
        result = run(db, "cutoffs", *args)
        assert result.exit_code != 0
        if message:
            assert result.stderr.strip() == message


def test_cutoffs_without_a_model_are_the_global_ones(db_url: str) -> None:
    assert run(db_url, "cutoffs").stdout.strip() == (
        "No users yet; add mail with `spamtl import USER PATH --label spam|ham`.")
    run_sql(db_url, "INSERT INTO users (name, created_at) VALUES ('ann', :t)", {"t": NOW})
    assert run(db_url, "cutoffs").stdout.splitlines()[1].split() == ["ann", "0.9000", "0.5000", "global",
                                                                      "setting"]
    assert run(db_url, "cutoffs", "--help").exit_code == 0
