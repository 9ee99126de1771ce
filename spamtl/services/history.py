"""What spamtl said about which message, and whether the user later corrected it.

A classification is *corrected* when the user labelled that message after it
was classified, with the other label (their latest such label counts);
*confirmed* when the label agrees; *labelled* when the verdict was unsure.
A false positive is a spam verdict corrected to ham; a false negative a ham
verdict corrected to spam.  The error counts take, per (user, message), the
user's latest label and the last classification made before it, so a
message classified twice and corrected once counts once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.errors import NotFoundError
from spamtl.services.users import existing_user
from spamtl.settings import validate_name
from spamtl.store import queries
from spamtl.store.engine import transaction

__all__ = ["HistoryEntry", "ErrorCounts", "History", "history", "MAX_ENTRIES", "Correction", "corrections",
           "DailyActivity", "daily_activity", "user_message"]

MAX_ENTRIES = 10_000
"""Most classifications one ``history`` call lists (``-n`` is capped here)."""


@dataclass
class HistoryEntry:
    id: str
    sha256: str
    message_id: str | None
    subject: str | None
    classified_at: datetime
    verdict: str
    probability: float
    model_version: int | None
    outcome: str | None = None  # corrected | confirmed | labelled | None (no label since)
    label: str | None = None
    labelled_at: datetime | None = None
    key: int = 0  # the classification's row id: with classified_at, where the next page starts

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "message_id": self.message_id, "subject": self.subject,
                "classified_at": self.classified_at.isoformat(sep=" "), "verdict": self.verdict,
                "probability": round(self.probability, 6), "model_version": self.model_version,
                "outcome": self.outcome, "label": self.label,
                "labelled_at": self.labelled_at.isoformat(sep=" ") if self.labelled_at else None}


@dataclass
class ErrorCounts:
    user: str
    classifications: int = 0
    labelled: int = 0  # messages the user labelled after a classification
    confirmed: int = 0
    false_positives: int = 0  # said spam, user says ham
    false_negatives: int = 0  # said ham, user says spam
    unsure_labelled: int = 0

    def add(self, other: ErrorCounts) -> None:
        for name in ("classifications", "labelled", "confirmed", "false_positives", "false_negatives",
                     "unsure_labelled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class History:
    user: str | None
    since: datetime | None
    entries: list[HistoryEntry]
    users: list[ErrorCounts]
    overall: ErrorCounts = field(default_factory=lambda: ErrorCounts(user="ALL"))

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "since": self.since.isoformat(sep=" ") if self.since else None,
                "entries": [e.as_dict() for e in self.entries],
                "summary": {"users": [c.as_dict() for c in self.users], "overall": self.overall.as_dict()}}


def _outcome(verdict: str, label: str) -> str:
    if verdict not in ("spam", "ham"):
        return "labelled"
    return "confirmed" if verdict == label else "corrected"


def history(engine: Engine, *, user: str | None, since: datetime | None = None, limit: int = 20,
            entries: bool = True, counts: bool = True, before: tuple[datetime, int] | None = None) -> History:
    """The classification log of ``user`` (newest first, at most ``limit``) and error counts.

    With ``user`` None, no entries: error counts for every user and overall.  ``counts`` False skips
    the error counts (they read every labelled verdict); ``before``: the (classified_at, key) of the
    last entry of the previous page.
    """
    if user is not None:
        validate_name(user)
    limit = max(0, min(int(limit), MAX_ENTRIES))
    with transaction(engine) as session:
        user_id = None
        if user is not None:
            user_id = existing_user(session, user).id
        items: list[HistoryEntry] = []
        if user_id is not None and entries and limit:
            items = _entries(session, user_id, since, limit, before)
        tallies = _error_counts(session, user_id, since) if counts else {}
    users = [tallies[name] for name in sorted(tallies)]
    overall = ErrorCounts(user="ALL")
    for c in users:
        overall.add(c)
    return History(user=user, since=since, entries=items, users=users, overall=overall)


def _entries(session: Session, user_id: int, since: datetime | None, limit: int,
             before: tuple[datetime, int] | None) -> list[HistoryEntry]:
    """The user's latest classifications, each with the latest label given after it."""
    rows = queries.recent_classifications(session=session, user_id=user_id, since=since, limit=limit,
                                          before=before)
    labels = queries.labels_of(session=session, user_id=user_id, message_pks=[r.message_id for r in rows])
    by_message: dict[int, list[Any]] = defaultdict(list)
    for lab in labels:
        by_message[lab.message_id].append(lab)
    items = []
    for r in rows:
        entry = HistoryEntry(id=r.sha256[:12], sha256=r.sha256, message_id=r.mid, subject=r.subject,
                             classified_at=r.created_at, verdict=r.verdict, probability=float(r.probability),
                             model_version=r.model_version_id, key=r.id)
        after = [lab for lab in by_message.get(r.message_id, []) if lab.created_at >= r.created_at]
        if after:
            latest = after[-1]
            entry.label, entry.labelled_at = latest.label, latest.created_at
            entry.outcome = _outcome(r.verdict, latest.label)
        items.append(entry)
    return items


