"""Model versions in the store: save, load (one user's slice or everything), list, activate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.errors import NoModelError, UsageError
from spamtl.features import IdfWeights
from spamtl.model.weights import FORMAT_VERSION, ModelWeights, SparsePart, decode_stored
from spamtl.store import queries
from spamtl.store.engine import transaction
from spamtl.store.schema import ModelVersion

__all__ = ["VersionInfo", "save_weights", "load_weights", "load_user_slice", "list_versions", "activate", "pin"]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    status: str
    created_at: datetime
    users: int
    messages: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    note: str | None
    pinned: bool = False
    has_weights: bool | None = None  # None: not looked up (only list_versions does)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "created_at": self.created_at.isoformat(),
                "users": self.users, "messages": self.messages, "params": self.params, "metrics": self.metrics,
                "note": self.note, "pinned": self.pinned}


def _info(v: ModelVersion) -> VersionInfo:
    return VersionInfo(v.id, v.status, v.created_at, v.n_users, v.n_messages, dict(v.params), dict(v.metrics), v.note,
                       bool(v.pinned))


def save_weights(*, session: Session, weights: ModelWeights, feature_key: str, status: str, now: datetime,
                 metrics: dict[str, Any], n_messages: int, note: str | None = None) -> int:
    """Store a model as one version row plus one row per part; returns the version number."""
    params = {**weights.params, "task_groups": dict(weights.task_groups)}
    version = ModelVersion(created_at=now, status="candidate", params=params, metrics=metrics,
                           feature_key=feature_key, n_features=weights.n_features, format_version=FORMAT_VERSION,
                           n_users=len(weights.tasks), n_messages=n_messages, note=note)
    session.add(version)
    session.flush()
    parts = [("shared", "", weights.shared.to_bytes())]
    parts += [("group", name, part.to_bytes()) for name, part in weights.groups.items()]
    parts += [("user", name, part.to_bytes()) for name, part in weights.tasks.items()]
    if weights.idf is not None:
        parts.append(("idf", "", weights.idf.to_bytes()))
    queries.add_model_parts(session=session, version_id=version.id, parts=parts)
    if status == "active":
        queries.set_active(session=session, version_id=version.id)
    elif status != "candidate":
        version.status = status
    return version.id


def _version(session: Session, version: int | None) -> ModelVersion:
    if version is None:
        active = queries.active_model(session=session)
        if active is None:
            raise NoModelError()
        return active
    found = session.get(ModelVersion, version)
    if found is None:
        raise UsageError(f"no model version {version}; see `spamtl models`")
    return found


def load_weights(engine: Engine, version: int | None = None) -> tuple[int, str, ModelWeights]:
    """All parts of a version (default: the active one): (version, feature_key, weights)."""
    with transaction(engine) as session:
        v = _version(session, version)
        shared = queries.model_part(session=session, version_id=v.id, kind="shared")
        groups = queries.model_parts(session=session, version_id=v.id, kind="group")
        tasks = queries.model_parts(session=session, version_id=v.id, kind="user")
        idf = queries.model_part(session=session, version_id=v.id, kind="idf")
        params = dict(v.params)
        weights = ModelWeights(
            n_features=v.n_features,
            shared=_sparse(v, "shared", "", shared),
            groups={k: _sparse(v, "group", k, b) for k, b in groups.items()},
            tasks={k: _sparse(v, "user", k, b) for k, b in tasks.items()},
            task_groups=dict(params.pop("task_groups", None) or {}),
            params=params,
            idf=_idf(v, idf),
        )
        return v.id, v.feature_key, weights


def load_user_slice(*, session: Session, user: str, group: str | None,
                    version: int | None = None) -> tuple[ModelVersion, ModelWeights]:
    """Only what scoring one user needs: the shared part, that user's group and personal parts, the idf."""
    v = _version(session, version)
    shared = queries.model_part(session=session, version_id=v.id, kind="shared")
    user_part = queries.model_part(session=session, version_id=v.id, kind="user", name=user)
    task_groups = (v.params or {}).get("task_groups") or {}
    group = task_groups.get(user, group)
    group_part = queries.model_part(session=session, version_id=v.id, kind="group", name=group) if group else None
    idf = queries.model_part(session=session, version_id=v.id, kind="idf")
    weights = ModelWeights(
        n_features=v.n_features,
        shared=_sparse(v, "shared", "", shared),
        groups={group: _sparse(v, "group", group, group_part)} if group and group_part is not None else {},
        tasks={user: _sparse(v, "user", user, user_part)} if user_part is not None else {},
        task_groups={user: group},
        params={k: val for k, val in (v.params or {}).items() if k != "task_groups"},
        idf=_idf(v, idf),
    )
    return v, weights


def _sparse(v: ModelVersion, kind: str, name: str, data: bytes | None) -> SparsePart:
    """A stored part of ``v``; every version is saved with a shared part, which only retention removes."""
    if data is None:
        raise UsageError(f"model version {v.id} has no weights any more (retention keeps the last promoted and "
                         "the pinned versions)")
    return decode_stored(SparsePart.from_bytes, data, version=v.id, n_features=v.n_features, kind=kind, name=name)


def _idf(v: ModelVersion, data: bytes | None) -> IdfWeights | None:
    if data is None:
        return None
    return decode_stored(IdfWeights.from_bytes, data, version=v.id, n_features=v.n_features, kind="idf")


def version_info(engine: Engine, version: int) -> VersionInfo:
    """What ``spamtl models`` says about one version (no weights)."""
    with transaction(engine, checked=False) as session:
        return _info(_version(session, version))


def list_versions(engine: Engine) -> list[VersionInfo]:
    """Every model version, oldest first, each saying whether it still has weights (can be activated)."""
    with transaction(engine) as session:
        kept = queries.versions_with_weights(session=session)
        return [dataclasses.replace(_info(v), has_weights=v.id in kept)
                for v in queries.model_versions(session=session)]


def activate(engine: Engine, version: int) -> VersionInfo:
    """Make ``version`` the active model (roll back or forward), in one transaction."""
    with transaction(engine) as session:
        v = _version(session, version)
        if v.status == "rejected" and not v.metrics:
            raise UsageError(f"model version {version} was never completed")
        if queries.model_part(session=session, version_id=v.id, kind="shared") is None:
            raise UsageError(f"model version {version} has no weights any more (retention keeps the last "
                             "promoted and the pinned versions); activate another one")
        queries.set_active(session=session, version_id=v.id)
        session.flush()
        session.refresh(v)
        return _info(v)


def pin(engine: Engine, version: int, pinned: bool = True) -> VersionInfo:
    """Pin (or unpin) a version: a pinned version keeps its weights whatever retention says."""
    with transaction(engine) as session:
        v = _version(session, version)
        if pinned and queries.model_part(session=session, version_id=v.id, kind="shared") is None:
            raise UsageError(f"model version {version} has no weights any more; there is nothing to keep")
        v.pinned = pinned
        session.flush()
        return _info(v)
