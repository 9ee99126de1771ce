"""Prometheus metrics of ``spamtl serve`` and ``spamtl web``: the one home of every metric.

Off until :func:`enable`: before it nothing here imports prometheus_client and each ``note_*`` function
returns at once, so the filter path and a daemon without ``--metrics`` pay nothing for it.

A process that exports metrics

1. calls :func:`enable` once, before it serves.  ``enable(directory)`` is prometheus_client's multiprocess
   mode, for a daemon whose forked workers count: the supervisor creates the (empty, private) directory
   before forking, enables, forks, calls :func:`note_process_gone` for each worker that dies, and removes
   the directory when it exits.  ``enable()`` keeps the counts in this process (one worker, ``spamtl web``);
2. calls the ``note_*`` functions on events (the daemon's workers; the web process calls
   ``note_feedback(label, "web")`` after each stored correction);
3. answers ``GET /metrics`` with :func:`exposition` (body, content type): every process's counters plus the
   store's model gauges, read at scrape time.

The metrics (docs/serving.md, "Metrics"):

- ``spamtl_verdicts_total{verdict}``: mail scanned, by verdict (spam, ham, unsure);
- ``spamtl_scan_seconds``: histogram of the seconds from a read request to its answer (scoring and the answer);
- ``spamtl_unscanned_total{reason}``: mail answered without a verdict, which spamc passes through
  unscanned (:data:`UNSCANNED_REASONS`);
- ``spamtl_feedback_total{label,via}``: corrections stored (label spam, ham or forget; via tell or web);
- ``spamtl_model_active_version``, ``spamtl_model_active_age_seconds``: the store's active version and the
  seconds since its training started;
- ``spamtl_training_last_version``, ``spamtl_training_last_promoted`` (1 promoted, 0 rejected),
  ``spamtl_training_last_duration_seconds``, ``spamtl_training_last_finished_timestamp_seconds``: the
  newest version, i.e. the last training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from spamtl.errors import SpamtlError
from spamtl.store import statements, utcnow
from spamtl.store.statements import Store

__all__ = ["enable", "is_enabled", "note_verdict", "note_unscanned", "note_feedback", "note_process_gone",
           "exposition", "VERDICTS", "UNSCANNED_REASONS", "FEEDBACK_LABELS", "FEEDBACK_VIA"]

log = logging.getLogger("spamtl.telemetry")

VERDICTS = ("spam", "ham", "unsure")
UNSCANNED_REASONS = ("too_big", "overloaded", "refused", "timeout", "bad_request", "not_mail", "no_model", "error")
"""Why mail got no verdict: larger than max_message_bytes; the daemon at capacity; one client's connection
limit; the request not sent in time; a malformed request (or a bad user name); empty or not mail; no
trained model; a store or internal error."""
FEEDBACK_LABELS = ("spam", "ham", "forget")
FEEDBACK_VIA = ("tell", "web")
SCAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the scan latency buckets: a message scores in milliseconds; seconds is trouble."""


class _Events:
    """This process's counters and histogram, every known label at zero from the start (so rates exist)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.verdicts = Counter("spamtl_verdicts", "Mail scanned, by verdict.", ["verdict"], registry=registry)
        self.scan_seconds = Histogram("spamtl_scan_seconds", "Seconds from a read request to its answer.",
                                      buckets=SCAN_BUCKETS, registry=registry)
        self.unscanned = Counter("spamtl_unscanned", "Mail answered without a verdict (passed through unscanned).",
                                 ["reason"], registry=registry)
        self.feedback = Counter("spamtl_feedback", "Corrections stored, by label and by how they came.",
                                ["label", "via"], registry=registry)
        for verdict in VERDICTS:
            self.verdicts.labels(verdict)
        for reason in UNSCANNED_REASONS:
            self.unscanned.labels(reason)
        for label in FEEDBACK_LABELS:
            for via in FEEDBACK_VIA:
                self.feedback.labels(label, via)


_events: _Events | None = None
_registry: Any = None  # what exposition() collects: this process's metrics, or every process's files
_directory: str | None = None


def enable(directory: str | None = None) -> None:
    """Switch metrics on in this process (see the module's docstring); ``directory``: the multiprocess mode."""
    global _events, _registry, _directory
    from prometheus_client import CollectorRegistry, disable_created_metrics

    disable_created_metrics()  # no *_created series: the multiprocess mode has none either
    registry = CollectorRegistry(auto_describe=True)
    if directory is not None:
        from prometheus_client import values
        from prometheus_client.multiprocess import MultiProcessCollector

        # prometheus_client picks its value class when it is imported, from this variable; set both, so that
        # an earlier import of the library in this process does not keep the values in memory.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue()
        MultiProcessCollector(registry, path=directory)
        _events = _Events(None)  # written to files in ``directory`` (per process), read by the collector
    else:
        _events = _Events(registry)
    _registry, _directory = registry, directory


def is_enabled() -> bool:
    return _events is not None


def note_verdict(verdict: str, seconds: float) -> None:
    """A scanned message: its verdict and the seconds from its read request to its answer."""
    events = _events
    if events is not None:
        events.verdicts.labels(verdict).inc()
        events.scan_seconds.observe(seconds)


def note_unscanned(reason: str) -> None:
    """Mail answered without a verdict (one of :data:`UNSCANNED_REASONS`)."""
    events = _events
    if events is not None:
        events.unscanned.labels(reason).inc()


def note_feedback(label: str, via: str) -> None:
    """A stored correction: ``label`` spam, ham or forget (a label removed); ``via`` tell or web."""
    events = _events
    if events is not None:
        events.feedback.labels(label, via).inc()


def note_process_gone(pid: int) -> None:
    """A worker died (multiprocess mode): its counts stay in the sums; live-mode gauges of it would go."""
    if _directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, _directory)


