"""Who may open ``spamtl web``: per-user tokens (``spamtl users token``) and a trusted proxy's user header.

A token is 32 random bytes, URL-safe base64, printed once; the store keeps only its sha256, so a copy of
the database does not let anyone log in.  A token logs in as one name; a user's token sees that user's
mail only, an admin token (``--admin``) sees the admin pages (which show no message text).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, select

from spamtl.errors import UsageError
from spamtl.services.users import existing_user
from spamtl.settings import Settings, validate_name
from spamtl.store.engine import transaction
from spamtl.store.schema import AccessToken

__all__ = ["Principal", "create_token", "revoke_tokens", "token_holder", "proxy_holder", "digest"]

TOKEN_BYTES = 32
LAST_USED_RESOLUTION_SECONDS = 60
"""``last_used_at`` is written at most this often per token (a page view must not be a write each time)."""


@dataclass(frozen=True)
class Principal:
    """Who is logged in: a name and whether they have the admin role."""

    name: str
    admin: bool = False


def digest(token: str) -> str:
    """The sha256 (hex) the store keeps of ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create_token(engine: Engine, name: str, *, admin: bool, now: datetime) -> str:
    """A new token that logs in as ``name`` (a user the store knows, unless ``admin``); returned once."""
    validate_name(name)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with transaction(engine) as session:
        if not admin:
            existing_user(session, name)
        session.add(AccessToken(digest=digest(token), name=name, admin=admin, created_at=now))
    return token


def revoke_tokens(engine: Engine, name: str) -> int:
    """Delete every token of ``name``; the number deleted."""
    validate_name(name)
    with transaction(engine) as session:
        result = session.execute(delete(AccessToken).where(AccessToken.name == name))
        return int(result.rowcount)  # type: ignore[attr-defined]


def token_holder(engine: Engine, token: str, *, now: datetime) -> Principal | None:
    """Who ``token`` logs in as, or None for a token the store does not know."""
    if not token or len(token) > 200:
        return None
    with transaction(engine) as session:
        row = session.scalars(select(AccessToken).where(AccessToken.digest == digest(token))).first()
        if row is None:
            return None
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
            row.last_used_at = now
        return Principal(row.name, bool(row.admin))


def proxy_holder(settings: Settings, client_host: str | None, value: str | None) -> Principal | None:
    """Who the trusted proxy says is logged in, or None: the header is off, absent, or not from a proxy.

    The header counts only when ``web_user_header`` is set and the request comes from an address in
    ``web_trusted_proxies``; names in ``web_admins`` get the admin role.
    """
    if not settings.web_user_header or not value or not client_host:
        return None
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return None
    if not any(address in ipaddress.ip_network(n, strict=False) for n in settings.web_trusted_proxies):
        return None
    name = value.strip()
    try:
        validate_name(name)
    except UsageError:
        return None
    return Principal(name, name in settings.web_admins)
