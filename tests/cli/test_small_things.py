"""The demo's closing hints run as printed; evaluate --plot says where and marks AUC and cutoff; no warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import NOW, run
from ..small_store import imported_store
from .test_progress import without_stage_lines

runner = CliRunner()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return imported_store(tmp_path_factory.mktemp("small"), train=False)


def test_plot_path_auc_legend_and_cutoff_marker(small_store: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import spamtl.services.plot as plot

    drawn: dict[str, list[str]] = {}
    real = plot.plot_roc_curves

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.update(real(*args, **kwargs))
        return drawn

    monkeypatch.setattr(plot, "plot_roc_curves", spy)
    png = tmp_path / "roc.png"
    result = run(small_store, "evaluate", "--folds", "2", "--plot", str(png))
    assert result.exit_code == 0 and without_stage_lines(result.stderr) == ""
    assert result.stdout.splitlines()[-1] == f"ROC curves written to {png.resolve()}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(run(small_store, "evaluate", "--folds", "2", "--format", "json").stdout)
    for user in ("ann", "bob"):
        labels = drawn[user]
        for system in ("mtl", "pooled", "per_user"):
            assert f"{system} (AUC {report['users'][user][system]['roc_auc']:.4f})" in labels
        assert "cutoff 0.9" in labels
    as_json = run(small_store, "evaluate", "--folds", "2", "--format", "json", "--plot", str(png))
    json.loads(as_json.stdout)  # stdout stays JSON; the path goes to stderr
    assert without_stage_lines(as_json.stderr) == f"ROC curves written to {png.resolve()}\n"


def test_evaluate_and_plot_leak_no_warnings(small_store: str, tmp_path: Path) -> None:
    args = ["evaluate", "--folds", "2", "--db", small_store]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(tmp_path / "roc.png")]
    except ImportError:
        pass
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "spamtl", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert without_stage_lines(proc.stderr) == ""


@pytest.mark.slow
def test_demo_hints_run_as_printed_without_a_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each 'Try next' line runs in a plain shell whose PATH has no spamtl (a fresh terminal)."""
    import spamtl.services.demo as demo

    real = demo.run_demo

    def reduced(url, *, now, **kwargs):  # type: ignore[no-untyped-def]
        return real(url, now=NOW, users=["ann", "ben", "cem", "dora"], folds=2, **kwargs)

    monkeypatch.setattr(demo, "run_demo", reduced)
    result = runner.invoke(app, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    hints = [line.strip() for line in lines[lines.index(next(x for x in lines if x.startswith("Done in"))) + 1:]]
    assert hints[0].startswith("export SPAMTL_DATABASE_URL=")
    assert len(hints) == 7 and any(" classify ann < " in h for h in hints) and any(" explain ann " in h for h in hints)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for i in range(1, len(hints)):
        script = "set -e\n" + hints[0] + "\n" + hints[i] + "\n"
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, (hints[i], proc.stderr)
        assert proc.stdout.strip(), hints[i]
    classify_out = subprocess.run(["bash", "-c", hints[0] + "\n" + hints[2]], capture_output=True, text=True,
                                  env=env, timeout=60).stdout
    assert classify_out.startswith("<stdin>") and "probability" in classify_out
    assert os.environ.get("SPAMTL_DATABASE_URL") != hints[0].split("=", 1)[1]


@pytest.mark.parametrize("command", ["explain", "history", "review", "config"])
def test_new_commands_have_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example: spamtl " + command in result.stdout


def test_filter_guard_keeps_a_global_config_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from spamtl.cli import entry as _entry

    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert _entry._filter_argv(["--config", "c.toml", "classify", "--filter", "--report", "--help"]) == [
        "--config", "c.toml", "classify", "--filter", "--report", "--", "--help"]
    assert _entry._filter_argv(["--config=c.toml", "classify", "--db", "u", "--filter", "ann"]) == [
        "--config=c.toml", "classify", "--db", "u", "--filter", "--", "ann"]
    assert _entry._filter_argv(["--config", "c.toml", "users"]) is None