def exposition(engine: Any, *, now: datetime | None = None) -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``: this process's (or every worker's) counters and the
    model gauges read from ``engine``'s store now (a SQLAlchemy engine or a SqliteFile; none if unreadable)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_Scrape(_registry, engine, now or utcnow())), CONTENT_TYPE_LATEST  # type: ignore[arg-type]


class _Scrape:
    """One scrape: the registry's families, then the store's."""

    def __init__(self, registry: Any, engine: Any, now: datetime) -> None:
        self.registry, self.engine, self.now = registry, engine, now

    def collect(self) -> Iterator[Any]:
        if self.registry is not None:
            yield from self.registry.collect()
        yield from _model_families(self.engine, self.now)


@dataclass(frozen=True)
class _VersionState:
    version: int
    status: str
    created_at: datetime
    train_seconds: float | None = None


_newest_seconds: tuple[int, datetime, float | None] | None = None
"""(version, created_at, training seconds) of the newest version: a version's metrics never change, and they are large
(a cutoff per user), so a scrape reads them once per new version."""


def _model_families(engine: Any, now: datetime) -> list[Any]:
    from prometheus_client.core import GaugeMetricFamily

    try:
        active, newest = _read_states(engine)
    except SpamtlError as exc:  # the counters still go out; the model gauges are missing until the store reads
        log.warning("metrics: cannot read the model versions: %s", exc)
        return []
    families = []
    if active is not None:
        families += [GaugeMetricFamily("spamtl_model_active_version", "The store's active model version.",
                                       value=active.version),
                     GaugeMetricFamily("spamtl_model_active_age_seconds",
                                       "Seconds since the active version's training started.",
                                       value=(now - active.created_at).total_seconds())]
    if newest is not None:
        families += [GaugeMetricFamily("spamtl_training_last_version", "The newest model version (the last "
                                       "training).", value=newest.version),
                     GaugeMetricFamily("spamtl_training_last_promoted", "1 if the last training was promoted "
                                       "(active, or retired since), 0 if its candidate was rejected.",
                                       value=1 if newest.status in ("active", "retired") else 0)]
        if newest.train_seconds is not None:  # versions trained before it was recorded have neither
            finished = newest.created_at + timedelta(seconds=newest.train_seconds)
            families += [GaugeMetricFamily("spamtl_training_last_duration_seconds",
                                           "Seconds the last training took (loading to decision).",
                                           value=newest.train_seconds),
                         GaugeMetricFamily("spamtl_training_last_finished_timestamp_seconds",
                                           "When the last training ended (Unix time).",
                                           value=finished.replace(tzinfo=UTC).timestamp())]
    return families


def _read_states(engine: Any) -> tuple[_VersionState | None, _VersionState | None]:
    """The active version and the newest one (with its training seconds), in one short read."""
    global _newest_seconds
    store = Store(engine)
    try:
        rows = [(int(v), str(s), _stamp(c)) for v, s, c in store.all(statements.VERSION_STATES)]
        if not rows:
            return None, None
        version, status, created = max(rows)
        cached = _newest_seconds
        if cached is None or cached[:2] != (version, created):
            metrics = store.one(statements.VERSION_METRICS, {"version": version})[0]
            metrics = json.loads(metrics) if isinstance(metrics, str) else dict(metrics or {})
            seconds = metrics.get("train_seconds")
            cached = _newest_seconds = (version, created, None if seconds is None else float(seconds))
    finally:
        store.close()
    active = next((_VersionState(v, s, c) for v, s, c in rows if s == "active"), None)
    return active, _VersionState(version, status, created, cached[2])


def _stamp(value: Any) -> datetime:
    """A stored time (naive UTC) as the driver returns it: a datetime, or SQLite's text."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[no-any-return]
