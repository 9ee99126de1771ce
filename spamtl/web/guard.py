"""Who is asking, and whether a change really comes from our own page (CSRF).

- **Login.** A trusted reverse proxy's user header (``web_user_header``, off by default, believed only from
  ``web_trusted_proxies``), else the token cookie set at ``/login`` (a token from ``spamtl users token``).
  The cookie is HttpOnly and SameSite=Strict (Secure with ``web_secure_cookie``).
- **CSRF.** Every page sets a random ``spamtl_csrf`` cookie (SameSite=Strict) and puts the same value in
  each form; a POST must carry both, equal, and any ``Origin`` header must be this site's.  Another site
  can neither read the cookie nor send it along, so it cannot forge a matching form.
"""

from __future__ import annotations

import hmac
import secrets
import urllib.parse
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from spamtl.services.access import Principal, proxy_holder, token_holder
from spamtl.settings import Settings

__all__ = ["TOKEN_COOKIE", "CSRF_COOKIE", "CSRF_FIELD", "principal_of", "csrf_token", "csrf_ok", "set_cookies",
           "Forbidden", "BadForm", "read_form"]

TOKEN_COOKIE = "spamtl_token"
CSRF_COOKIE = "spamtl_csrf"
CSRF_FIELD = "csrf"
TOKEN_COOKIE_SECONDS = 30 * 86400
"""How long a browser keeps the login (the token itself lasts until revoked)."""
MAX_FORM_BYTES = 16_384
"""Largest form body read: every form of the pages is a few short fields (anyone may POST to /login)."""
MAX_FORM_FIELDS = 20


class BadForm(Exception):
    """A POST body that is not one of our forms: too large, too many fields, or not URL-encoded (400)."""


class Forbidden(Exception):
    """A change without a valid CSRF token, or a page the principal may not see: answered 403."""


def principal_of(request: Request, engine: Any, settings: Settings, now: datetime) -> Principal | None:
    """Who sent ``request``: the trusted proxy's user, else the holder of the token cookie, else None."""
    if settings.web_user_header:
        client = request.client.host if request.client else None
        holder = proxy_holder(settings, client, request.headers.get(settings.web_user_header))
        if holder is not None:
            return holder
    token = request.cookies.get(TOKEN_COOKIE)
    return token_holder(engine, token, now=now) if token else None


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a POSTed page form (``application/x-www-form-urlencoded``), reading at most
    :data:`MAX_FORM_BYTES`; a repeated field keeps its first value."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise BadForm(f"expected a form, got {kind[:40]!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise BadForm(f"the form has more than {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def csrf_token(request: Request) -> str:
    """The request's CSRF value: its cookie's, or a new one (:func:`set_cookies` sends it)."""
    value = request.cookies.get(CSRF_COOKIE)
    if not value or len(value) > 100:
        value = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(24)
        request.state.new_csrf = value
    return value


def csrf_ok(request: Request, form: Any) -> bool:
    """Whether a POST carries the CSRF cookie and the same value in its form, from this site's origin."""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = form.get(CSRF_FIELD) or ""
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        return origin == own
    return True


def set_cookies(request: Request, response: Response, settings: Settings) -> Response:
    """Send the CSRF cookie a page made up for this request (if it did)."""
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", secure=settings.web_secure_cookie,
                            path="/")
    return response


def login_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(TOKEN_COOKIE, token, max_age=TOKEN_COOKIE_SECONDS, httponly=True, samesite="strict",
                        secure=settings.web_secure_cookie, path="/")
