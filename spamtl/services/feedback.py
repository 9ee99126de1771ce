"""A user's correction: store the label and refit that user's personal weights at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.config import Settings
from spamtl.errors import NoModelError, UsageError
from spamtl.features import FeatureConfig, rows_to_csr
from spamtl.scoring import SparsePart, sigmoid
from spamtl.services.dataset import feature_rows
from spamtl.services.importing import store_messages
from spamtl.services.models import load_user_slice
from spamtl.store import queries
from spamtl.store.db import check_schema, translate_errors
from spamtl.store.schema import LABELS, Message

__all__ = ["FeedbackResult", "record_feedback"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _resolve(session: Session, raw: bytes | None, ref: str | None, now: datetime) -> int:
    if raw is not None:
        return store_messages(session=session, raws=[raw], now=now)[0]
    assert ref is not None
    ref = ref.strip()
    if _SHA256_RE.fullmatch(ref.lower()):
        found = queries.message_ids_by_sha(session=session, shas=[ref.lower()])
        if found:
            return next(iter(found.values()))
    pks = queries.message_ids_by_message_id(session=session, message_id=ref.strip("<>"))
    if len(pks) > 1:
        raise UsageError(f"{len(pks)} stored messages have Message-ID {ref!r}; give the sha256 instead")
    if not pks:
        raise UsageError(f"no stored message has sha256 or Message-ID {ref!r}; pass the message itself")
    return pks[0]


def record_feedback(engine: Engine, settings: Settings, *, user: str, label: str, now: datetime,
                    raw: bytes | None = None, ref: str | None = None) -> FeedbackResult:
    """Record ``label`` for a message (bytes, or a sha256 / Message-ID reference) and refit ``user``.

    The refit changes only this user's personal part of the active model (the
    shared and group parts are fixed), so no other user's scores move.  With
    no model yet, the label is stored for the next `spamtl train`.
    """
    if label not in LABELS:
        raise UsageError(f"unknown label {label!r}; use one of: {', '.join(LABELS)}")
    if (raw is None) == (ref is None):
        raise UsageError("give either the message or --id, not both or neither")
    check_schema(engine)
    with translate_errors(), Session(engine) as session, session.begin():
        db_user = queries.get_or_create_user(session=session, name=user, group=None, now=now)
        user_id, group = db_user.id, db_user.group_name
        pk = _resolve(session, raw, ref, now)
        sha = session.get(Message, pk).sha256  # type: ignore[union-attr]
        previous = queries.latest_labels(session=session, user_id=user_id, message_ids=[pk]).get(pk)
        queries.add_labels(session=session, rows=[{"user_id": user_id, "message_id": pk, "label": label,
                                                   "source": "feedback", "created_at": now}])
    result = FeedbackResult(user=user, sha256=sha, label=label, previous_label=previous, model_version=None,
                            probability_before=None, probability_after=None, user_labels=0)
    try:
        _refit_user(engine, result, user=user, user_id=user_id, group=group, message_pk=pk)
    except NoModelError:
        pass
    return result


def _refit_user(engine: Engine, result: FeedbackResult, *, user: str, user_id: int, group: str | None,
                message_pk: int) -> None:
    from spamtl._objective import fit_single_task, task_weights

    with translate_errors(), Session(engine) as session:
        version, weights = load_user_slice(session=session, user=user, group=group)
        version_id, feature_key, params = version.id, version.feature_key, dict(version.params)
        labels = queries.current_labels(session=session, users=[user])
    config = FeatureConfig.from_key(feature_key)
    rows = feature_rows(engine, [lab.message_pk for lab in labels] + [message_pk], config)
    if message_pk not in rows:
        result.body_missing = True  # stored for the record; nothing to learn from until the message is passed
        return
    labels = [lab for lab in labels if lab.message_pk in rows]
    result.model_version = version_id
    result.probability_before = sigmoid(float(weights.decision([rows[message_pk]], user)[0]))
    y = np.array([1.0 if lab.is_spam else -1.0 for lab in labels])
    X = rows_to_csr([rows[lab.message_pk] for lab in labels], config.n_features)
    if weights.idf is not None:  # the version's own idf: fixed until the next training
        X = weights.idf.transform(X)
    # Offsets: the fixed shared (+ group) part, dense over the hashed space.
    offset = np.zeros(config.n_features)
    offset[weights.shared.cols] += weights.shared.values
    offset_b = weights.shared.intercept
    user_group = weights.task_groups.get(user)
    if user_group in weights.groups:
        offset[weights.groups[user_group].cols] += weights.groups[user_group].values
        offset_b += weights.groups[user_group].intercept
    old = weights.tasks.get(user, SparsePart.empty())
    weight = float(task_weights(np.array([len(y)]), params.get("task_weighting", "sample"),
                                params.get("weight_scale"))[0])
    cols, values, intercept, _ = fit_single_task(
        X, y, offset, offset_b, weight=weight, alpha=float(params["alpha"]), mu=float(params["mu"]),
        init_cols=old.cols, init_values=old.values, init_intercept=old.intercept,
        tol=float(params.get("tol", 1e-5)), max_iter=int(params.get("max_iter", 500)))
    part = SparsePart(cols.astype(np.int64), values, intercept)
    weights.tasks[user] = part
    weights.task_groups[user] = user_group
    result.probability_after = sigmoid(float(weights.decision([rows[message_pk]], user)[0]))
    result.user_labels = len(y)
    with translate_errors(), Session(engine) as session, session.begin():
        queries.upsert_model_part(session=session, version_id=version_id, kind="user", name=user,
                                  data=part.to_bytes())
