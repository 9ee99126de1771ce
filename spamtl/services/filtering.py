"""Classifying from a command line: filter mode (``classify --filter``) and files, with the exit codes of both.

Filter mode never loses a message: whatever fails (a bad configuration, a
wrong command line, no model, a bug) the message is written back, unchanged
but for an ``X-Spamtl-Status`` header.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from spamtl.errors import SpamtlError, UsageError, redact
from spamtl.logs import is_shown_on_stderr, log_event, log_verdict
from spamtl.mail.headers import add_headers
from spamtl.services.classify import (
    Skipped,
    Verdict,
    VerdictLogger,
    classify_messages,
    open_reader,
    prepare,
    skip_reason,
    verdict_headers,
)
from spamtl.settings import Settings, validate_name

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from spamtl.mail.sources import Unreadable

__all__ = ["EXIT_FILTER_ERROR", "EXIT_FILTER_BUG", "EXIT_CODE_BY_VERDICT", "EXIT_CODE_ERROR", "exit_code_of",
           "filter_stdin", "pass_through", "classify_input", "to_stderr"]

EXIT_FILTER_ERROR = 1
EXIT_FILTER_BUG = 70  # EX_SOFTWARE
EXIT_CODE_BY_VERDICT = {"spam": 0, "ham": 1, "unsure": 2, "skipped": 1}
"""``classify --exit-code``: bogofilter's codes, which delivery scripts already test.  Skipped input (empty,
not mail, larger than max_message_bytes) takes ham's 1: delivered as if there were no filter (as spamc does
with mail over its size limit), never filed as spam nor queued for review as unsure."""
EXIT_CODE_ERROR = 3
STREAM_CHUNK = 1 << 16
"""Bytes copied at a time when a message is passed through without being held whole."""

Warn = Callable[[str], None]
"""Where a command's notes and error lines go (stderr)."""


def to_stderr(line: str) -> None:
    """The :data:`Warn` of filter mode: ``line`` on stderr at once (the mail system's log)."""
    print(line, file=sys.stderr, flush=True)


def filter_stdin(load_settings: Callable[[], Settings], user: str, *, paths: Sequence[str], report: bool,
                 verdict_codes: bool, source: BinaryIO, sink: BinaryIO, now: datetime, warn: Warn) -> int:
    """``classify --filter``: the message on ``source`` to ``sink`` with verdict headers; the exit code.

    ``verdict_codes`` (``--exit-code``): the code is the verdict's (:data:`EXIT_CODE_BY_VERDICT`), or
    :data:`EXIT_CODE_ERROR`.  A bad configuration or a path argument passes the message through.
    """
    failed = EXIT_CODE_ERROR if verdict_codes else EXIT_FILTER_ERROR
    try:
        settings = load_settings()
    except SpamtlError as exc:  # a bad configuration must not lose mail either
        warn(f"Error: {exc} (message passed through unfiltered)")
        return pass_through(source, sink, failed)
    if report:
        settings = dataclasses.replace(settings, filter_report=True)
    if paths and list(paths) != ["-"]:
        warn(f"Error: --filter reads one message from stdin; unexpected {paths[0]!r} "
             "(message passed through unfiltered)")
        return pass_through(source, sink, failed)
    return _filter_one(settings, user, source=source, sink=sink, verdict_codes=verdict_codes, now=now, warn=warn)


def _filter_one(settings: Settings, user: str, *, source: BinaryIO, sink: BinaryIO, verdict_codes: bool,
                now: datetime, warn: Warn) -> int:
    """Write the message back with verdict headers; on any failure write it unchanged.

    At most ``settings.max_message_bytes`` are read before deciding: a larger
    message is passed through unscanned (``X-Spamtl-Status: skipped``), streamed
    from ``source`` to ``sink`` in blocks, never held in memory whole.  So is input
    that is empty or not mail (``skip_reason``), unscored.
    """
    limit = settings.max_message_bytes
    raw = source.read(limit + 1)
    if len(raw) > limit:
        sink.write(add_headers(raw, [("X-Spamtl-Status", f"skipped, larger than {limit} bytes")]))
        _copy(source, sink)
        _log_skipped(settings, user, f"larger than {limit} bytes")
        return EXIT_CODE_BY_VERDICT["skipped"] if verdict_codes else 0
    code = 0
    try:
        headers, verdict = _filter_headers(settings, user, raw, now=now, warn=warn)
        code = EXIT_CODE_BY_VERDICT[verdict] if verdict_codes else 0
    except SpamtlError as exc:
        warn(f"Error: {' '.join(redact(str(exc)).split())} (message passed through unfiltered)")
        headers, code = [("X-Spamtl-Status", "error")], EXIT_CODE_ERROR if verdict_codes else EXIT_FILTER_ERROR
    except Exception as exc:  # noqa: BLE001 - never lose mail, whatever went wrong
        warn(f"Error: internal error {exc.__class__.__name__}: {' '.join(redact(str(exc)).split())} "
             "(message passed through unfiltered)")
        headers, code = [("X-Spamtl-Status", "error")], EXIT_CODE_ERROR if verdict_codes else EXIT_FILTER_BUG
    sink.write(add_headers(raw, headers))
    sink.flush()
    return code


