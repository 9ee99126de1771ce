"""Labelled data from the store as model inputs, with a feature cache.

Feature rows are computed once per message and feature configuration and
kept in ``message_features``; raw mail is read and featurised in chunks (on
worker processes when there is much to do, :func:`spamtl.parallel.executor`),
so memory is bounded by the features, not by the raw corpus.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Engine

from spamtl.features import FeatureConfig, FeatureRow, featurize, rows_to_csr
from spamtl.mail.parse import parse_message
from spamtl.parallel import SerialExecutor, executor
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.rowfiles import row_batches, stack_rows
from spamtl.store import queries
from spamtl.store.engine import transaction
from spamtl.store.statements import chunks

__all__ = ["TrainingData", "load_training_data", "feature_rows", "featurize_raw"]

_PARALLEL_MIN = 2000
_CHUNK = 1000

Advance = Callable[[int], None]
"""Called with how many more messages have their features (``Progress.advance``)."""


@dataclass
class TrainingData:
    """Current labels as arrays, one row per (user, message) label."""

    X: sp.csr_matrix
    y: np.ndarray  # 1 = spam
    users: np.ndarray  # str
    groups: np.ndarray  # object: group name or None
    message_pks: np.ndarray
    recency: np.ndarray  # float: message date (or label time) as a POSIX timestamp
    # True where the label is a verdict its user never corrected (Settings.autolearn), not their own label.
    uncorrected: np.ndarray | None = None

    @property
    def learned(self) -> np.ndarray:
        """Rows whose label a user gave (import or feedback): what the gate and the cutoffs are judged on."""
        return np.ones(len(self.y), dtype=bool) if self.uncorrected is None else ~self.uncorrected

    @property
    def n_users(self) -> int:
        return len(np.unique(self.users))

    def subset(self, rows: np.ndarray) -> TrainingData:
        return TrainingData(self.X[rows], self.y[rows], self.users[rows], self.groups[rows],
                            self.message_pks[rows], self.recency[rows],
                            None if self.uncorrected is None else self.uncorrected[rows])


def featurize_raw(raws: Sequence[bytes], config: FeatureConfig) -> list[bytes]:
    """Serialised feature rows of raw messages (top level so worker processes can run it)."""
    return [featurize(parse_message(raw), config).to_bytes() for raw in raws]


def feature_rows(engine: Engine, message_pks: Sequence[int], config: FeatureConfig,
                 progress: Advance | None = None) -> dict[int, FeatureRow]:
    """Feature rows of the given messages, computing and caching the missing ones.

    Messages without a cached row whose body retention has dropped are absent from the result.
    """
    wanted = sorted(set(int(p) for p in message_pks))
    with transaction(engine, checked=False) as session:
        cached = queries.cached_features(session=session, message_pks=wanted, feature_key=config.key)
    if progress is not None:
        progress(len(cached))
    missing = [p for p in wanted if p not in cached]
    workers = min(os.cpu_count() or 1, 4) if len(missing) >= _PARALLEL_MIN else 1
    pool = executor(workers, kind="processes")
    ahead = 0 if isinstance(pool, SerialExecutor) else workers  # chunks in flight beyond the one being stored
    try:
        pending: deque[tuple[list[int], Future[list[bytes]]]] = deque()
        for chunk in chunks(missing, _CHUNK):
            with transaction(engine, checked=False) as session:
                pairs = list(queries.raw_messages(session=session, message_pks=chunk))
            pending.append(([pk for pk, _ in pairs], pool.submit(featurize_raw, [raw for _, raw in pairs], config)))
            while len(pending) > ahead:
                pks, future = pending.popleft()
                _store(engine, pks, future.result(), config, cached, progress)
        for pks, future in pending:
            _store(engine, pks, future.result(), config, cached, progress)
    finally:
        pool.shutdown(cancel_futures=True)
    return {pk: FeatureRow.from_bytes(blob) for pk, blob in cached.items()}


def _store(engine: Engine, pks: list[int], blobs: list[bytes], config: FeatureConfig, cached: dict[int, bytes],
           progress: Advance | None) -> None:
    with transaction(engine, checked=False) as session:
        queries.store_features(session=session, rows=zip(pks, blobs), feature_key=config.key)
    cached.update(zip(pks, blobs))
    if progress is not None:
        progress(len(pks))


def _timestamp(value: datetime | None, fallback: datetime) -> float:
    moment = value or fallback
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return fallback.timestamp()


def load_training_data(engine: Engine, config: FeatureConfig, *, users: Sequence[str] | None = None,
                       progress: Progress = NO_PROGRESS,
                       uncorrected: tuple[datetime, datetime] | None = None,
                       directory: str | None = None, batch_rows: int | None = None) -> TrainingData:
    """Every current label (optionally of some users) with its message's features.

    With ``uncorrected=(since, until)`` the verdicts logged in that window
    that their user never corrected are added as labels too, marked in
    ``TrainingData.uncorrected`` (see :func:`spamtl.store.queries.uncorrected_verdicts`).

    The features are read ``batch_rows`` labels (default ``BATCH_ROWS``) at a time; with ``directory`` each batch's rows go to a file
    there and ``X`` maps them (:mod:`spamtl.rowfiles`), so memory holds a batch, not every label's rows.
    ``progress`` (its current stage counts messages) gets the total once the labels are read, then the
    messages whose features are ready, a chunk at a time.
    """
    with transaction(engine, checked=False) as session:
        labels, n_given = queries.labels_to_learn(session=session, users=users, window=uncorrected)
        groups = {u.name: u.group_name for u in queries.users_by_name(session=session).values()}
    given = np.arange(len(labels)) < n_given
    kept: list[int] = []
    # What feature_rows will count: each batch's distinct messages.
    progress.set_total(sum(len({lab.message_pk for lab in labels[b0:b1]}) for b0, b1 in row_batches(len(labels), batch_rows)))

    def batches() -> Iterator[sp.csr_matrix]:
        for b0, b1 in row_batches(len(labels), batch_rows):
            batch = labels[b0:b1]
            rows = feature_rows(engine, [lab.message_pk for lab in batch], config, progress.advance)
            # A label given by id after retention dropped the body has no features: it waits until the message
            # is passed again.
            here = [i for i, lab in enumerate(batch, start=b0) if lab.message_pk in rows]
            kept.extend(here)
            part = rows_to_csr([rows[labels[i].message_pk] for i in here], config.n_features)
            del rows  # not held while the next batch is read
            yield part

    X = stack_rows(batches(), config.n_features, directory)
    labels, given = [labels[i] for i in kept], given[kept]
    return TrainingData(
        X=X,
        y=np.array([int(lab.is_spam) for lab in labels], dtype=np.int64),
        users=np.array([lab.user for lab in labels], dtype=object).astype(str) if labels else np.zeros(0, str),
        groups=np.array([groups.get(lab.user) for lab in labels], dtype=object),
        message_pks=np.array([lab.message_pk for lab in labels], dtype=np.int64),
        recency=np.array([_timestamp(lab.date, lab.labelled_at) for lab in labels], dtype=np.float64),
        uncorrected=None if uncorrected is None else ~given,
    )
