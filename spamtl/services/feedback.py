"""A user's correction: store the label and refit that user's personal weights at once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.errors import NoModelError, UsageError
from spamtl.features import FeatureConfig, rows_to_csr
from spamtl.mail.headers import message_identity
from spamtl.mail.sources import RawMail, Unreadable, count_mail, iter_mail
from spamtl.model.weights import SparsePart, sigmoid
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.services.importing import label_messages, mail_batches, store_messages
from spamtl.services.models import load_user_slice
from spamtl.services.users import unknown_user
from spamtl.settings import Settings, validate_name
from spamtl.store import queries
from spamtl.store.engine import transaction
from spamtl.store.schema import LABELS, Message

__all__ = ["FeedbackResult", "FeedbackBatchResult", "ForgetResult", "record_feedback", "record_feedback_batch",
           "forget_feedback"]

_HEX_RE = re.compile(r"[0-9a-f]{1,64}")
MIN_PREFIX_CHARS = 12
"""Shortest sha256 prefix accepted as a message id (filter mode shows 12)."""


@dataclass
class FeedbackResult:
    user: str
    sha256: str
    label: str
    previous_label: str | None
    model_version: int | None
    probability_before: float | None
    probability_after: float | None
    user_labels: int
    body_missing: bool = False  # retention dropped the body: the label is stored but cannot be learnt from
    user_created: bool = False  # the store did not know the user: this label registered them

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FeedbackBatchResult:
    """What a many-message feedback did: labels stored per kind, then one refit."""

    user: str
    label: str
    new: int = 0  # messages this user had not labelled
    relabelled: int = 0  # labelled the other way before: the new label wins
    unchanged: int = 0  # already labelled this way: nothing stored
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    model_version: int | None = None
    probability_before: float | None = None  # not meaningful for a batch; kept for the refit's interface
    probability_after: float | None = None
    user_labels: int = 0

    @property
    def messages(self) -> int:
        return self.new + self.relabelled + self.unchanged

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "label": self.label, "messages": self.messages, "new": self.new,
                "relabelled": self.relabelled, "unchanged": self.unchanged,
                "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
                "model_version": self.model_version, "user_labels": self.user_labels}


@dataclass
class ForgetResult:
    """A ``Remove: local`` (spamc ``-L forget``): the user's labels of one message removed, user refitted."""

    user: str
    sha256: str
    removed: int
    model_version: int | None = None
    probability_before: float | None = None
    probability_after: float | None = None
    user_labels: int = 0


def _resolve(session: Session, raw: bytes | None, ref: str | None, now: datetime) -> int:
    if raw is not None:
        return store_messages(session=session, raws=[raw], now=now)[0]
    assert ref is not None
    return resolve_reference(session, ref)


def resolve_reference(session: Session, ref: str) -> int:
    """The stored message a user means by ``ref``: a sha256 or a prefix of it, or a Message-ID.

    A prefix needs at least 12 hex characters (the id that filter mode's header
    shows) and must name one message.
    """
    ref = ref.strip()
    if _HEX_RE.fullmatch(ref.lower()) and len(ref) >= MIN_PREFIX_CHARS:
        found = queries.message_ids_by_sha_prefix(session=session, prefix=ref.lower(), limit=2)
        if len(found) > 1:
            raise UsageError(f"{len(found)} or more stored messages have an id starting with {ref!r}; "
                             "give more characters")
        if found:
            return found[0]
    pks = queries.message_ids_by_message_id(session=session, message_id=ref.strip("<>"))
    if len(pks) > 1:
        raise UsageError(f"{len(pks)} stored messages have Message-ID {ref!r}; give the id (sha256) instead")
    if not pks:
        raise UsageError(f"no stored message has id or Message-ID {ref!r}; pass the message itself")
    return pks[0]


