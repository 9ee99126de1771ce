"""Classify mail for one user with the active model, and log every verdict."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.config import Settings
from spamtl.errors import DatabaseError
from spamtl.features import FeatureConfig, featurize
from spamtl.mail import parse_message
from spamtl.scoring import ModelWeights, sigmoid
from spamtl.services.importing import sha256_hex, store_messages
from spamtl.services.models import load_user_slice
from spamtl.sources import RawMail, Unreadable
from spamtl.store import queries
from spamtl.store.db import check_schema, translate_errors

__all__ = ["Verdict", "UserModel", "load_user_model", "open_user_model", "classify_messages"]

_LOG_CHUNK = 500


@dataclass
class Verdict:
    user: str
    origin: str
    message_id: str
    sha256: str
    verdict: str
    probability: float
    model_version: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "message_id": self.message_id, "sha256": self.sha256, "verdict": self.verdict,
                "probability": round(self.probability, 6), "model_version": self.model_version}


@dataclass
class UserModel:
    """What scoring one user needs: the shared, group and personal parts of one version."""

    user: str
    version: int
    weights: ModelWeights
    config: FeatureConfig
    is_known_user: bool
    group: str | None
    _dense: tuple[np.ndarray, float] | None = None

    def _effective(self) -> tuple[np.ndarray, float]:
        """w0 + u_g + v_t as one dense vector (2**18 floats) and the summed intercept, built once."""
        if self._dense is None:
            dense = np.zeros(self.weights.n_features)
            intercept = 0.0
            for part in self.weights.parts_for(self.user, self.group):
                dense[part.cols] += part.values  # columns are unique within a part
                intercept += part.intercept
            self._dense = (dense, intercept)
        return self._dense

    def probability(self, raw: bytes) -> tuple[float, list[str], str]:
        parsed = parse_message(raw)
        row = self.weights.prepare(featurize(parsed, self.config))
        dense, intercept = self._effective()
        score = intercept + float(dense[row.indices] @ row.values.astype(np.float64))
        warnings = ["; ".join(parsed.defects)] if parsed.is_damaged else []
        return sigmoid(score), warnings, parsed.message_id


def load_user_model(session: Session, user: str) -> UserModel:
    """Load only this user's slice of the active model (never every user's weights)."""
    found = queries.get_user(session=session, name=user)
    group = found.group_name if found is not None else None
    version, weights = load_user_slice(session=session, user=user, group=group)
    try:
        config = FeatureConfig.from_key(version.feature_key)
    except ValueError as exc:
        raise DatabaseError(f"{exc}; run `spamtl train` to retrain") from None
    return UserModel(user=user, version=version.id, weights=weights, config=config,
                     is_known_user=user in weights.tasks, group=weights.task_groups.get(user))


def open_user_model(engine: Engine, user: str) -> UserModel:
    """Check the schema and load ``user``'s slice of the active model."""
    check_schema(engine)
    with translate_errors(), Session(engine) as session:
        return load_user_model(session, user)


def classify_messages(engine: Engine, settings: Settings, *, user: str, mails: Iterable[RawMail | Unreadable],
                      now: datetime, log: bool = True, model: UserModel | None = None) -> Iterator[Verdict | Unreadable]:
    """Score each message for ``user`` and log the verdicts (in chunks, one transaction each).

    A user the model has never seen is scored by the shared (and group) part;
    pass a ``model`` from :func:`open_user_model` to check ``is_known_user``
    first without loading it twice.
    """
    if model is None:
        model = open_user_model(engine, user)
    pending: list[tuple[bytes, Verdict]] = []
    for item in mails:
        if isinstance(item, Unreadable):
            yield item
            continue
        probability, defects, message_id = model.probability(item.raw)
        verdict = Verdict(user=user, origin=item.origin, message_id=message_id, sha256=sha256_hex(item.raw),
                          verdict=settings.verdict(probability), probability=probability,
                          model_version=model.version, warnings=defects)
        pending.append((item.raw, verdict))
        if len(pending) >= _LOG_CHUNK:
            yield from _flush(engine, pending, log, now)
            pending = []
    yield from _flush(engine, pending, log, now)


def _flush(engine: Engine, pending: list[tuple[bytes, Verdict]], log: bool, now: datetime) -> Iterator[Verdict]:
    if log and pending:
        with translate_errors(), Session(engine) as session, session.begin():
            user_id = queries.get_or_create_user(session=session, name=pending[0][1].user, group=None, now=now).id
            pks = store_messages(session=session, raws=[raw for raw, _ in pending], now=now)
            for pk, (_, v) in zip(pks, pending):
                queries.add_classification(session=session, user_id=user_id, message_pk=pk,
                                           probability=v.probability, verdict=v.verdict,
                                           model_version_id=v.model_version, now=now)
    for _, verdict in pending:
        yield verdict
