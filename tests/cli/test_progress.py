"""Progress on long work: one log line per stage off a terminal, a bar with a count on one; stdout stays clean."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import write_mbox
from ..services.test_explain import parse_line
from .test_loop import _mails

runner = CliRunner()
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ spamtl\[\d+\]: level=info event=stage ")


def run(db: str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], catch_exceptions=False)


def stage_lines(stderr: str, command: str) -> list[dict[str, str]]:
    """The stage lines of ``command`` on stderr (each checked for the log format and a duration)."""
    lines = [line for line in stderr.splitlines() if " event=stage " in line]
    assert all(STAMP.match(line) for line in lines), lines
    fields = [parse_line(line) for line in lines]
    assert all(f["command"] == command and float(f["seconds"]) >= 0 for f in fields), lines
    return fields


def without_stage_lines(stderr: str) -> str:
    """``stderr`` less the stage lines (for tests about everything else written there)."""
    return "".join(line for line in stderr.splitlines(keepends=True) if " event=stage " not in line)


def without_times(fields: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in f.items() if k not in ("event", "command", "seconds", "level")} for f in fields]


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ann and bob each label the same 20 spam and 20 hams of their own: 80 labels on 60 messages."""
    tmp = tmp_path_factory.mktemp("progress")
    out = {}
    for user in ("ann", "bob"):
        out[f"{user}-spam"] = write_mbox(tmp / f"{user}-s.mbox", _mails(1, "spam", 20))
        out[f"{user}-ham"] = write_mbox(tmp / f"{user}-h.mbox", _mails(3, user, 20))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, boxes: dict[str, Path]) -> str:
    db = f"sqlite:///{tmp_path_factory.mktemp('progress-db') / 'p.sqlite3'}"
    assert run(db, "init").exit_code == 0
    for user in ("ann", "bob"):
        for label in ("spam", "ham"):
            result = run(db, "import", user, str(boxes[f"{user}-{label}"]), "-l", label)
            assert result.exit_code == 0, result.output
    return db


def test_import_logs_one_line_with_the_messages_read(db_url: str, boxes: dict[str, Path]) -> None:
    result = run(db_url, "import", "ann", str(boxes["ann-spam"]), "-l", "spam")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ann (spam): 20 imported, 0 already known, 0 relabelled, 0 unreadable\n"
    assert without_times(stage_lines(result.stderr, "import")) == [
        {"stage": "import", "user": "ann", "label": "spam", "messages": "20"}]
    assert len(result.stderr.splitlines()) == 1
    again = run(db_url, "import", "ann", str(boxes["ann-spam"]), str(boxes["ann-ham"]), "-l", "ham", "--format", "json")
    assert json.loads(again.stdout)["relabelled"] == 20  # stdout is exactly the JSON
    assert without_times(stage_lines(again.stderr, "import"))[0]["messages"] == "40"


def test_train_logs_each_stage_with_its_counts(store: str) -> None:
    result = run(store, "train", "--format", "json")
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)  # stdout is exactly the JSON
    assert (trained["users"], trained["messages"]) == (2, 80)
    lines = without_times(stage_lines(result.stderr, "train"))
    assert len(result.stderr.splitlines()) == len(lines) == 6  # nothing else on stderr at the default log level
    assert lines == [
        {"stage": "load", "messages": "60"},  # 80 labels on 60 distinct messages
        {"stage": "search", "settings": "4", "users": "2", "labels": "80", "folds": "3"},
        {"stage": "fit", "labels": "80", "users": "2", "alpha": "0.01", "mu": f"{trained['metrics']['mu']:g}"},
        {"stage": "gate"}, {"stage": "save"}, {"stage": "prune"}]


def test_evaluate_logs_load_and_folds(store: str) -> None:
    result = run(store, "evaluate", "--folds", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["users"]) == {"ann", "bob"}
    assert without_times(stage_lines(result.stderr, "evaluate")) == [
        {"stage": "load", "messages": "60"}, {"stage": "folds", "labels": "80", "users": "2", "folds": "2"}]
    assert len(result.stderr.splitlines()) == 2