def record_feedback(engine: Engine, settings: Settings, *, user: str, label: str, now: datetime,
                    raw: bytes | None = None, ref: str | None = None,
                    create_user: bool = True) -> FeedbackResult:
    """Record ``label`` for a message (bytes, or a sha256 / Message-ID reference) and refit ``user``.

    The refit changes only this user's personal part of the active model (the
    shared and group parts are fixed), so no other user's scores move.  With
    no model yet, the label is stored for the next `spamtl train`.

    A user the store does not know is registered when ``create_user`` is set (an
    administrator's ``spamtl feedback``); otherwise (the daemon's TELL, which passes
    ``settings.auto_create_users``) :func:`~spamtl.services.users.unknown_user` is raised and nothing is stored.
    """
    if label not in LABELS:
        raise UsageError(f"unknown label {label!r}; use one of: {', '.join(LABELS)}")
    if (raw is None) == (ref is None):
        raise UsageError("give either the message or --id, not both or neither")
    validate_name(user)
    with transaction(engine) as session:
        known = queries.get_user(session=session, name=user)
        if known is None and not create_user:
            raise unknown_user(user, "auto_create_users is off: nothing learned")
        db_user = known or queries.get_or_create_user(session=session, name=user, group=None, now=now)
        user_id, group = db_user.id, db_user.group_name
        pk = _resolve(session, raw, ref, now)
        sha = session.get(Message, pk).sha256  # type: ignore[union-attr]
        previous = queries.latest_labels(session=session, user_id=user_id, message_ids=[pk]).get(pk)
        queries.add_labels(session=session, rows=[{"user_id": user_id, "message_id": pk, "label": label,
                                                   "source": "feedback", "created_at": now}])
    result = FeedbackResult(user=user, sha256=sha, label=label, previous_label=previous, model_version=None,
                            probability_before=None, probability_after=None, user_labels=0,
                            user_created=known is None)
    _refit_if_model(engine, settings, result, user=user, user_id=user_id, group=group, message_pk=pk, now=now)
    from spamtl.logs import log_feedback

    log_feedback(settings, user=user, sha256=sha, label=label, previous=previous, version=result.model_version,
                 before=result.probability_before, after=result.probability_after)
    return result


def record_feedback_batch(engine: Engine, settings: Settings, *, user: str, label: str, paths: Sequence[str],
                          now: datetime, progress: Progress = NO_PROGRESS) -> FeedbackBatchResult:
    """Record ``label`` for every message under ``paths`` (files, Maildirs, mboxes) and refit ``user`` once.

    Labels are stored in chunks of ``settings.chunk_size`` (one transaction
    each, so an interrupted run keeps what was committed); a message the user
    already labelled this way stores nothing.  The personal weights are
    refitted once, at the end, on all the user's labels.
    """
    if label not in LABELS:
        raise UsageError(f"unknown label {label!r}; use one of: {', '.join(LABELS)}")
    validate_name(user)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or directory: {missing[0]}")
    with transaction(engine) as session:
        db_user = queries.get_or_create_user(session=session, name=user, group=None, now=now)
        user_id, group = db_user.id, db_user.group_name
    result = FeedbackBatchResult(user=user, label=label)
    progress.stage("feedback", count_mail(paths), unit="messages", user=user, label=label)
    for batch in mail_batches(iter_mail(paths), max(1, settings.chunk_size)):
        mails = [m for m in batch if isinstance(m, RawMail)]
        result.unreadable += [(m.origin, m.reason) for m in batch if isinstance(m, Unreadable)]
        counts = label_messages(engine, user_id=user_id, label=label, raws=[m.raw for m in mails],
                                source="feedback", now=now)
        result.new += counts["new"]
        result.unchanged += counts["known"]
        result.relabelled += counts["relabelled"]
        progress.advance(len(batch))
    if result.new or result.relabelled:
        progress.stage("refit", user=user)
        _refit_if_model(engine, settings, result, user=user, user_id=user_id, group=group, message_pk=None, now=now)
    return result


def forget_feedback(engine: Engine, settings: Settings, *, user: str, raw: bytes, now: datetime) -> ForgetResult:
    """Remove ``user``'s labels of this message (every one, history included) and refit ``user``."""
    validate_name(user)
    sha = message_identity(raw)[1]  # the delivered copy finds the message that was classified
    with transaction(engine) as session:
        db_user = queries.get_user(session=session, name=user)
        found = queries.message_ids_by_sha(session=session, shas=[sha])
        if db_user is None or sha not in found:
            return ForgetResult(user=user, sha256=sha, removed=0)
        user_id, group = db_user.id, db_user.group_name
        removed = queries.delete_labels(session=session, user_id=user_id, message_ids=[found[sha]])
    result = ForgetResult(user=user, sha256=sha, removed=removed)
    if removed:
        _refit_if_model(engine, settings, result, user=user, user_id=user_id, group=group, message_pk=found[sha], now=now)
    return result


def _refit_if_model(engine: Engine, settings: Settings, result: Any, *, user: str, user_id: int,
                    group: str | None, message_pk: int | None, now: datetime) -> None:
    """The one refit call of every feedback path (no model yet: the labels wait for `spamtl train`)."""
    try:
        _refit_user(engine, settings, result, user=user, user_id=user_id, group=group, message_pk=message_pk,
                    now=now)
    except NoModelError:
        pass


