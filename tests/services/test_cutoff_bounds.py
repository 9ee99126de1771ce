"""An administrator's cutoffs are probabilities: spam in (0, 1], ham in [0, spam]; the edges are accepted.

Catches (a planted defect): the lower bounds of ``spamtl/services/cutoffs.py``
(``set_cutoffs``) loosened, so that ``--spam 0`` (every message spam for that user: a typo for 0.9)
or a negative ``--ham`` (nothing ever ham) was stored; only the upper bound (``--spam 1.5``) and
``--ham`` above ``--spam`` were tested.  The accepted edges are pinned too (1 and 0, ham = spam).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import NOW, run_sql

runner = CliRunner()


def run(db: str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], catch_exceptions=False)


@pytest.fixture
def db(db_url: str) -> str:
    run_sql(db_url, "INSERT INTO users (name, created_at) VALUES ('ann', :t)", {"t": NOW})
    return db_url


@pytest.mark.parametrize(("args", "message"), [
    (["--spam", "0"], "Error: --spam must be a probability in (0, 1], got 0"),
    (["--spam", "-0.5"], "Error: --spam must be a probability in (0, 1], got -0.5"),
    (["--spam", "1.0001"], "Error: --spam must be a probability in (0, 1], got 1.0001"),
    (["--spam", "0.9", "--ham", "-0.1"], "Error: --ham must be between 0 and --spam (0.9), got -0.1"),
    (["--spam", "0.9", "--ham", "0.9001"], "Error: --ham must be between 0 and --spam (0.9), got 0.9001"),
], ids=["spam-zero", "spam-negative", "spam-above-one", "ham-negative", "ham-above-spam"])
def test_cutoffs_outside_their_range_are_refused(db: str, args: list[str], message: str) -> None:
    result = run(db, "cutoffs", "set", "ann", *args)
    assert (result.exit_code, result.stderr.strip()) == (1, message)
    shown = json.loads(run(db, "cutoffs", "--format", "json").stdout)
    assert shown == [{"user": "ann", "spam_cutoff": 0.9, "ham_cutoff": 0.5, "source": "global setting"}]  # unchanged


@pytest.mark.parametrize(("args", "spam", "ham"), [
    (["--spam", "1"], 1.0, 0.5),
    (["--spam", "1", "--ham", "0"], 1.0, 0.0),
    (["--spam", "0.7", "--ham", "0.7"], 0.7, 0.7),
    (["--spam", "0.000001", "--ham", "0"], 0.000001, 0.0),
], ids=["spam-one", "spam-one-ham-zero", "ham-equals-spam", "tiny-spam"])
def test_the_edges_of_the_range_are_accepted(db: str, args: list[str], spam: float, ham: float) -> None:
    result = run(db, "cutoffs", "set", "ann", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"user": "ann", "spam_cutoff": spam, "ham_cutoff": ham,
                                          "source": "set by administrator"}]
