"""Read-only listings for the CLI."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamtl.store import queries
from spamtl.store.db import check_schema, translate_errors


def list_users(engine: Engine) -> list[queries.UserCounts]:
    """Users with their current ham/spam label counts."""
    check_schema(engine)
    with translate_errors(), Session(engine) as session:
        return queries.user_counts(session=session)
