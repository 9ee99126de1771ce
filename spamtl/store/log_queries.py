"""Queries on the classification log (history, review queue).  Take ``session`` as a keyword, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from spamtl.store.schema import Classification, Label, Message, User

__all__ = ["recent_classifications", "labels_of", "labelled_classifications", "classification_counts",
           "unlabelled_recent"]

_IN_CHUNK = 900


def recent_classifications(*, session: Session, user_id: int, since: datetime | None,
                           limit: int) -> list[Any]:
    """The user's latest classifications, newest first, with their message's id, sha256 and subject."""
    stmt = (select(Classification.id, Classification.message_id, Classification.created_at,
                   Classification.verdict, Classification.probability, Classification.model_version_id,
                   Message.sha256, Message.message_id.label("mid"), Message.subject)
            .join(Message, Message.id == Classification.message_id)
            .where(Classification.user_id == user_id))
    if since is not None:
        stmt = stmt.where(Classification.created_at >= since)
    stmt = stmt.order_by(Classification.created_at.desc(), Classification.id.desc()).limit(limit)
    return list(session.execute(stmt))


def labels_of(*, session: Session, user_id: int, message_pks: Sequence[int]) -> list[Any]:
    """(message_id, label, created_at, id) of every label the user gave these messages, oldest first."""
    out: list[Any] = []
    pks = sorted(set(message_pks))
    for i in range(0, len(pks), _IN_CHUNK):
        chunk = pks[i:i + _IN_CHUNK]
        out += session.execute(
            select(Label.message_id, Label.label, Label.created_at, Label.id)
            .where(Label.user_id == user_id, Label.message_id.in_(chunk))
            .order_by(Label.created_at, Label.id)).all()
    return out


def labelled_classifications(*, session: Session, user_id: int | None, since: datetime | None) -> list[Any]:
    """(user name, user id, message pk, created_at, verdict) of classifications whose message the user labelled."""
    labelled = exists().where(and_(Label.user_id == Classification.user_id,
                                   Label.message_id == Classification.message_id))
    stmt = (select(User.name, Classification.user_id, Classification.message_id, Classification.created_at,
                   Classification.verdict)
            .join(User, User.id == Classification.user_id).where(labelled))
    if user_id is not None:
        stmt = stmt.where(Classification.user_id == user_id)
    if since is not None:
        stmt = stmt.where(Classification.created_at >= since)
    return list(session.execute(stmt.order_by(Classification.created_at, Classification.id)))


def classification_counts(*, session: Session, user_id: int | None, since: datetime | None) -> dict[str, int]:
    """User name -> number of classifications (in the period)."""
    stmt = (select(User.name, func.count(Classification.id))
            .join(User, User.id == Classification.user_id).group_by(User.name))
    if user_id is not None:
        stmt = stmt.where(Classification.user_id == user_id)
    if since is not None:
        stmt = stmt.where(Classification.created_at >= since)
    return {name: int(n) for name, n in session.execute(stmt)}


def unlabelled_recent(*, session: Session, user_id: int, limit: int) -> list[Any]:
    """(message pk, sha256, Message-ID, subject) of messages classified for the user, text still stored,
    not labelled by them; most recently classified first, at most ``limit``."""
    labelled = exists().where(and_(Label.user_id == user_id, Label.message_id == Classification.message_id))
    last = func.max(Classification.created_at).label("last")
    stmt = (select(Classification.message_id, Message.sha256, Message.message_id.label("mid"), Message.subject,
                   last)
            .join(Message, Message.id == Classification.message_id)
            .where(Classification.user_id == user_id, ~labelled, Message.raw.is_not(None),
                   func.length(Message.raw) > 0)
            .group_by(Classification.message_id, Message.sha256, Message.message_id, Message.subject)
            .order_by(last.desc(), Classification.message_id.desc()).limit(limit))
    return list(session.execute(stmt))


def raw_of(*, session: Session, message_pks: Sequence[int]) -> dict[int, bytes]:
    """Compressed raw bytes of these messages (as stored)."""
    out: dict[int, bytes] = {}
    pks = list(message_pks)
    for i in range(0, len(pks), _IN_CHUNK):
        for pk, data in session.execute(select(Message.id, Message.raw).where(Message.id.in_(pks[i:i + _IN_CHUNK]))):
            out[int(pk)] = data
    return out
