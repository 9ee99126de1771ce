"""Queries on the store for the services: every function takes ``session`` as a keyword and never commits.

The scoring path's statements, and the one way to store mail and users, are in
:mod:`spamtl.store.statements`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, and_, delete, exists, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from spamtl.store.schema import (
    Classification,
    Label,
    Message,
    MessageFeatures,
    ModelPart,
    ModelVersion,
    StoreState,
    User,
    UserCutoff,
)
from spamtl.store.statements import chunks, compress, create_user, decompress

__all__ = [
    "UserCounts",
    "LabelledMessage",
    "LoggedScore",
    "get_user",
    "get_or_create_user",
    "message_ids_by_sha",
    "latest_labels",
    "add_labels",
    "user_counts",
    "current_labels",
    "labels_to_learn",
    "recent_classifications",
    "compress",
    "decompress",
]

def _pairs(result: Any) -> dict[Any, Any]:
    """A two-column result as a dict (a Result has .keys(), so dict.update would misread it)."""
    return {a: b for a, b in result}


def upsert(session: Session, model: Any, keys: Sequence[str], update_columns: Sequence[str] = ()) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` (or ``DO UPDATE SET`` the ``update_columns``).

    Every write that two processes can race on (the same new message, a new
    user's first messages, the same feature row, a user's model part) goes
    through this, so the loser of the race finds the winner's row instead of
    crashing on a unique constraint.  SQLite (3.24+) and PostgreSQL (9.5+)
    share the syntax; SQLAlchemy has a dialect-specific construct for each.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(model)
    elif dialect == "sqlite":
        stmt = sqlite.insert(model)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported stores
        raise NotImplementedError(f"no upsert for the {dialect} dialect; use SQLite or PostgreSQL")
    if not update_columns:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={c: getattr(stmt.excluded, c) for c in update_columns})


def get_user(*, session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.name == name)).one_or_none()


def get_or_create_user(*, session: Session, name: str, group: str | None, now: datetime) -> User:
    """The user called ``name``; created if new (race-free).  A given ``group`` replaces the stored one."""
    user = get_user(session=session, name=name)
    if user is None:
        create_user(session, name=name, group=group, now=now)
        user = get_user(session=session, name=name)
        assert user is not None  # inserted now, or by whoever won the race
    if group is not None and user.group_name != group:
        user.group_name = group
    return user


def message_ids_by_sha(*, session: Session, shas: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in chunks(list(shas)):
        out.update(_pairs(session.execute(select(Message.sha256, Message.id).where(Message.sha256.in_(chunk)))))
    return out


def message_ids_by_sha_prefix(*, session: Session, prefix: str, limit: int = 2) -> list[int]:
    """Ids of messages whose sha256 starts with ``prefix`` (a range scan on the unique index)."""
    upper = prefix + "g"  # 'g' sorts after every hex digit
    return list(session.scalars(select(Message.id).where(Message.sha256 >= prefix, Message.sha256 < upper)
                                .order_by(Message.sha256).limit(limit)))


def message_ids_by_message_id(*, session: Session, message_id: str) -> list[int]:
    return list(session.scalars(select(Message.id).where(Message.message_id == message_id)))


def latest_labels(*, session: Session, user_id: int, message_ids: Sequence[int]) -> dict[int, str]:
    """The current (latest) label of each given message for one user."""
    out: dict[int, str] = {}
    for chunk in chunks(list(message_ids)):
        latest = (select(func.max(Label.id)).where(Label.user_id == user_id, Label.message_id.in_(chunk))
                  .group_by(Label.message_id))
        out.update(_pairs(session.execute(select(Label.message_id, Label.label).where(Label.id.in_(latest)))))
    return out


def add_labels(*, session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(Label), rows)


def delete_labels(*, session: Session, user_id: int, message_ids: Sequence[int]) -> int:
    """Remove every label (history included) one user gave these messages; the number removed."""
    removed = 0
    for chunk in chunks(list(message_ids)):
        removed += session.execute(delete(Label).where(Label.user_id == user_id,
                                                       Label.message_id.in_(chunk))).rowcount or 0  # type: ignore[attr-defined]
    return removed


def _current_labels_subquery(user_ids: Sequence[int] | None = None) -> Any:
    q = select(func.max(Label.id).label("id")).group_by(Label.user_id, Label.message_id)
    if user_ids is not None:
        q = q.where(Label.user_id.in_(user_ids))
    return q.subquery()


@dataclass(frozen=True)
class UserCounts:
    user: str
    group: str | None
    ham: int
    spam: int


def user_counts(*, session: Session) -> list[UserCounts]:
    """Every user with the counts of their current ham and spam labels, by name."""
    current = _current_labels_subquery()
    counts = (select(Label.user_id, Label.label, func.count().label("n"))
              .join(current, current.c.id == Label.id).group_by(Label.user_id, Label.label).subquery())
    rows = session.execute(
        select(User.name, User.group_name, counts.c.label, counts.c.n)
        .outerjoin(counts, counts.c.user_id == User.id).order_by(User.name)
    ).all()
    table: dict[str, dict[str, Any]] = {}
    for name, group, label, n in rows:
        entry = table.setdefault(name, {"group": group, "ham": 0, "spam": 0})
        if label is not None:
            entry[label] = int(n)
    return [UserCounts(name, e["group"], e["ham"], e["spam"]) for name, e in table.items()]


@dataclass(frozen=True)
class LabelledMessage:
    """A current label: which user, which message, spam or not, and when."""

    user: str
    message_pk: int
    is_spam: bool
    date: datetime | None
    labelled_at: datetime


def current_labels(*, session: Session, users: Sequence[str] | None = None) -> list[LabelledMessage]:
    """All current labels (latest per user and message), optionally for some users only."""
    current = _current_labels_subquery()
    q = (select(User.name, Label.message_id, Label.label, Message.date, Label.created_at)
         .join(current, current.c.id == Label.id).join(User, User.id == Label.user_id)
         .join(Message, Message.id == Label.message_id).order_by(User.name, Label.message_id))
    if users is not None:
        q = q.where(User.name.in_(users))
    return [LabelledMessage(u, m, lab == "spam", d, c) for u, m, lab, d, c in session.execute(q)]


def users_by_name(*, session: Session) -> dict[str, User]:
    return {u.name: u for u in session.scalars(select(User))}


def raw_messages(*, session: Session, message_pks: Sequence[int]) -> Iterator[tuple[int, bytes]]:
    """(id, raw bytes) of the given messages, decompressed, streamed in chunks.

    Messages whose body retention has dropped (``raw`` NULL) are left out.
    """
    for chunk in chunks(list(message_pks)):
        for pk, data in session.execute(select(Message.id, Message.raw).where(
                Message.id.in_(chunk), Message.raw.is_not(None))):
            yield pk, decompress(data or b"")


def cached_features(*, session: Session, message_pks: Sequence[int], feature_key: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for chunk in chunks(list(message_pks)):
        out.update(_pairs(session.execute(
            select(MessageFeatures.message_id, MessageFeatures.data)
            .where(MessageFeatures.feature_key == feature_key, MessageFeatures.message_id.in_(chunk)))))
    return out


def store_features(*, session: Session, rows: Iterable[tuple[int, bytes]], feature_key: str) -> None:
    """Cache feature rows; a row another process cached meanwhile is kept (features are deterministic)."""
    values = [{"message_id": pk, "feature_key": feature_key, "data": data} for pk, data in rows]
    if values:
        session.execute(upsert(session, MessageFeatures, ["message_id", "feature_key"]), values)


# ------------------------------------------------------------------- models
def active_model(*, session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).one_or_none()


def model_versions(*, session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def model_part(*, session: Session, version_id: int, kind: str, name: str = "") -> bytes | None:
    return session.scalars(select(ModelPart.data).where(
        ModelPart.model_version_id == version_id, ModelPart.kind == kind, ModelPart.name == name)).one_or_none()


def model_parts(*, session: Session, version_id: int, kind: str) -> dict[str, bytes]:
    return _pairs(session.execute(select(ModelPart.name, ModelPart.data).where(
        ModelPart.model_version_id == version_id, ModelPart.kind == kind)))


def bump_generation(*, session: Session) -> int:
    """Advance the store generation (see ``StoreState``) in this transaction; returns the new value.

    Call it in every transaction that changes what a score or verdict would be,
    so that a running ``spamtl serve`` reloads what changed.
    """
    session.execute(update(StoreState).where(StoreState.key == "generation").values(value=StoreState.value + 1))
    value = session.scalars(select(StoreState.value).where(StoreState.key == "generation")).one_or_none()
    if value is None:  # a store migrated without the row (never by spamtl's migrations): start it
        session.add(StoreState(key="generation", value=1))
        session.flush()
        value = 1
    return int(value)


USERS_CHANGED = "users_changed"
"""The ``StoreState`` key holding the generation at which a user was last deleted or renamed."""


def mark_users_changed(*, session: Session) -> None:
    """Advance the generation and record it as the last at which a user went away or changed name.

    A reader cannot see a deleted row change, so a long-running reader that
    finds this value above the generation it last saw drops every user slice it
    holds (the user ids and names it cached may no longer be theirs).
    """
    generation = bump_generation(session=session)
    session.execute(upsert(session, StoreState, ["key"], ["value"]).values(key=USERS_CHANGED, value=generation))


def add_model_parts(*, session: Session, version_id: int, parts: Iterable[tuple[str, str, bytes]]) -> None:
    parts = list(parts)
    if parts:
        revision = bump_generation(session=session)
        session.execute(insert(ModelPart), [{"model_version_id": version_id, "kind": k, "name": n, "data": d,
                                             "revision": revision} for k, n, d in parts])


def upsert_model_part(*, session: Session, version_id: int, kind: str, name: str, data: bytes) -> None:
    """Insert or replace one part of a model (the last writer wins), at a new store generation."""
    revision = bump_generation(session=session)
    session.execute(upsert(session, ModelPart, ["model_version_id", "kind", "name"], ["data", "revision"])
                    .values(model_version_id=version_id, kind=kind, name=name, data=data, revision=revision))


def set_active(*, session: Session, version_id: int) -> None:
    """Make ``version_id`` the only active version (the previous one becomes retired)."""
    session.execute(update(ModelVersion).where(ModelVersion.status == "active", ModelVersion.id != version_id)
                    .values(status="retired"))
    session.flush()
    session.execute(update(ModelVersion).where(ModelVersion.id == version_id).values(status="active"))
    bump_generation(session=session)


# ---------------------------------------------------------------- retention
def _labelled(message_col: Any) -> Any:
    return select(Label.id).where(Label.message_id == message_col).exists()


def _classified(message_col: Any) -> Any:
    return select(Classification.id).where(Classification.message_id == message_col).exists()


def drop_unlabelled_bodies(*, session: Session, before: datetime) -> int:
    """Set ``raw`` NULL for mail that no user labelled and that nobody received or was told about since
    ``before`` (its age counts from its latest verdict: yesterday's verdict can still be corrected); how many."""
    recent_verdict = (select(Classification.id).where(Classification.message_id == Message.id,
                                                      Classification.created_at >= before).exists())
    bodiless = (select(Message.id).where(Message.raw.is_not(None), Message.received_at < before,
                                         ~_labelled(Message.id), ~recent_verdict))
    session.execute(delete(MessageFeatures).where(MessageFeatures.message_id.in_(bodiless)))
    result = session.execute(update(Message).where(Message.id.in_(bodiless)).values(raw=None)
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete_classifications(*, session: Session, before: datetime) -> int:
    result = session.execute(delete(Classification).where(Classification.created_at < before)
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete_unreferenced_messages(*, session: Session, before: datetime) -> int:
    """Delete messages received before ``before`` that no label and no classification refers to.

    Only old ones: a message is stored in the same transaction as its label or
    verdict, but the age limit keeps this safe even for a writer that did not.
    """
    result = session.execute(delete(Message).where(Message.received_at < before, ~_labelled(Message.id),
                                                   ~_classified(Message.id))
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def versions_with_weights(*, session: Session) -> set[int]:
    return set(session.scalars(select(ModelPart.model_version_id).distinct()))


def drop_model_parts(*, session: Session, version_ids: Sequence[int]) -> int:
    """Delete every part (the weights) of these versions; their rows and metrics stay."""
    if not version_ids:
        return 0
    result = session.execute(delete(ModelPart).where(ModelPart.model_version_id.in_(list(version_ids)))
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


# ------------------------------------------------------- classification log

def recent_classifications(*, session: Session, user_id: int, since: datetime | None,
                           limit: int, before: tuple[datetime, int] | None = None) -> list[Any]:
    """The user's latest classifications, newest first, with their message's id, sha256 and subject.

    ``before``: (created_at, id) of a classification; only older ones are listed (the next page).
    """
    stmt = (select(Classification.id, Classification.message_id, Classification.created_at,
                   Classification.verdict, Classification.probability, Classification.model_version_id,
                   Message.sha256, Message.message_id.label("mid"), Message.subject)
            .join(Message, Message.id == Classification.message_id)
            .where(Classification.user_id == user_id))
    if since is not None:
        stmt = stmt.where(Classification.created_at >= since)
    if before is not None:
        at, pk = before
        # A row-value comparison: the index (user_id, created_at) then bounds the scan, so a deep page reads
        # about one page of index entries (an OR of the two cases scans every newer verdict of the user).
        stmt = stmt.where(tuple_(Classification.created_at, Classification.id) < tuple_(at, pk))
    stmt = stmt.order_by(Classification.created_at.desc(), Classification.id.desc()).limit(limit)
    return list(session.execute(stmt))


def labels_of(*, session: Session, user_id: int, message_pks: Sequence[int]) -> list[Any]:
    """(message_id, label, created_at, id) of every label the user gave these messages, oldest first."""
    out: list[Any] = []
    pks = sorted(set(message_pks))
    for chunk in chunks(pks):
        out += session.execute(
            select(Label.message_id, Label.label, Label.created_at, Label.id)
            .where(Label.user_id == user_id, Label.message_id.in_(chunk))
            .order_by(Label.created_at, Label.id)).all()
    return out


def recent_feedback(*, session: Session, user_id: int, limit: int) -> list[Any]:
    """The user's corrections (labels from feedback), newest first: label, created_at, message sha256,
    Message-ID and subject."""
    stmt = (select(Label.id, Label.label, Label.created_at, Label.message_id, Message.sha256,
                   Message.message_id.label("mid"), Message.subject)
            .join(Message, Message.id == Label.message_id)
            .where(Label.user_id == user_id, Label.source == "feedback")
            .order_by(Label.created_at.desc(), Label.id.desc()).limit(limit))
    return list(session.execute(stmt))


def classifications_of(*, session: Session, user_id: int, message_pks: Sequence[int]) -> dict[int, list[Any]]:
    """Per message: the user's classifications of it (verdict, probability, created_at), oldest first."""
    out: dict[int, list[Any]] = {}
    for chunk in chunks(sorted(set(message_pks))):
        for row in session.execute(
                select(Classification.message_id, Classification.verdict, Classification.probability,
                       Classification.created_at)
                .where(Classification.user_id == user_id, Classification.message_id.in_(chunk))
                .order_by(Classification.created_at, Classification.id)):
            out.setdefault(row.message_id, []).append(row)
    return out


def user_has_message(*, session: Session, user_id: int, message_pk: int) -> bool:
    """Whether the message was classified for or labelled by the user (theirs to see)."""
    for table in (Classification, Label):
        found = session.scalar(select(table.id).where(table.user_id == user_id, table.message_id == message_pk)
                               .limit(1))
        if found is not None:
            return True
    return False


def daily_counts(*, session: Session, since: datetime) -> tuple[list[Any], list[Any]]:
    """Since ``since``, per day: (day, verdict, n) of classifications and (day, label, n) of corrections
    (labels from feedback); ``day`` as the database gives ``date()`` (a date or an ISO string)."""
    cday = func.date(Classification.created_at).label("day")
    verdicts = session.execute(select(cday, Classification.verdict, func.count())
                               .where(Classification.created_at >= since)
                               .group_by(cday, Classification.verdict)).all()
    lday = func.date(Label.created_at).label("day")
    feedback = session.execute(select(lday, Label.label, func.count())
                               .where(Label.created_at >= since, Label.source == "feedback")
                               .group_by(lday, Label.label)).all()
    return list(verdicts), list(feedback)


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


# ----------------------------------------------------------------- learning

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
    labels = current_labels(session=session, users=users)
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
