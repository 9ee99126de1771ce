"""The demo corpus generator and `spamtl demo` end to end (reduced corpus)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.demo_corpus import USERS, generate, write_corpus
from spamtl.mail.parse import parse_message
from spamtl.services.demo import run_demo

from ..conftest import NOW, REPO


def _digest(corpus: dict[str, dict[str, list[bytes]]]) -> str:
    h = hashlib.sha256()
    for user in sorted(corpus):
        for box in sorted(corpus[user]):
            for raw in corpus[user][box]:
                h.update(raw)
    return h.hexdigest()


def test_generator_is_deterministic_and_small(tmp_path: Path) -> None:
    assert _digest(generate(7)) == _digest(generate(7))
    assert _digest(generate(7)) != _digest(generate(8))
    folder = write_corpus(tmp_path / "demo", seed=7)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 3 * 2**20
    assert {p.name for p in folder.iterdir()} == {u.name for u in USERS} | {"users.json"}


def test_committed_corpus_matches_the_generator(tmp_path: Path) -> None:
    fresh = write_corpus(tmp_path / "demo", seed=7)
    committed = REPO / "data" / "demo"
    for path in sorted(fresh.rglob("*.mbox")):
        assert path.read_bytes() == (committed / path.relative_to(fresh)).read_bytes(), path.name


def test_corpus_has_what_the_demo_promises() -> None:
    corpus = generate(7)
    messages = [parse_message(raw) for boxes in corpus.values() for box in boxes.values() for raw in box]
    assert sum(m.is_html_only for m in messages) > 20
    assert sum(bool(m.attachments) for m in messages) > 5
    assert sum(bool(m.defects) for m in messages) > 5  # a few malformed ones
    assert any("привет" in m.text or "новости" in m.text for m in messages)
    assert any("familie" in m.text for m in messages)
    few = [u for u in USERS if u.n_ham + u.n_spam < 20]
    assert len(few) >= 2 and len({u.group for u in USERS}) == 3
    # Gray mail: the same newsletter is ham for one user and spam for another.
    assert any("technews" in u.wants for u in USERS) and any("technews" not in u.wants and "technews" in u.receives
                                                                for u in USERS)


def test_demo_runs_end_to_end_on_a_reduced_corpus(blank_db_url: str) -> None:
    report = run_demo(blank_db_url, now=NOW, users=["ann", "ben", "cem", "dora"],
                      folds=2)
    assert report.training is not None and report.training.promoted
    assert report.evaluation is not None and set(report.evaluation.users) == {"ann", "ben", "cem", "dora"}
    assert len(report.incoming) == 4 * 8
    assert sum(v.verdict == truth for _, truth, v in report.incoming) >= 24
    assert report.feedback is not None and report.feedback_before and report.feedback_after
    assert report.feedback_after.probability > report.feedback_before.probability


@pytest.mark.slow
def test_demo_command_mtl_beats_both_baselines(blank_db_url: str) -> None:
    result = CliRunner().invoke(app, ["demo", "--db", blank_db_url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    macro = next(line for line in result.stdout.splitlines() if line.startswith("macro"))
    mtl, pooled, per_user = (float(x.rstrip("*")) for x in macro.split()[1:4])
    assert mtl <= 0.75 * min(pooled, per_user)
    assert "Try next (runs as printed, no venv needed):" in result.stdout
