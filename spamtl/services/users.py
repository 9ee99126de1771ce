"""Removing and renaming users: everything of theirs, in one transaction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from spamtl.errors import UnknownUserError, UsageError
from spamtl.store import queries
from spamtl.store.engine import transaction
from spamtl.store.schema import AccessToken, Classification, Label, Message, ModelPart, ModelVersion, User, UserCutoff
from spamtl.store.statements import chunks

__all__ = ["UserDeletion", "delete_user", "existing_user", "rename_user", "unknown_user", "user_exists"]


@dataclass
class UserDeletion:
    """What deleting a user removes (or, with ``dry_run``, would remove)."""

    user: str
    labels: int
    classifications: int
    model_parts: int
    messages: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unknown_user(name: str, why: str = "") -> UnknownUserError:
    """The one error for a user the store does not know (``why``: what it means here, if anything)."""
    return UnknownUserError(f"no user {name!r} in the store; `spamtl users` lists them{f' ({why})' if why else ''}")


def user_exists(engine: Engine, name: str) -> bool:
    """Whether the store knows a user called ``name``."""
    with transaction(engine) as session:
        return queries.get_user(session=session, name=name) is not None


def existing_user(session: Session, name: str) -> User:
    """The user called ``name``, else :func:`unknown_user`."""
    user = queries.get_user(session=session, name=name)
    if user is None:
        raise unknown_user(name)
    return user


# The maps by user name inside each version's JSON: its group, its task weight (params), the cutoffs that
# training set and its cross-fitted 1-AUC (metrics, as `spamtl models` and the admin page show them).
_BY_USER = (("params", "task_groups"), ("params", "task_weights"), ("metrics", "cutoffs"),
            ("metrics", "user_auc_error_pct"))


def _rekey_versions(session: Session, old: str, new: str | None) -> None:
    """Move ``old``'s entries in every version's per-user maps to ``new`` (None: remove them)."""
    for version in session.scalars(select(ModelVersion)):
        for column, key in _BY_USER:
            document = getattr(version, column) or {}
            by_user = document.get(key)
            if not isinstance(by_user, dict) or old not in by_user:
                continue
            by_user = dict(by_user)
            value = by_user.pop(old)
            if new is not None:
                by_user[new] = value
            setattr(version, column, {**document, key: by_user})  # a new object: JSON columns track assignment


def _count(session: Session, stmt: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def delete_user(engine: Engine, name: str, *, dry_run: bool = False) -> UserDeletion:
    """Delete ``name`` with their labels, verdicts, web tokens, personal weights and trained cutoffs in every
    version and the mail only they received or labelled (mail another user has is kept).

    A running ``spamtl serve`` forgets the user at its next generation check: it
    scores the name as unknown from then on.
    """
    with transaction(engine) as session:
        user = existing_user(session, name)
        theirs = (select(Label.message_id).where(Label.user_id == user.id)
                  .union(select(Classification.message_id).where(Classification.user_id == user.id)))
        others = (select(Label.message_id).where(Label.user_id != user.id)
                  .union(select(Classification.message_id).where(Classification.user_id != user.id)))
        only_theirs = list(session.scalars(select(Message.id).where(Message.id.in_(theirs), Message.id.not_in(others))))
        parts = select(ModelPart.model_version_id).where(ModelPart.kind == "user", ModelPart.name == name)
        result = UserDeletion(
            user=name,
            labels=_count(session, select(Label.id).where(Label.user_id == user.id)),
            classifications=_count(session, select(Classification.id).where(Classification.user_id == user.id)),
            model_parts=_count(session, parts),
            messages=len(only_theirs), dry_run=dry_run)
        if dry_run:
            session.rollback()
            return result
        session.execute(delete(Label).where(Label.user_id == user.id))
        session.execute(delete(Classification).where(Classification.user_id == user.id))
        session.execute(delete(ModelPart).where(ModelPart.kind == "user", ModelPart.name == name))
        session.execute(delete(UserCutoff).where(UserCutoff.user_name == name))
        session.execute(delete(AccessToken).where(AccessToken.name == name))
        _rekey_versions(session, name, None)
        session.delete(user)
        queries.mark_users_changed(session=session)
        for chunk in chunks(only_theirs, 900):
            session.execute(delete(Message).where(Message.id.in_(chunk)).execution_options(synchronize_session=False))
    return result


def rename_user(engine: Engine, old: str, new: str) -> int:
    """Rename ``old`` to ``new``: labels, verdicts, cutoffs and web tokens follow, and so do the personal
    weights and trained cutoffs in every version.

    Returns the number of model versions whose weights were renamed.
    """
    if not new.strip():
        raise UsageError("the user name must not be empty")
    with transaction(engine) as session:
        user = existing_user(session, old)
        if queries.get_user(session=session, name=new) is not None:
            raise UsageError(f"user {new!r} already exists; delete or rename it first")
        user.name = new
        renamed = session.execute(update(ModelPart).where(ModelPart.kind == "user", ModelPart.name == old)
                                  .values(name=new).execution_options(synchronize_session=False))
        for table, column in ((UserCutoff, UserCutoff.user_name), (AccessToken, AccessToken.name)):
            session.execute(update(table).where(column == old).values({column: new})
                            .execution_options(synchronize_session=False))
        _rekey_versions(session, old, new)
        queries.mark_users_changed(session=session)
        return int(renamed.rowcount)  # type: ignore[attr-defined]
