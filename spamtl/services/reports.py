"""Read-only listings for the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from spamtl.settings import Settings
from spamtl.store import queries
from spamtl.store.engine import transaction


@dataclass(frozen=True)
class UserRow:
    """A user with their current ham/spam label counts and effective cutoffs (see `spamtl cutoffs`)."""

    user: str
    group: str | None
    ham: int
    spam: int
    spam_cutoff: float | None = None
    ham_cutoff: float | None = None
    cutoff_source: str | None = None


def list_users(engine: Engine, settings: Settings | None = None) -> list[UserRow]:
    """Users with their current ham/spam label counts (and, given settings, their effective cutoffs)."""
    with transaction(engine) as session:
        counts = queries.user_counts(session=session)
    if settings is None or not counts:
        return [UserRow(c.user, c.group, c.ham, c.spam) for c in counts]
    from spamtl.services.cutoffs import list_cutoffs

    cut = {c.user: c for c in list_cutoffs(engine, settings, [c.user for c in counts])}
    return [UserRow(c.user, c.group, c.ham, c.spam, cut[c.user].spam_cutoff, cut[c.user].ham_cutoff,
                    cut[c.user].source) for c in counts]