def _user_cutoffs(engine: Engine, settings: Settings, user: str) -> tuple[float, float]:
    """The user's effective cutoffs, by the classify path's own precedence."""
    from spamtl.services.cutoffs import list_cutoffs

    effective = list_cutoffs(engine, settings, [user])[0]
    return effective.spam_cutoff, effective.ham_cutoff


def _training_columns(X: Any, weights: Any, new: np.ndarray) -> Any:
    """X without the columns training dropped as too rare (``training.min_df_mask``), except those of rows
    ``new`` since that training: unchanged labels give the trained part back, and a correction's own new
    words are learned at once."""
    known = weights.idf.cols if weights.idf is not None else weights.shared.cols
    X = X.tocsr().copy()
    fresh = np.zeros(X.shape[1], dtype=bool)
    fresh[X[np.flatnonzero(new)].indices] = True
    keep = np.isin(X.indices, known) | fresh[X.indices]
    X.data[~keep] = 0.0
    X.eliminate_zeros()
    return X


def _refit_user(engine: Engine, settings: Settings, result: Any, *, user: str, user_id: int,
                group: str | None, message_pk: int | None, now: datetime) -> None:
    """Refit ``user``'s personal part of the active version on all their labels, shared and group parts fixed.

    Feedback labels weigh ``settings.feedback_weight``; a corrected message still on the wrong side of the
    user's cutoff has its weight doubled and the part refitted, at most ``feedback_max_doublings`` times.
    Uncorrected verdicts count as labels (``Settings.autolearn_window``); with no labels left the part is empty.
    """
    # The solver and the dataset reader (scipy) are loaded on the first refit, not by every process that
    # may teach: the daemon's workers stay small until a TELL arrives.
    from spamtl.model.refit import refit_user
    from spamtl.services.dataset import feature_rows

    with transaction(engine, checked=False) as session:
        version, weights = load_user_slice(session=session, user=user, group=group)
        version_id, feature_key, version_trained = version.id, version.feature_key, version.created_at
        labels, _ = queries.labels_to_learn(session=session, users=[user], window=settings.autolearn_window(now))
        sources = queries.label_sources(session=session, user_id=user_id)
    config = FeatureConfig.from_key(feature_key, settings.features.authserv_ids)
    extra = [message_pk] if message_pk is not None else []
    rows = feature_rows(engine, [lab.message_pk for lab in labels] + extra, config)
    if message_pk is not None and message_pk not in rows:
        result.body_missing = True  # stored for the record; nothing to learn from until the message is passed
        return
    labels = [lab for lab in labels if lab.message_pk in rows]
    result.model_version = version_id
    if message_pk is not None:
        result.probability_before = sigmoid(float(weights.decision([rows[message_pk]], user)[0]))
    y = np.array([int(lab.is_spam) for lab in labels], dtype=np.int64)  # the model's classes: 1 = spam
    X = rows_to_csr([rows[lab.message_pk] for lab in labels], config.n_features)
    X = _training_columns(X, weights, np.array([lab.labelled_at > version_trained for lab in labels], dtype=bool))
    if len(y) == 0:  # every label forgotten: the user is scored by the shared (+ group) part again
        part = SparsePart.empty()
        weights.tasks[user] = part
    else:
        sample_weight = np.array([settings.feedback_weight if sources.get(lab.message_pk) == "feedback" else 1.0
                                  for lab in labels])
        target = next((i for i, lab in enumerate(labels) if lab.message_pk == message_pk), None)
        spam_cutoff, ham_cutoff = _user_cutoffs(engine, settings, user) if target is not None else (1.0, 0.0)
        for _ in range(settings.feedback_max_doublings + 1):
            part = refit_user(weights, user, X, y == 1, sample_weight)  # the version's idf, fixed until training
            weights.tasks[user] = part
            if target is None:
                break
            p = sigmoid(float(weights.decision([rows[message_pk]], user)[0]))  # type: ignore[index]
            if (p >= spam_cutoff) if y[target] > 0 else (p <= ham_cutoff):
                break
            sample_weight[target] *= 2.0
    if message_pk is not None:
        result.probability_after = sigmoid(float(weights.decision([rows[message_pk]], user)[0]))
    result.user_labels = len(y)
    with transaction(engine, checked=False) as session:
        queries.upsert_model_part(session=session, version_id=version_id, kind="user", name=user,
                                  data=part.to_bytes())
