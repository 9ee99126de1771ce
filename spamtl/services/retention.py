"""Retention: what a store that runs for years keeps, and what it lets go.

Bodies of mail only classified go ``raw_retention_days`` after their latest verdict (the row stays, so
``feedback --id`` finds it); classification rows go after ``classification_retention_days``, then messages
nothing refers to; model versions keep weights if active, pinned or among the last
``keep_promoted_versions`` promoted.  Labelled mail is never pruned (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.settings import Settings
from spamtl.store import queries
from spamtl.store.engine import transaction
from spamtl.store.schema import ModelVersion

__all__ = ["PruneResult", "prune", "prune_in_session", "versions_to_strip"]

_PROMOTED = ("active", "retired")  # statuses of versions that were promoted at some point


@dataclass
class PruneResult:
    bodies_dropped: int = 0
    classifications_deleted: int = 0
    messages_deleted: int = 0
    versions_stripped: list[int] | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "versions_stripped": list(self.versions_stripped or [])}


def versions_to_strip(versions: list[ModelVersion], with_weights: set[int], keep_promoted: int) -> list[int]:
    """Versions whose weights go: not active, not pinned, not among the last ``keep_promoted`` promoted."""
    promoted = sorted((v.id for v in versions if v.status in _PROMOTED), reverse=True)
    keep = set(promoted[:keep_promoted])
    keep |= {v.id for v in versions if v.status == "active" or v.pinned or v.status == "candidate"}
    return sorted(v.id for v in versions if v.id in with_weights and v.id not in keep)


def prune_in_session(session: Session, settings: Settings, *, now: datetime) -> PruneResult:
    """Apply the retention settings in the caller's transaction."""
    result = PruneResult()
    if settings.raw_retention_days is not None:
        result.bodies_dropped = queries.drop_unlabelled_bodies(
            session=session, before=now - timedelta(days=settings.raw_retention_days))
    if settings.classification_retention_days is not None:
        result.classifications_deleted = queries.delete_classifications(
            session=session, before=now - timedelta(days=settings.classification_retention_days))
    days = [d for d in (settings.raw_retention_days, settings.classification_retention_days) if d is not None]
    if days:
        result.messages_deleted = queries.delete_unreferenced_messages(
            session=session, before=now - timedelta(days=min(days)))
    strip = versions_to_strip(queries.model_versions(session=session), queries.versions_with_weights(session=session),
                              settings.keep_promoted_versions)
    queries.drop_model_parts(session=session, version_ids=strip)
    result.versions_stripped = strip
    return result


def prune(engine: Engine, settings: Settings, *, now: datetime, dry_run: bool = False) -> PruneResult:
    """Apply the retention settings in one transaction (rolled back with ``dry_run``: counts only)."""
    with transaction(engine) as session:
        result = prune_in_session(session, settings, now=now)
        if dry_run:
            result.dry_run = True
            session.rollback()
    return result
