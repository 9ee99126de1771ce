"""Each user's effective cutoffs and where they come from; an administrator's per-user override."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from spamtl.errors import UsageError
from spamtl.services.users import existing_user
from spamtl.settings import Settings, validate_name
from spamtl.store import queries
from spamtl.store.engine import transaction

__all__ = ["EffectiveCutoffs", "list_cutoffs", "set_cutoffs", "unset_cutoffs", "ham_for"]


@dataclass(frozen=True)
class EffectiveCutoffs:
    user: str
    spam_cutoff: float
    ham_cutoff: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_cutoffs(engine: Engine, settings: Settings, users: list[str] | None = None) -> list[EffectiveCutoffs]:
    """Every user's cutoffs as classify applies them (same precedence: it asks the same reader)."""
    from spamtl.services.classify import open_reader

    reader = open_reader(engine, settings)
    try:
        names = reader.user_names() if users is None else users
        return [EffectiveCutoffs(u, *reader.cutoffs(u)) for u in names]
    finally:
        reader.store.close()


def ham_for(spam: float, settings: Settings) -> float:
    """The ham cutoff that goes with a spam cutoff: the global one (ham = more likely ham), never above ``spam``."""
    return min(spam, settings.ham_cutoff)


def set_cutoffs(engine: Engine, settings: Settings, *, user: str, spam: float,
                ham: float | None = None) -> EffectiveCutoffs:
    """Override ``user``'s cutoffs (over configuration and training); without ``ham``, the global ham cutoff."""
    if not 0.0 < spam <= 1.0:
        raise UsageError(f"--spam must be a probability in (0, 1], got {spam:g}")
    if ham is None:
        ham = ham_for(spam, settings)
    if not 0.0 <= ham <= spam:
        raise UsageError(f"--ham must be between 0 and --spam ({spam:g}), got {ham:g}")
    with transaction(engine) as session:
        queries.set_user_override(session=session, user_id=existing_user(session, validate_name(user)).id, spam=spam, ham=ham)
    return list_cutoffs(engine, settings, [user])[0]


def unset_cutoffs(engine: Engine, settings: Settings, *, user: str) -> EffectiveCutoffs:
    """Drop ``user``'s override: configuration, training or the global cutoffs apply again."""
    with transaction(engine) as session:
        queries.set_user_override(session=session, user_id=existing_user(session, validate_name(user)).id, spam=None, ham=None)
    return list_cutoffs(engine, settings, [user])[0]
