"""SQLAlchemy 2.0 tables of the store.

The schema is created and changed only by Alembic revisions in
``migrations/``; these classes are what the revisions must produce (a test
diffs the migrated database against this metadata).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A naming convention makes constraint names deterministic, which SQLite batch
# migrations need to find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LABELS = ("ham", "spam")
LABEL_SOURCES = ("import", "feedback")
VERDICTS = ("spam", "ham", "unsure", "error")
MODEL_STATUSES = ("candidate", "active", "retired", "rejected")
PART_KINDS = ("shared", "group", "user", "idf")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A mailbox owner: one learning task."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    group_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # An administrator's cutoffs for this user (None: the model version's cutoffs, then the global ones).
    spam_cutoff: Mapped[float | None] = mapped_column(Float)
    ham_cutoff: Mapped[float | None] = mapped_column(Float)


class Message(Base):
    """One distinct message, stored zlib-compressed: what the first copy seen keeps (filter headers stripped).

    Kept bytes and ``sha256`` (the digest) come from :func:`spamtl.mail.headers.message_identity`, so a copy
    after delivery is this row; rows whose body was pruned before migration 0006 keep their older digest.

    ``raw`` is NULL once retention dropped the body of mail nobody labelled
    (see ``spamtl prune``); the row stays while a classification refers to it.
    """

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    date: Mapped[datetime | None] = mapped_column(DateTime)
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # For `spamtl history` and `review`: the decoded subject, cut to 255 characters (never the body).
    subject: Mapped[str | None] = mapped_column(String(255))


class Label(Base):
    """A user's spam/ham judgement of a message; history is kept, the latest (highest id) wins."""

    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint(_in("label", LABELS), name="label"),
        CheckConstraint(_in("source", LABEL_SOURCES), name="source"),
        Index("ix_labels_user_message", "user_id", "message_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(4))
    source: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ModelVersion(Base):
    """A trained model; at most one is active (enforced by a partial unique index)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        Index("uq_model_versions_active", "status", unique=True,
              sqlite_where=text("status = 'active'"), postgresql_where=text("status = 'active'")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(10))
    params: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    metrics: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    feature_key: Mapped[str] = mapped_column(String(64))
    n_features: Mapped[int] = mapped_column(Integer)
    format_version: Mapped[int] = mapped_column(Integer)
    n_users: Mapped[int] = mapped_column(Integer)
    n_messages: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(1000))
    # A pinned version keeps its weights whatever the retention settings say.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ModelPart(Base):
    """One serialised piece of a model: the shared part, a group's part or a user's part."""

    __tablename__ = "model_parts"
    __table_args__ = (CheckConstraint(_in("kind", PART_KINDS), name="kind"),)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # The store generation (see StoreState) at which this part was last written: a daemon that
    # has seen generation g reloads exactly the parts with revision > g.
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class UserCutoff(Base):
    """A user's spam and ham cutoffs as set by one training (rolled back with its version)."""

    __tablename__ = "user_cutoffs"
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    spam_cutoff: Mapped[float] = mapped_column(Float)
    ham_cutoff: Mapped[float] = mapped_column(Float)
    # How the cutoff was set, e.g. 'target 0.1% ham FPR on 412 ham' or 'shared (12 ham)'.
    source: Mapped[str] = mapped_column(String(255))


class StoreState(Base):
    """Named counters; ``generation`` grows with every change that can change a score.

    A promotion, ``models activate``, a feedback refit, a cutoff change and a
    user's deletion each bump it in the same transaction, so a long-running
    reader (``spamtl serve``) polls one row to know when to reload.
    """

    __tablename__ = "store_state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class Classification(Base):
    """What the filter said about a message for a user, so feedback and error counts can refer to it."""

    __tablename__ = "classifications"
    __table_args__ = (
        CheckConstraint(_in("verdict", VERDICTS), name="verdict"),
        Index("ix_classifications_user_message", "user_id", "message_id"),
        Index("ix_classifications_user_created", "user_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    probability: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(6))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # retention deletes by age


class MessageFeatures(Base):
    """Cache of a message's feature row for one feature configuration (recomputable)."""

    __tablename__ = "message_features"
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    feature_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Lock(Base):
    """A named lock held by one process (``host``:``pid``), e.g. 'train'; see ``spamtl.services.lock``."""

    __tablename__ = "locks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)


class AccessToken(Base):
    """A token that logs in to ``spamtl web`` as ``name`` (``spamtl users token``); only its sha256 is kept."""

    __tablename__ = "access_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