def pass_through(source: BinaryIO, sink: BinaryIO, code: int) -> int:
    """Copy ``source`` to ``sink`` marked ``X-Spamtl-Status: error`` (a pipeline whose command line is wrong)."""
    sink.write(add_headers(source.read(STREAM_CHUNK), [("X-Spamtl-Status", "error")]))
    _copy(source, sink)
    return code


def _copy(source: BinaryIO, sink: BinaryIO) -> None:
    while block := source.read(STREAM_CHUNK):
        sink.write(block)
    sink.flush()


def _filter_headers(settings: Settings, user: str, raw: bytes, *, now: datetime,
                    warn: Warn) -> tuple[list[tuple[str, str]], str]:
    """The headers to add, and the verdict (``skipped`` for input that is not mail: not scored, not logged)."""
    validate_name(user)
    reason = skip_reason(raw)
    if reason is not None:
        _log_skipped(settings, user, reason)
        return [("X-Spamtl-Status", f"skipped, {reason}")], "skipped"
    from spamtl.store.engine import store_source

    reader = open_reader(store_source(settings.database_url), settings)
    try:
        model = reader.user_model(reader.recipient(user))
        if model.user_id is None:
            _note_unknown_user(settings, model.user, warn)
        message = prepare(raw)
        verdict = reader.classify(model, message, "<stdin>")
        VerdictLogger(reader.store, create_users=settings.auto_create_users).log(model, [(message, verdict)], now)
        headers = verdict_headers(verdict)
        if settings.filter_report:
            from spamtl.services.explain import explain, report_header

            headers.append(("X-Spamtl-Report", report_header(explain(model, message, scored=verdict.scored))))
    finally:
        reader.store.close()
    log_verdict(settings, verdict)
    return headers, verdict.verdict


def classify_input(engine: Engine, settings: Settings, user: str, paths: Sequence[str], *, stdin: BinaryIO, is_one: bool,
                   now: datetime, warn: Warn) -> Iterator[Verdict | Skipped | Unreadable]:
    """Classify the mail at ``paths`` (stdin for none or ``-``) for ``user``, logging each verdict and skip.

    ``is_one`` (``--exit-code``): exactly one message, or a :class:`UsageError`.
    """
    validate_name(user)
    mails = _mails(paths, stdin, is_one=is_one)
    reader = open_reader(engine, settings)
    try:
        model = reader.user_model(user)
        if model.user_id is None:
            _note_unknown_user(settings, user, warn)
        elif not model.is_known_user:
            warn(f"note: {user!r} has no personal model yet; scored by the shared model")
        for item in classify_messages(reader, user=user, mails=mails, now=now, model=model):
            if isinstance(item, Skipped):
                _log_skipped(settings, user, item.reason, item.origin)
            elif isinstance(item, Verdict):
                log_verdict(settings, item)
            yield item
    finally:
        reader.store.close()


def exit_code_of(item: Verdict | Skipped | Unreadable) -> int:
    """The ``--exit-code`` status of one classified item."""
    from spamtl.mail.sources import Unreadable

    if isinstance(item, Unreadable):
        return EXIT_CODE_ERROR
    return EXIT_CODE_BY_VERDICT["skipped" if isinstance(item, Skipped) else item.verdict]


def _mails(paths: Sequence[str], stdin: BinaryIO, *, is_one: bool) -> Any:
    from spamtl.mail.sources import RawMail, iter_mail  # files and folders: not filter mode's

    if not paths or list(paths) == ["-"]:
        return [RawMail("<stdin>", stdin.read())]
    missing = [p for p in paths if p != "-" and not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or directory: {missing[0]}")
    if is_one and len(paths) > 1:
        raise UsageError("--exit-code gives the verdict of one message; pass one, not several paths")
    mails = iter_mail(paths)
    if not is_one:
        return mails
    first = list(itertools.islice(mails, 2))  # a path always yields one item at least (an Unreadable)
    if len(first) > 1:
        raise UsageError(f"--exit-code gives the verdict of one message; {paths[0]} holds more than one message")
    return first


def _note_unknown_user(settings: Settings, user: str, warn: Warn) -> None:
    """Say that ``user`` is not in the store, in the log (a warning) and through ``warn`` unless the log is there.

    A typo in a recipe's user name must not go unnoticed, nor a new mailbox that nobody registered.
    """
    stored = "registered as a new user" if settings.auto_create_users else "verdicts not stored"
    message = f"scored with the shared model, {stored} (see spamtl users)"
    log_event(settings, "unknown_user", {"user": user, "msg": message}, level=logging.WARNING)
    if not is_shown_on_stderr(settings, logging.WARNING):
        warn(f"spamtl: unknown user {user!r}; {message}")


def _log_skipped(settings: Settings, user: str, reason: str, origin: str | None = None) -> None:
    """One log line for input passed through without a verdict (never a verdict line)."""
    log_event(settings, "skipped", {"user": user, "reason": reason, **({"origin": origin} if origin else {})})
