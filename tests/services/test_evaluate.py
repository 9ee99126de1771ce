"""spamtl evaluate on a small fixture store, and help text everywhere."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.services.evaluate import SYSTEMS

from ..cli.test_loop import (
    _mails,
    run,
    store,  # noqa: F401 - module-scoped trained store
)
from ..conftest import write_mbox

runner = CliRunner()
METRICS = {"roc_auc", "auc_error_pct", "precision", "recall", "f1", "ham_fpr", "spam_at_0.1pct_fpr"}


@pytest.fixture(scope="module")
def evaluated(store):  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    only_spam = write_mbox(store["tmp"] / "dora-spam.mbox", _mails(5, "spam", 6))
    assert run(db, "import", "dora", str(only_spam), "-l", "spam").exit_code == 0
    result = run(db, "evaluate", "--format", "json")
    assert result.exit_code == 0, result.output
    return db, json.loads(result.stdout)


def test_json_has_the_promised_shape(evaluated) -> None:  # type: ignore[no-untyped-def]
    _, report = evaluated
    assert set(report) == {"users", "macro", "splits"}
    assert set(report["users"]) == {"ann", "bob", "cat", "dora"}
    for entry in report["users"].values():
        assert set(SYSTEMS) <= set(entry)
        for system in SYSTEMS:
            assert METRICS <= set(entry[system])
        assert entry["n_train"] > 0
    assert set(report["macro"]) == set(SYSTEMS)
    assert report["macro"]["mtl"]["roc_auc"] > 0.9


def test_one_class_user_is_reported_not_a_crash(evaluated) -> None:  # type: ignore[no-untyped-def]
    _, report = evaluated
    dora = report["users"]["dora"]
    assert dora["note"] == "only spam labels: AUC and false-positive rate undefined"
    assert dora["mtl"]["roc_auc"] is None or dora["mtl"]["roc_auc"] != dora["mtl"]["roc_auc"]  # NaN -> null/NaN
    assert dora["mtl"]["recall"] > 0.5


def test_table_csv_users_and_chronological(evaluated) -> None:  # type: ignore[no-untyped-def]
    db, _ = evaluated
    table = run(db, "evaluate", "--users", "ann", "--users", "bob", "--chronological")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith("1-AUC % per user (chronological")
    assert [line.split()[0] for line in lines[2:]] == ["ann", "bob", "macro"]
    assert all("*" in line for line in lines[2:])  # the best system is marked in every row
    rows = list(csv.DictReader(io.StringIO(run(db, "evaluate", "--format", "csv", "--folds", "2").stdout)))
    assert {r["system"] for r in rows} == set(SYSTEMS)
    assert {r["user"] for r in rows} == {"ann", "bob", "cat", "dora", "MACRO"}
    bad = run(db, "evaluate", "--users", "zed")
    assert bad.exit_code == 1 and bad.stderr.strip() == "Error: no labelled mail for user 'zed'; see `spamtl users`"


def test_evaluate_leaves_the_active_model_alone(evaluated) -> None:  # type: ignore[no-untyped-def]
    db, _ = evaluated
    versions = json.loads(run(db, "models", "--format", "json").stdout)
    assert [v["status"] for v in versions].count("active") == 1
    assert len(versions) == 1


@pytest.mark.parametrize("command", ["init", "import", "users", "users delete", "users rename", "train", "classify",
                                     "feedback", "models", "models activate", "models pin", "models unpin", "prune",
                                     "evaluate"])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout


def test_plot_without_matplotlib_is_a_clear_error(evaluated, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    db, _ = evaluated
    result = run(db, "evaluate", "--plot", str(tmp_path / "roc.png"))
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: --plot needs matplotlib; install it with `pip install 'spamtl[plot]'`")
    assert not (tmp_path / "roc.png").exists()


def test_plot_writes_a_png(evaluated, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    db, _ = evaluated
    result = run(db, "evaluate", "--folds", "2", "--plot", str(tmp_path / "roc.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