def test_replay_logs_bootstrap_and_days_per_system(store: str) -> None:
    result = run(store, "evaluate", "--replay", "--days", "2", "--bootstrap", "4", "--system", "mtl",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    replayed = sum(entry["messages"] for entry in report["users"].values())
    assert replayed == 80 - 2 * 4
    assert without_times(stage_lines(result.stderr, "replay")) == [
        {"stage": "bootstrap", "system": "mtl", "users": "2", "labels": "8"},
        {"stage": "day", "system": "mtl", "day": "1/2", "users": "2", "messages": str(replayed // 2)},
        {"stage": "day", "system": "mtl", "day": "2/2", "users": "2", "messages": str(replayed // 2)}]


def test_a_failed_job_prints_only_its_error(db_url: str) -> None:
    result = run(db_url, "train")
    assert result.exit_code == 1
    assert result.stderr == "Error: no labelled mail yet; add some with `spamtl import USER PATH --label spam|ham`\n"


def test_bar_on_a_terminal_has_a_count_and_an_eta() -> None:
    from rich.console import Console

    from spamtl.cli.progress import show_progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with show_progress("import", console=console) as progress:
        progress.stage("import", 40, unit="messages", user="ann")
        progress.advance(10)
        time.sleep(0.3)  # a redraw by the bar's own thread
        assert "import: import (user=ann)" in screen.getvalue()
        assert "10/40 messages" in screen.getvalue() and "eta " in screen.getvalue()
        progress.advance(30)
        progress.stage("fit", labels=40)
    shown = screen.getvalue()
    assert "40/40 messages" in shown and "import: fit (labels=40)" in shown
    assert "event=stage" not in shown  # a terminal gets the bar, not the lines


def test_more_stages_than_the_screen_has_rows_keep_the_running_bar_in_view() -> None:
    from rich.console import Console

    from spamtl.cli.progress import show_progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, height=6, color_system=None)
    with show_progress("replay", console=console) as progress:
        for day in range(1, 13):  # twice the screen's rows
            progress.stage("day", 10, unit="messages", day=f"{day}/12")
            progress.advance(4)
            time.sleep(0.3)  # a redraw by the bar's own thread
            assert f"replay: day (day={day}/12)" in screen.getvalue()[-300:] and "4/10 messages" in screen.getvalue()[-300:]
            progress.advance(6)
    shown = screen.getvalue()
    assert "..." not in shown  # rich crops a live area taller than the screen from the bottom
    assert all(f"day={day}/12) " in shown for day in range(1, 13))


def test_the_bar_leaves_training_free_to_fork_workers() -> None:
    from rich.console import Console

    from spamtl.cli.progress import show_progress
    from spamtl.parallel import fork_pool_is_safe

    console = Console(file=io.StringIO(), force_terminal=True)
    with show_progress("train", console=console) as progress:
        progress.stage("fit")
        assert fork_pool_is_safe()  # the bar's thread would otherwise turn training serial on a terminal


def test_import_under_a_terminal_draws_a_bar_and_keeps_stdout_json(db_url: str, boxes: dict[str, Path]) -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "spamtl", "import", "ann", str(boxes["ann-spam"]), "-l", "spam",
                             "--format", "json", "--db", db_url], stdout=subprocess.PIPE, stderr=terminal,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(terminal)
    drawn = b""
    try:
        while True:  # read the terminal while the command runs, so a full pty never blocks it
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(controller)
    assert proc.returncode == 0, drawn
    assert json.loads(out)["imported"] == 20
    screen = drawn.decode(errors="replace")
    assert "import: import (user=ann label=spam)" in screen and "20/20 messages" in screen, screen
    assert "event=stage" not in screen


def test_an_in_process_search_reports_each_fold_as_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import scipy.sparse as sp

    import spamtl.model.selection as model

    rng = np.random.default_rng(0)
    X = sp.random(60, 30, density=0.3, format="csr", random_state=1)
    y = rng.integers(0, 2, 60)
    tasks = np.repeat(["ann", "bob"], 30)
    fitted: list[int] = []
    real = model.fit_fold

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        fitted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "fit_fold", counted)
    seen: list[int] = []
    model.select_hyperparameters(X, y, tasks, alphas=(1.0,), mus=(1.0, 0.1), n_splits=3,
                                 progress=lambda n: seen.append(len(fitted)))
    assert seen == [1, 2, 3]  # not [3, 3, 3]: a bar would sit at 0 until the search ends
