"""The demo: from the generated corpus to a trained, evaluated filter that takes a correction."""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spamtl.errors import redact
from spamtl.mail.sources import RawMail, iter_mail
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.services.classify import Verdict, classify_messages, open_reader
from spamtl.services.evaluate import Evaluation, evaluate
from spamtl.services.feedback import FeedbackResult, record_feedback
from spamtl.services.importing import ImportSummary, import_mail
from spamtl.services.training import TrainResult, train
from spamtl.settings import Settings
from spamtl.store.engine import make_engine, upgrade

__all__ = ["DemoReport", "corpus_folder", "run_demo", "summary", "next_commands"]


@dataclass
class DemoReport:
    database_url: str
    corpus: Path
    imports: list[ImportSummary] = field(default_factory=list)
    training: TrainResult | None = None
    evaluation: Evaluation | None = None
    incoming: list[tuple[str, str, Verdict]] = field(default_factory=list)  # (user, truth, verdict)
    feedback: FeedbackResult | None = None
    feedback_before: Verdict | None = None
    feedback_after: Verdict | None = None
    seconds: float = 0.0


def corpus_folder(target: Path | None = None) -> Path:
    """``data/demo`` of a source checkout, or a freshly generated copy (same seed) elsewhere."""
    checkout = Path(__file__).resolve().parents[2] / "data" / "demo"
    if (checkout / "users.json").exists():
        return checkout
    from spamtl.demo_corpus import write_corpus

    return write_corpus(target or Path(tempfile.mkdtemp(prefix="spamtl-demo-corpus-")))


def run_demo(database_url: str, *, now: datetime, corpus: Path | None = None, folds: int = 3,
             users: list[str] | None = None, progress: Progress = NO_PROGRESS) -> DemoReport:
    """Create the database, import, train, evaluate, classify held-back mail, apply one correction."""
    started = time.monotonic()
    folder = corpus or corpus_folder()
    meta = json.loads((folder / "users.json").read_text())["users"]
    names = users or list(meta)
    settings = Settings(database_url=database_url)
    engine = make_engine(database_url, create_dir=True)
    upgrade(engine)
    report = DemoReport(database_url=database_url, corpus=folder)
    progress.stage("import", 2 * len(names), unit="mailboxes")
    for user in names:
        for label in ("ham", "spam"):
            report.imports.append(import_mail(engine, user=user, paths=[str(folder / user / f"{label}.mbox")],
                                              label=label, group=meta[user]["group"], now=now))
            progress.advance(1)
    progress.stage("train")
    report.training = train(engine, settings, now=now)
    progress.stage("evaluate", folds=folds)  # against single-task learning
    report.evaluation = evaluate(engine, settings, folds=folds)
    progress.stage("classify", len(names), unit="users")  # the held-back mail
    reader = open_reader(engine, settings)
    for user in names:
        mails = [m for m in iter_mail([folder / user / "incoming.mbox"]) if isinstance(m, RawMail)]
        truths = meta[user]["incoming_truth"]
        for truth, verdict in zip(truths, classify_messages(reader, user=user, mails=mails, now=now)):
            assert isinstance(verdict, Verdict)
            report.incoming.append((user, truth, verdict))
        progress.advance(1)
    # The correction: the held-back message that a user's filter let through as ham (or unsure)
    # with the highest spam probability gets the user's "this is spam".
    candidates = [(v.probability, user, v) for user, truth, v in report.incoming if v.verdict != "spam"]
    if candidates:
        _, user, before = max(candidates, key=lambda c: c[0])
        raw = _raw_of(folder / user / "incoming.mbox", before.sha256)
        progress.stage("feedback", user=user)  # the user marks a message as spam
        report.feedback_before = before
        report.feedback = record_feedback(engine, settings, user=user, label="spam", raw=raw, now=now)
        reader.refresh()  # the refit is seen at once, as a daemon would see it
        [after] = list(classify_messages(reader, user=user, mails=[RawMail(before.origin, raw)], now=now))
        assert isinstance(after, Verdict)
        report.feedback_after = after
    reader.store.close()
    engine.dispose()
    report.seconds = time.monotonic() - started
    return report


def next_commands(report: DemoReport, folder: Path, executable: str) -> list[str]:
    """Commands to try after the demo that run as printed: the full path of this spamtl (``executable`` is its
    Python), and a held-back message saved in ``folder``.  The database URL is shown without its password."""
    script = Path(executable).parent / "spamtl"
    program = shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(executable)} -m spamtl"
    hints = [f"export SPAMTL_DATABASE_URL={shlex.quote(redact(report.database_url))}", f"{program} users"]
    message = _held_back_message(report)
    if message is not None:
        user, raw = message
        path = folder / "held-back.eml"
        path.write_bytes(raw)
        hints += [f"{program} classify {user} < {shlex.quote(str(path))}",
                  f"{program} explain {user} {shlex.quote(str(path))}",
                  f"{program} review {user} -n 3"]
    return [*hints, f"{program} evaluate --chronological", f"{program} models"]


def _held_back_message(report: DemoReport) -> tuple[str, bytes] | None:
    """(user, raw bytes) of the first held-back message the demo classified."""
    if not report.incoming:
        return None
    user, _, verdict = report.incoming[0]
    try:
        return user, _raw_of(report.corpus / user / "incoming.mbox", verdict.sha256)
    except LookupError:
        return None


def _raw_of(mbox: Path, sha256: str) -> bytes:
    from spamtl.services.classify import prepare

    for item in iter_mail([mbox]):
        if isinstance(item, RawMail) and prepare(item.raw).sha256 == sha256:
            return item.raw
    raise LookupError(sha256)


def summary(report: DemoReport) -> dict[str, Any]:
    """Counts of correct verdicts on the held-back mail."""
    right = sum(v.verdict == truth for _, truth, v in report.incoming)
    unsure = sum(v.verdict == "unsure" for _, _, v in report.incoming)
    return {"messages": len(report.incoming), "correct": right, "unsure": unsure}
