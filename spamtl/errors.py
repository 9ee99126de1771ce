"""Expected failures: each message says what to do next.

The CLI catches :class:`SpamtlError` in one place and prints it as a single
``Error: ...`` line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host, wherever a URL appears in a message.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    >>> redact("cannot use 'postgresql://bob:s3cret@db/x'")
    "cannot use 'postgresql://bob:***@db/x'"
    """
    return _URL_PASSWORD.sub(r"\1***@", text)


class SpamtlError(Exception):
    """Base class of every expected, user-facing failure."""

    exit_code = 1


class UsageError(SpamtlError):
    """Bad input from the user: an unknown label, a missing file, an unknown version."""


class UnknownUserError(UsageError):
    """A user the store does not know, where one is not created on demand (``auto_create_users``)."""


class NotFoundError(UsageError):
    """A message (or page) that does not exist for the one asking, whether it exists for someone else or not."""


class DatabaseError(SpamtlError):
    """The database cannot be opened, is locked, or needs ``spamtl init``."""


class NoModelError(SpamtlError):
    """No trained model yet."""

    def __init__(self, message: str = "no trained model yet; run `spamtl train` first") -> None:
        super().__init__(message)


class DamagedModelError(SpamtlError):
    """A stored part of a model version cannot be read (cut short, overwritten, not spamtl's format)."""

    def __init__(self, version: int, kind: str, name: str, reason: str) -> None:
        self.version = version
        part = {"shared": "shared part", "idf": "idf weights"}.get(kind, f"{kind} {name!r}")
        # Short enough for a spamd status line (200 characters) with a usual user name.
        super().__init__(f"model version {version} is damaged ({part}: {reason}); activate a good version "
                         "(`spamtl models activate N`) or retrain (`spamtl train`)")


class OptionalDependencyError(SpamtlError):
    """An optional extra (e.g. matplotlib for plots) is not installed."""
