"""Queries for learning (nightly training's gate and cutoffs, feedback refits, admin cutoffs).

Every function takes ``session`` as a keyword and never commits (as in
:mod:`spamtl.store.queries`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.orm import Session

from spamtl.store import queries
from spamtl.store.queries import LabelledMessage, bump_generation
from spamtl.store.schema import Classification, Label, Message, User, UserCutoff

__all__ = ["LoggedScore", "logged_scores_before_labels", "uncorrected_verdicts", "labels_to_learn", "label_sources", "add_user_cutoffs",
           "set_user_override"]


@dataclass(frozen=True)
class LoggedScore:
    """What a model version said about a message for a user, before anyone had labelled that message."""

    user: str
    message_pk: int
    probability: float


def logged_scores_before_labels(*, session: Session, version_id: int) -> list[LoggedScore]:
    """Out-of-sample scores of model ``version_id`` from the classification log.

    A classification counts only if it was logged before the first label any
    user gave that message: no model existing at that time (training or
    feedback refit) can have been fitted on it.  Of several such
    classifications of a (user, message) the latest wins.
    """
    first_label = (select(Label.message_id, func.min(Label.created_at).label("first"))
                   .group_by(Label.message_id).subquery())
    q = (select(User.name, Classification.message_id, Classification.probability, Classification.id)
         .join(User, User.id == Classification.user_id)
         .join(first_label, first_label.c.message_id == Classification.message_id)
         .where(Classification.model_version_id == version_id, Classification.verdict != "error",
                Classification.created_at < first_label.c.first)
         .order_by(Classification.id))
    latest: dict[tuple[str, int], float] = {}
    for name, pk, probability, _ in session.execute(q):
        latest[(name, int(pk))] = float(probability)
    return [LoggedScore(u, pk, p) for (u, pk), p in latest.items()]


def uncorrected_verdicts(*, session: Session, since: datetime, until: datetime,
                         users: Sequence[str] | None = None) -> list[LabelledMessage]:
    """Verdicts logged between ``since`` and ``until`` that their user never corrected, as labels.

    Per (user, message) the latest classification in that window counts, if
    it said spam or ham (never unsure or error) and the user has no label on
    that message at all (any label, even a later one, means the user spoke
    for themselves).  ``labelled_at`` is when the verdict was logged.
    """
    latest = (select(func.max(Classification.id).label("id"))
              .where(Classification.created_at >= since, Classification.created_at <= until)
              .group_by(Classification.user_id, Classification.message_id).subquery())
    labelled = exists().where(and_(Label.user_id == Classification.user_id,
                                   Label.message_id == Classification.message_id))
    q = (select(User.name, Classification.message_id, Classification.verdict, Message.date,
                Classification.created_at)
         .join(latest, latest.c.id == Classification.id)
         .join(User, User.id == Classification.user_id)
         .join(Message, Message.id == Classification.message_id)
         .where(Classification.verdict.in_(("spam", "ham")), ~labelled)
         .order_by(User.name, Classification.message_id))
    if users is not None:
        q = q.where(User.name.in_(users))
    return [LabelledMessage(u, int(m), v == "spam", d, c) for u, m, v, d, c in session.execute(q)]


def labels_to_learn(*, session: Session, users: Sequence[str] | None = None,
                    window: tuple[datetime, datetime] | None = None) -> tuple[list[LabelledMessage], int]:
    """What a fit learns: every current label, then (with ``window``) the uncorrected verdicts logged in it.

    Returns the list and how many of its first entries are the users' own labels.
    """
    labels = queries.current_labels(session=session, users=users)
    given = len(labels)
    if window is not None:
        labels += uncorrected_verdicts(session=session, since=window[0], until=window[1], users=users)
    return labels, given


def label_sources(*, session: Session, user_id: int) -> dict[int, str]:
    """The source ('import' or 'feedback') of each current label of one user, by message id."""
    latest = (select(func.max(Label.id)).where(Label.user_id == user_id).group_by(Label.message_id))
    return {int(m): str(s) for m, s in session.execute(
        select(Label.message_id, Label.source).where(Label.id.in_(latest)))}


def add_user_cutoffs(*, session: Session, version_id: int, rows: Iterable[tuple[str, float, float, str]]) -> None:
    """Store the cutoffs a training set for each user, with its version (rolled back with it)."""
    values = [{"model_version_id": version_id, "user_name": u, "spam_cutoff": s, "ham_cutoff": h,
               "source": src[:255]} for u, s, h, src in rows]
    if values:
        session.execute(insert(UserCutoff), values)


def set_user_override(*, session: Session, user_id: int, spam: float | None, ham: float | None) -> None:
    """Set (or, with None, clear) an administrator's cutoffs for one user; bumps the generation."""
    session.execute(update(User).where(User.id == user_id).values(spam_cutoff=spam, ham_cutoff=ham))
    bump_generation(session=session)
