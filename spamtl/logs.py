"""One structured log line (logfmt, keys in a fixed order) per verdict, feedback and training.

Lines never hold message bodies or subjects, only ids, names, verdicts, numbers and reasons; values with
spaces, quotes, ``=`` or non-ASCII are quoted so every line parses back as logfmt.  Destination and
level come from ``Settings.log_destination``/``log_level`` (docs/operations.md); a logging failure never
fails a verdict.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["LOGGER_NAME", "configure", "format_fields", "format_line", "log_event", "log_verdict",
           "log_feedback", "log_training"]

LOGGER_NAME = "spamtl.events"
MAX_VALUE_CHARS = 200
"""A longer value is cut: a log line stays one readable line whatever a name holds."""
_SAFE = re.compile(r"[A-Za-z0-9_.:@/+-]+")
_configured: tuple[str, str] | None = None


def _quote(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = str(value)
    text = text[:MAX_VALUE_CHARS]
    if text and _SAFE.fullmatch(text):
        return text
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def format_fields(fields: Mapping[str, Any]) -> str:
    """``key=value`` pairs in the given order (values quoted where needed)."""
    return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


class _Formatter(logging.Formatter):
    def __init__(self, *, with_time: bool) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {"msg": record.getMessage()}
        return format_line(fields, level=record.levelname.lower(),
                           created=record.created if self.with_time else None)


def format_line(fields: Mapping[str, Any], *, level: str = "info", created: float | None = None) -> str:
    """One log line as every spamtl line looks (``created``: POSIX time to stamp it with; None: no stamp)."""
    head = f"spamtl[{os.getpid()}]: level={level} "
    if created is not None:
        head = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)) + " " + head
    return head + format_fields(fields)


def _handler(destination: str) -> logging.Handler | None:
    if destination == "none":
        return None
    if destination == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(with_time=True))
        return handler
    if destination == "syslog":
        from logging.handlers import SysLogHandler  # sockets only where syslog is the destination

        address: Any = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = SysLogHandler(address=address, facility=SysLogHandler.LOG_MAIL)
        handler.setFormatter(_Formatter(with_time=False))  # syslog stamps lines itself
        return handler
    handler = logging.FileHandler(os.path.expanduser(destination), encoding="utf-8", delay=True)
    handler.setFormatter(_Formatter(with_time=True))
    return handler


def configure(settings: Any) -> logging.Logger:
    """The event logger, set up for ``settings.log_destination`` and ``log_level`` (once per change)."""
    global _configured
    logger = logging.getLogger(LOGGER_NAME)
    destination = str(getattr(settings, "log_destination", "stderr") or "none")
    level = str(getattr(settings, "log_level", "warning")).lower()
    key = (destination, level)
    if _configured != key or (destination == "stderr" and not _stderr_current(logger)):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.propagate = False
        logger.setLevel(getattr(logging, level.upper(), logging.WARNING))
        try:
            handler = _handler(destination)
        except OSError as exc:  # e.g. no syslog socket: say so once, never fail a verdict for it
            sys.stderr.write(f"warning: cannot log to {destination} ({exc}); logging to stderr\n")
            handler = _handler("stderr")
        if handler is not None:
            logger.addHandler(handler)
        else:
            logger.addHandler(logging.NullHandler())
        _configured = key
    return logger


def _stderr_current(logger: logging.Logger) -> bool:
    # Tests (and CliRunner) swap sys.stderr; follow it rather than write to a closed stream.
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
               for h in logger.handlers)


def log_event(settings: Any, event: str, fields: Mapping[str, Any], *, level: int = logging.INFO) -> None:
    """Log one event line; never raises (a broken log must not lose a verdict)."""
    try:
        logger = configure(settings)
        if logger.isEnabledFor(level):
            logger.log(level, event, extra={"fields": {"event": event, **fields}})
    except Exception:  # noqa: BLE001 - logging is best effort by design
        pass


def is_shown_on_stderr(settings: Any, level: int = logging.WARNING) -> bool:
    """Whether an event at ``level`` goes to stderr (then a command need not say it there a second time)."""
    try:
        logger = configure(settings)
    except Exception:  # noqa: BLE001 - as in log_event: the log never fails a command
        return False
    return logger.isEnabledFor(level) and _stderr_current(logger)


def log_verdict(settings: Any, verdict: Any, *, origin: str | None = None) -> None:
    """One line for a verdict (a :class:`~spamtl.services.classify.Verdict`): ids and numbers, no subject."""
    log_event(settings, "verdict", {
        "user": verdict.user, "id": verdict.short_id, "verdict": verdict.verdict,
        "probability": float(verdict.probability), "cutoff": float(verdict.spam_cutoff),
        "ham_cutoff": float(verdict.ham_cutoff), "version": verdict.model_version, "reason": verdict.reason,
        **({"origin": origin} if origin else {})})


def log_feedback(settings: Any, *, user: str, sha256: str, label: str, previous: str | None,
                 version: int | None, before: float | None, after: float | None) -> None:
    """One line for a user's correction and the refit it caused."""
    log_event(settings, "feedback", {
        "user": user, "id": sha256[:12], "label": label, "previous": previous, "version": version,
        "probability_before": before, "probability_after": after})


def log_training(settings: Any, *, version: int | None, promoted: bool, reason: str, users: int, messages: int,
                 seconds: float) -> None:
    """One line per training (WARNING when the candidate was not promoted: someone should look)."""
    log_event(settings, "training", {
        "version": version, "promoted": "yes" if promoted else "no", "users": users, "messages": messages,
        "seconds": round(seconds, 1), "reason": reason},
        level=logging.INFO if promoted else logging.WARNING)
