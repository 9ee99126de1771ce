"""Feedback from whole folders (a Junk Maildir, an mbox): chunks, counts, one refit; the cold CLI stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.settings import Settings

from ..conftest import NOW, make_mail, write_mbox

runner = CliRunner()


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


def _maildir(root: Path, mails: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(mails):
        (root / ("cur" if i % 2 else "new") / f"{1700000000 + i}.M{i}P1.host:2,S").write_bytes(raw)
    (root / "dovecot-uidlist").write_bytes(b"3 V1 N1\n")
    return root


@pytest.fixture
def trained(tmp_path: Path, db_url: str) -> dict[str, object]:
    spam = [make_mail(f"win money {i}", f"cheap pills casino prize {i}", sender=f"p{i}@spam.example") for i in range(20)]
    ham = [make_mail(f"meeting {i}", f"agenda budget minutes {i}", sender="boss@work.example") for i in range(20)]
    for user in ("alice", "bob"):
        assert run(db_url, "import", user, str(write_mbox(tmp_path / f"{user}s.mbox", spam)), "-l", "spam").exit_code == 0
        assert run(db_url, "import", user, str(write_mbox(tmp_path / f"{user}h.mbox", ham)), "-l", "ham").exit_code == 0
    assert run(db_url, "train").exit_code == 0
    return {"db": db_url, "tmp": tmp_path}


def test_feedback_from_a_junk_maildir_and_an_mbox(trained: dict[str, object]) -> None:
    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    junk = [make_mail(f"garden newsletter {i}", f"roses tulips weekly {i}", sender="news@garden.example")
            for i in range(12)]
    maildir = _maildir(tmp / "Maildir" / ".Junk", junk[:8])
    mbox = write_mbox(tmp / "more.mbox", junk[8:] + [junk[0]])  # junk[0] twice: counted once as new
    result = run(db, "feedback", "alice", "--spam", str(maildir), str(mbox), "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["messages"], out["new"], out["relabelled"], out["unchanged"], out["unreadable"]) == (13, 12, 0, 1, [])
    assert out["model_version"] == 1 and out["user_labels"] == 40 + 12
    again = run(db, "feedback", "alice", "--spam", str(maildir), str(mbox))
    assert again.stdout.splitlines() == [
        "Recorded spam for alice: 13 messages (0 new, 0 relabelled, 13 already spam), 0 unreadable"]
    moved_out = run(db, "feedback", "alice", "--ham", str(mbox))
    assert moved_out.stdout.splitlines() == [
        "Recorded ham for alice: 5 messages (0 new, 5 relabelled, 0 already ham), 0 unreadable",
        "Refitted alice's personal weights in model v1 on 52 labels."]


def test_one_refit_per_call_and_labels_in_chunks(trained: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    from spamtl.services import feedback
    from spamtl.store.engine import make_engine

    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    junk = [make_mail(f"offer {i}", f"discount coupon {i}", sender="deals@shop.example") for i in range(25)]
    mbox = write_mbox(tmp / "junk.mbox", junk)
    refits: list[str] = []
    stores: list[int] = []
    real_refit, real_store = feedback._refit_user, feedback.label_messages
    monkeypatch.setattr(feedback, "_refit_user", lambda *a, **k: (refits.append(k["user"]), real_refit(*a, **k)))
    monkeypatch.setattr(feedback, "label_messages",
                        lambda *a, **k: (stores.append(len(k["raws"])), real_store(*a, **k))[1])
    engine = make_engine(db)
    try:
        result = feedback.record_feedback_batch(engine, Settings(database_url=db, chunk_size=10), user="bob",
                                                label="spam", paths=[str(mbox)], now=NOW)
    finally:
        engine.dispose()
    assert refits == ["bob"]
    assert stores == [10, 10, 5]
    assert (result.new, result.user_labels) == (25, 65)


def test_feedback_batch_unreadable_and_missing(trained: dict[str, object]) -> None:
    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    folder = tmp / "junk"
    folder.mkdir()
    (folder / "a.eml").write_bytes(make_mail("x", "y"))
    (folder / "b.eml").write_bytes(b"")
    result = run(db, "feedback", "bob", "--spam", str(folder))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "Recorded spam for bob: 1 messages (1 new, 0 relabelled, 0 already spam), 1 unreadable"
    missing = run(db, "feedback", "bob", "--spam", str(folder), str(tmp / "nope"))
    assert (missing.exit_code, missing.stderr.strip()) == (1, f"Error: no such file or directory: {tmp / 'nope'}")


def test_single_message_form_still_refits_and_reports_probabilities(trained: dict[str, object]) -> None:
    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    one = tmp / "one.eml"
    one.write_bytes(make_mail("garden newsletter 99", "roses tulips weekly", sender="news@garden.example"))
    out = json.loads(run(db, "feedback", "bob", "--spam", str(one), "--format", "json").stdout)
    assert out["label"] == "spam" and out["probability_after"] > out["probability_before"]


def test_cold_classify_imports_no_orm_and_no_daemon(trained: dict[str, object]) -> None:
    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    mail = tmp / "m.eml"
    mail.write_bytes(make_mail("meeting", "agenda"))
    code = ("import sys, runpy; sys.argv = ['spamtl', 'classify', 'alice', sys.argv[1], '--db', sys.argv[2]]\n"
            "try:\n    runpy.run_module('spamtl', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] == 'alembic'} | "
            "({'sqlalchemy.orm'} if 'sqlalchemy.orm' in sys.modules else set()) | "
            "({'spamtl.serve.daemon'} if 'spamtl.serve.daemon' in sys.modules else set())), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(mail), db], capture_output=True, timeout=60)
    assert b": ham (probability" in proc.stdout or b": unsure (probability" in proc.stdout, proc
    assert proc.stderr.decode().strip().splitlines()[-1] == "[]"


def test_a_feedback_process_refits_without_scikit_learn(trained: dict[str, object]) -> None:
    """The refit is numpy and scipy only (spamtl.model.refit): a `spamtl feedback` process never loads
    scikit-learn (about 0.4 s of CPU and 30 MB a process), nor the estimator that needs it."""
    db, tmp = str(trained["db"]), Path(str(trained["tmp"]))
    mail = tmp / "m.eml"
    mail.write_bytes(make_mail("garden newsletter 7", "roses tulips weekly", sender="news@garden.example"))
    code = ("import sys, runpy; sys.argv = ['spamtl', 'feedback', 'alice', '--spam', sys.argv[1], '--db', sys.argv[2]]\n"
            "try:\n    runpy.run_module('spamtl', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('sklearn', 'spamtl.model.estimator') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(mail), db], capture_output=True, timeout=120)
    assert b"Refitted alice's personal weights in model v1" in proc.stdout, proc
    assert proc.stderr.decode().strip().splitlines()[-1] == "[]"