def _error_counts(session: Session, user_id: int | None, since: datetime | None) -> dict[str, ErrorCounts]:
    """Per user name: the latest label of each (user, message) against the last verdict before it."""
    counts = {name: ErrorCounts(user=name, classifications=n) for name, n in
              queries.classification_counts(session=session, user_id=user_id, since=since).items()}
    pairs: dict[tuple[int, int], list[Any]] = defaultdict(list)
    names: dict[int, str] = {}
    for c in queries.labelled_classifications(session=session, user_id=user_id, since=since):
        pairs[(c.user_id, c.message_id)].append(c)
        names[c.user_id] = c.name
    per_user: dict[int, list[int]] = defaultdict(list)
    for uid, pk in pairs:
        per_user[uid].append(pk)
    for uid, pks in per_user.items():
        labels_by_pk: dict[int, list[Any]] = defaultdict(list)
        for lab in queries.labels_of(session=session, user_id=uid, message_pks=pks):
            labels_by_pk[lab.message_id].append(lab)
        tally = counts.setdefault(names[uid], ErrorCounts(user=names[uid]))
        for pk in pks:
            if not labels_by_pk.get(pk):
                continue
            final = labels_by_pk[pk][-1]
            before = [c for c in pairs[(uid, pk)] if c.created_at <= final.created_at]
            if not before:
                continue
            verdict = before[-1].verdict
            tally.labelled += 1
            outcome = _outcome(verdict, final.label)
            if outcome == "confirmed":
                tally.confirmed += 1
            elif outcome == "labelled":
                tally.unsure_labelled += 1
            elif verdict == "spam":
                tally.false_positives += 1
            else:
                tally.false_negatives += 1
    return counts


@dataclass(frozen=True)
class Correction:
    """A label the user gave through feedback, and what the filter had said before it."""

    id: str
    sha256: str
    message_id: str | None
    subject: str | None
    label: str
    labelled_at: datetime
    verdict: str | None  # the latest verdict before the label (None: never classified for the user)
    probability: float | None


def corrections(engine: Engine, *, user: str, limit: int = 50) -> list[Correction]:
    """The user's corrections, newest first (at most ``limit``), each with the verdict it corrected."""
    validate_name(user)
    limit = max(0, min(int(limit), MAX_ENTRIES))
    with transaction(engine) as session:
        user_id = existing_user(session, user).id
        rows = queries.recent_feedback(session=session, user_id=user_id, limit=limit)
        said = queries.classifications_of(session=session, user_id=user_id,
                                          message_pks=[r.message_id for r in rows])
    out = []
    for r in rows:
        # the last verdict before the label (one given after it was decided by the label)
        before = next((c for c in reversed(said.get(r.message_id, [])) if c.created_at <= r.created_at), None)
        out.append(Correction(id=r.sha256[:12], sha256=r.sha256, message_id=r.mid, subject=r.subject,
                              label=r.label, labelled_at=r.created_at,
                              verdict=None if before is None else before.verdict,
                              probability=None if before is None else float(before.probability)))
    return out


@dataclass
class DailyActivity:
    """Per day (ISO date, oldest first): verdicts by class and corrections by label, over all users."""

    days: list[str]
    verdicts: dict[str, list[int]]  # verdict -> count per day
    corrections: dict[str, list[int]]  # label -> count per day


def daily_activity(engine: Engine, *, days: int, now: datetime) -> DailyActivity:
    """The last ``days`` days of the classification log and of corrections (today included)."""
    from datetime import timedelta

    from spamtl.store.schema import LABELS, VERDICTS

    first = (now - timedelta(days=days - 1)).date()
    names = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    index = {d: i for i, d in enumerate(names)}
    since = datetime(first.year, first.month, first.day)
    with transaction(engine) as session:
        verdict_rows, label_rows = queries.daily_counts(session=session, since=since)
    verdicts = {v: [0] * days for v in VERDICTS}
    feedback = {v: [0] * days for v in LABELS}
    for table, rows in ((verdicts, verdict_rows), (feedback, label_rows)):
        for day, kind, n in rows:
            i = index.get(str(day)[:10])
            if i is not None and kind in table:
                table[kind][i] += int(n)
    return DailyActivity(days=names, verdicts=verdicts, corrections=feedback)


def user_message(engine: Engine, *, user: str, sha256: str) -> int:
    """The stored message ``sha256`` if it is ``user``'s (classified for or labelled by them), else the
    same NotFoundError as for a message that does not exist: nobody learns what another user received."""
    validate_name(user)
    missing = NotFoundError(f"no message {sha256[:12]!r} for {user}")
    with transaction(engine) as session:
        user_id = existing_user(session, user).id
        found = queries.message_ids_by_sha(session=session, shas=[sha256.lower()])
        pk = found.get(sha256.lower())
        if pk is None or not queries.user_has_message(session=session, user_id=user_id, message_pk=pk):
            raise missing
        return pk
