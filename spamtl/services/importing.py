"""Import labelled mail for a user: streaming, idempotent, chunked transactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.errors import SpamtlError, UsageError
from spamtl.mail.headers import message_identity
from spamtl.mail.sources import RawMail, Unreadable, count_mail, iter_mail
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.settings import validate_name
from spamtl.store import queries, statements
from spamtl.store.engine import transaction
from spamtl.store.schema import LABELS

__all__ = ["ImportSummary", "ImportInterrupted", "import_mail", "label_messages", "store_messages"]


@dataclass
class ImportSummary:
    """What an import did.  ``imported`` counts labels new to this user."""

    user: str
    label: str
    imported: int = 0
    known: int = 0
    relabelled: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "label": self.label, "imported": self.imported, "already_known": self.known,
                "relabelled": self.relabelled,
                "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable]}


class ImportInterrupted(SpamtlError):
    """Ctrl-C during an import: every committed chunk stays, the current one is rolled back."""

    exit_code = 130

    def __init__(self, summary: ImportSummary) -> None:
        super().__init__(f"import interrupted; {summary.imported + summary.relabelled} labels were saved "
                         "and the store is consistent; run the same import again to finish")
        self.summary = summary


def store_messages(*, session: Session, raws: Sequence[bytes], now: datetime) -> list[int]:
    """Primary keys of these messages, storing those not yet known (dedup by digest).

    A message is known by :func:`spamtl.mail.headers.message_identity`: a copy delivered with spamtl's
    verdict, CRLF line ends or a transport's trace fields on top is the message that was
    classified, and the first copy stored keeps its bytes (filter headers stripped, so a
    verdict is never learned).  Race-free: a message another process stores between the look-up and the
    insert is skipped by ``ON CONFLICT DO NOTHING`` and its id read back.
    """
    identities = [message_identity(r) for r in raws]
    pks = statements.store_messages(session, [(sha, kept, None) for kept, sha in identities], now=now)
    return [pks[sha] for _, sha in identities]


def mail_batches(items: Iterable[RawMail | Unreadable], size: int) -> Iterable[list[RawMail | Unreadable]]:
    """``items`` in lists of at most ``size``, read lazily (an mbox is never held whole)."""
    batch: list[RawMail | Unreadable] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def label_messages(engine: Engine, *, user_id: int, label: str, raws: list[bytes], source: str,
                   now: datetime) -> dict[str, int]:
    """Store a chunk of messages and give each ``label`` unless the user's latest label is already that,
    in one transaction; returns the counts of ``new``, ``known`` and ``relabelled`` messages."""
    counts = {"new": 0, "known": 0, "relabelled": 0}
    with transaction(engine, checked=False) as session:
        pks = store_messages(session=session, raws=raws, now=now)
        current = queries.latest_labels(session=session, user_id=user_id, message_ids=pks)
        new_rows = []
        for pk in pks:
            previous = current.get(pk)
            if previous == label:
                counts["known"] += 1
                continue
            counts["new" if previous is None else "relabelled"] += 1
            current[pk] = label  # the same message twice in one batch is known the second time
            new_rows.append({"user_id": user_id, "message_id": pk, "label": label,
                             "source": source, "created_at": now})
        queries.add_labels(session=session, rows=new_rows)
    return counts


def import_mail(engine: Engine, *, user: str, paths: Sequence[str], label: str, group: str | None = None,
                now: datetime, chunk_size: int = 1000, move_group: bool = False,
                progress: Progress = NO_PROGRESS) -> ImportSummary:
    """Import every message under ``paths`` as ``label`` for ``user``.

    Idempotent: a message already labelled the same way for this user counts
    as known; with the other label a new label is recorded and wins.  Each
    chunk of ``chunk_size`` messages is one transaction.  ``progress`` hears
    one stage, import, counting the messages read (unreadable ones included)
    against :func:`~spamtl.mail.sources.count_mail`'s estimate.
    """
    if label not in LABELS:
        raise UsageError(f"unknown label {label!r}; use one of: {', '.join(LABELS)}")
    validate_name(user)
    if group is not None:
        validate_name(group, "group")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or directory: {missing[0]}")
    summary = ImportSummary(user=user, label=label)
    with transaction(engine) as session:
        existing = queries.get_user(session=session, name=user)
        if (existing is not None and group is not None and existing.group_name not in (None, group)
                and not move_group):
            raise UsageError(f"{user} is in group {existing.group_name!r}; add --move-group to move them to {group!r}")
        user_id = queries.get_or_create_user(session=session, name=user, group=group, now=now).id
    try:
        progress.stage("import", count_mail(paths), unit="messages", user=user, label=label)
        for batch in mail_batches(iter_mail(paths), chunk_size):
            counts = label_messages(engine, user_id=user_id, label=label, source="import", now=now,
                                    raws=[m.raw for m in batch if isinstance(m, RawMail)])
            # Counted only once the chunk is committed, so an interrupted import reports what was saved.
            summary.imported += counts["new"]
            summary.known += counts["known"]
            summary.relabelled += counts["relabelled"]
            summary.unreadable += [(m.origin, m.reason) for m in batch if isinstance(m, Unreadable)]
            progress.advance(len(batch))
    except KeyboardInterrupt:
        raise ImportInterrupted(summary) from None
    except SpamtlError as exc:
        # A full disk or a lost lock half-way: say what is safely stored, so the user knows
        # that running the same import again finishes the job (it is idempotent).
        saved = summary.imported + summary.relabelled
        raise type(exc)(f"{exc}; {saved} labels were saved before it stopped, and running the same "
                        "import again adds the rest") from None
    return summary
