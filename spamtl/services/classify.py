"""Classify mail for one user: one model reader and one verdict logger for every caller.

The CLI (one message or a mailbox), ``spamtl serve`` and the demo all score
through :class:`ModelReader` and log through :class:`VerdictLogger`, on a
:class:`~spamtl.store.lite.Store` (DB-API; no SQLAlchemy on the SQLite path).

- A message is known by the sha256 of its bytes *without* the headers that
  spamtl and other filters add (:func:`spamtl.mail.strip_own_headers`), so a
  delivered copy is the same message as the one that was classified, and a
  forged ``X-Spamtl-Status`` cannot change a score.
- A correction sticks: when the user has labelled the message, the verdict
  is the user's label, whatever the model says (``reason = "label"``).
- Each user's cutoffs come from, in order: an administrator's per-user
  setting (``spamtl cutoffs set``), the configuration (``Settings.user_cutoffs``),
  the active version's cutoffs for the user (set at training), the global settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from spamtl.config import Settings, verdict_at
from spamtl.errors import DatabaseError, NoModelError
from spamtl.features import FeatureConfig, IdfWeights, featurize
from spamtl.mail import parse_message, strip_own_headers
from spamtl.scoring import ModelWeights, SparsePart, sigmoid
from spamtl.sources import RawMail, Unreadable
from spamtl.store import lite

__all__ = ["SHORT_ID_CHARS", "Prepared", "Verdict", "UserModel", "ModelReader", "VerdictLogger",
           "VerdictWriter", "prepare", "classify_messages", "open_reader", "verdict_headers"]

SHORT_ID_CHARS = 12
"""Hex characters of the sha256 shown as a message's id (48 bits: unambiguous in any real store)."""
_LOG_CHUNK = 500


@dataclass(frozen=True)
class Prepared:
    """A message as spamtl knows it: its bytes without filter headers and their sha256."""

    raw: bytes
    sha256: str

    @property
    def short_id(self) -> str:
        return self.sha256[:SHORT_ID_CHARS]


def prepare(raw: bytes) -> Prepared:
    """Strip filter headers (spamtl's own and other filters') and hash what is left."""
    clean = strip_own_headers(raw)
    return Prepared(clean, hashlib.sha256(clean).hexdigest())


@dataclass
class Verdict:
    user: str
    origin: str
    message_id: str
    sha256: str
    verdict: str
    probability: float
    model_version: int
    spam_cutoff: float = 0.9
    ham_cutoff: float = 0.5
    reason: str = "model"  # or "label": the user labelled this message, which decides
    subject: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.sha256[:SHORT_ID_CHARS]

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "message_id": self.message_id, "sha256": self.sha256, "id": self.short_id,
                "verdict": self.verdict, "probability": round(self.probability, 6),
                "model_version": self.model_version, "spam_cutoff": self.spam_cutoff, "reason": self.reason}

    def header_value(self) -> str:
        """The ``X-Spamtl-Status`` value: verdict first, then key=value facts (id works with --id)."""
        label = ", label" if self.reason == "label" else ""
        return (f"{self.verdict}, probability={self.probability:.4f}, cutoff={self.spam_cutoff:.4f}, "
                f"version={self.model_version}, id={self.short_id}{label}")


@dataclass
class UserModel:
    """What scoring one user needs: the shared, group and personal parts of one version, and cutoffs."""

    user: str
    version: int
    weights: ModelWeights
    config: FeatureConfig
    is_known_user: bool
    group: str | None
    user_id: int | None = None
    spam_cutoff: float = 0.9
    ham_cutoff: float = 0.5
    cutoff_source: str = "global"
    # The shared (+ group) part as one dense vector and summed intercept, shared by every user of the
    # version and group (a daemon holding 1,000 users keeps one 2 MB vector, not 1,000).
    base: tuple[np.ndarray, float] | None = None

    def _base(self) -> tuple[np.ndarray, float]:
        if self.base is None:
            self.base = dense_base(self.weights, self.group)
        return self.base

    def probability(self, raw: bytes) -> tuple[float, list[str], str]:
        """Spam probability of (already prepared) message bytes, parse warnings, Message-ID."""
        p, warnings, parsed = self.score(raw)
        return p, warnings, parsed.message_id

    def score(self, raw: bytes) -> tuple[float, list[str], Any]:
        parsed = parse_message(raw)
        row = self.weights.prepare(featurize(parsed, self.config))
        dense, intercept = self._base()
        z = intercept + float(dense[row.indices] @ row.values.astype(np.float64))
        personal = self.weights.tasks.get(self.user)
        if personal is not None:
            z += personal.dot(row) + personal.intercept
        warnings = ["; ".join(parsed.defects)] if parsed.is_damaged else []
        return sigmoid(z), warnings, parsed

    def verdict(self, probability: float) -> str:
        """The verdict at this user's cutoffs."""
        return verdict_at(probability, self.spam_cutoff, self.ham_cutoff)


def dense_base(weights: ModelWeights, group: str | None) -> tuple[np.ndarray, float]:
    """w0 + u_g as one dense vector over the hashed space, and the summed intercept."""
    dense = np.zeros(weights.n_features)
    intercept = 0.0
    for part in weights.parts_for(None, group):
        dense[part.cols] += part.values  # columns are unique within a part
        intercept += part.intercept
    return dense, intercept


def verdict_headers(verdict: Verdict) -> list[tuple[str, str]]:
    """The headers filter mode and ``spamtl serve`` (PROCESS/HEADERS) add for a verdict."""
    headers = [("X-Spamtl-Status", verdict.header_value())]
    if verdict.verdict == "spam":
        headers.append(("X-Spam-Flag", "YES"))
    return headers


@dataclass
class _VersionParts:
    version: int
    config: FeatureConfig
    n_features: int
    shared: SparsePart
    idf: IdfWeights | None
    task_groups: dict[str, str | None]
    params: dict[str, Any]
    groups: dict[str, SparsePart | None] = field(default_factory=dict)
    bases: dict[str | None, tuple[np.ndarray, float]] = field(default_factory=dict)


class ModelReader:
    """Loads users' slices of the active model, and keeps them while nothing changes.

    A one-shot CLI reads one slice.  A daemon keeps a reader for its lifetime
    and calls :meth:`refresh` before each request (cheap: one row): when the
    store generation moved, it drops exactly what changed, so a promotion,
    ``models activate`` or a feedback refit is seen at once.  Every
    :class:`UserModel` comes from a single version: never two in one verdict.
    """

    def __init__(self, store: lite.Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._generation: int | None = None
        self._version: _VersionParts | None = None
        self._users: dict[str, UserModel] = {}

    def check_schema(self) -> None:
        try:
            row = self.store.one(lite.SCHEMA)
        except DatabaseError as exc:
            if "no spamtl tables" in str(exc):
                raise DatabaseError("the database is empty; run `spamtl init` to create it") from None
            raise
        revision = row[0] if row else None
        if revision != lite.SCHEMA_REVISION:
            raise DatabaseError(f"the database is at schema {revision}, expected {lite.SCHEMA_REVISION}; "
                                "run `spamtl init` to upgrade it")

    def refresh(self) -> bool:
        """Drop cached parts that changed since the last call; True if anything was dropped."""
        row = self.store.one(lite.GENERATION)
        generation = int(row[0]) if row else 0
        if generation == self._generation:
            self.store.finish_read()
            return False
        previous, self._generation = self._generation, generation
        dropped = bool(self._users) or self._version is not None
        active = self.store.one(lite.ACTIVE_VERSION)
        if previous is None or self._version is None or active is None or active[0] != self._version.version:
            self._version = None
            self._users.clear()
        else:
            changed = self.store.all(lite.CHANGED_PARTS, {"version": self._version.version, "generation": previous})
            if any(kind != "user" for kind, _ in changed):
                self._version = None
                self._users.clear()
            elif changed:
                for _, name in changed:
                    self._users.pop(name, None)
            else:  # a cutoff or a user row changed: user slices are small, reload them all
                self._users.clear()
        self.store.finish_read()
        return dropped

    def _version_parts(self) -> _VersionParts:
        if self._version is None:
            row = self.store.one(lite.ACTIVE_VERSION)
            if row is None:
                raise NoModelError()
            version, feature_key, n_features, params = row
            params = json.loads(params) if isinstance(params, str) else dict(params or {})
            try:
                config = FeatureConfig.from_key(feature_key)
            except ValueError as exc:
                raise DatabaseError(f"{exc}; run `spamtl train` to retrain") from None
            shared = self._part(version, "shared", "")
            idf = self._part_bytes(version, "idf", "")
            self._version = _VersionParts(
                version=version, config=config, n_features=int(n_features),
                shared=shared or SparsePart.empty(), idf=IdfWeights.from_bytes(idf) if idf else None,
                task_groups=dict(params.pop("task_groups", None) or {}), params=params)
        return self._version

    def _part_bytes(self, version: int, kind: str, name: str) -> bytes | None:
        row = self.store.one(lite.PART, {"version": version, "kind": kind, "name": name})
        return bytes(row[0]) if row else None

    def _part(self, version: int, kind: str, name: str) -> SparsePart | None:
        data = self._part_bytes(version, kind, name)
        return SparsePart.from_bytes(data) if data is not None else None

    def user_model(self, user: str) -> UserModel:
        """``user``'s slice of the active model (the shared part alone for a user it does not know)."""
        cached = self._users.get(user)
        if cached is not None:
            return cached
        if self._generation is None:
            self.refresh()
        v = self._version_parts()
        user_row = self.store.one(lite.USER, {"name": user})
        user_id, stored_group, spam_override, ham_override = user_row if user_row else (None, None, None, None)
        group = v.task_groups.get(user, stored_group)
        if group and group not in v.groups:
            v.groups[group] = self._part(v.version, "group", group)
        personal = self._part(v.version, "user", user)
        group_part = v.groups.get(group) if group else None
        weights = ModelWeights(
            n_features=v.n_features, shared=v.shared,
            groups={group: group_part} if group and group_part is not None else {},
            tasks={user: personal} if personal is not None else {},
            task_groups={user: group}, params=v.params, idf=v.idf)
        spam_cutoff, ham_cutoff, source = self._cutoffs(user, v.version, spam_override, ham_override)
        base_key = group if group_part is not None else None
        if base_key not in v.bases:
            v.bases[base_key] = dense_base(weights, base_key)
        model = UserModel(user=user, version=v.version, weights=weights, config=v.config,
                          is_known_user=personal is not None, group=group, user_id=user_id,
                          spam_cutoff=spam_cutoff, ham_cutoff=ham_cutoff, cutoff_source=source,
                          base=v.bases[base_key])
        self.store.finish_read()
        self._users[user] = model
        return model

    def _cutoffs(self, user: str, version: int | None, spam_override: float | None,
                 ham_override: float | None) -> tuple[float, float, str]:
        """(spam, ham, source): administrator > configuration > the version's training > global."""
        spam_cutoff, ham_cutoff, source = self.settings.spam_cutoff, self.settings.ham_cutoff, "global setting"
        trained = self.store.one(lite.USER_CUTOFF, {"version": version, "name": user}) if version else None
        if trained is not None:
            spam_cutoff, ham_cutoff, source = float(trained[0]), float(trained[1]), f"model v{version}: {trained[2]}"
        override = self.settings.user_cutoffs.get(user)
        if override is not None:
            spam_cutoff, ham_cutoff, source = override[0], override[1], "configuration"
        if spam_override is not None:
            spam_cutoff, source = float(spam_override), "set by administrator"
        if ham_override is not None:
            ham_cutoff = float(ham_override)
        return spam_cutoff, min(ham_cutoff, spam_cutoff), source

    def cutoffs(self, user: str) -> tuple[float, float, str]:
        """``user``'s effective (spam, ham) cutoffs and where they come from, with or without a model."""
        active = self.store.one(lite.ACTIVE_VERSION)
        row = self.store.one(lite.USER, {"name": user})
        spam_override, ham_override = (row[2], row[3]) if row else (None, None)
        result = self._cutoffs(user, int(active[0]) if active else None, spam_override, ham_override)
        self.store.finish_read()
        return result

    def user_names(self) -> list[str]:
        names = [str(r[0]) for r in self.store.all(lite.USER_NAMES)]
        self.store.finish_read()
        return names

    def current_label(self, model: UserModel, sha256: str) -> str | None:
        if model.user_id is None:
            return None
        row = self.store.one(lite.CURRENT_LABEL, {"user_id": model.user_id, "sha256": sha256})
        self.store.finish_read()
        return str(row[0]) if row else None

    def classify(self, model: UserModel, message: Prepared, origin: str) -> Verdict:
        """The verdict for one prepared message: the model's, unless the user labelled it."""
        probability, warnings, parsed = model.score(message.raw)
        verdict, reason = model.verdict(probability), "model"
        label = self.current_label(model, message.sha256)
        if label is not None:
            verdict, reason = label, "label"
        return Verdict(user=model.user, origin=origin, message_id=parsed.message_id, sha256=message.sha256,
                       verdict=verdict, probability=probability, model_version=model.version,
                       spam_cutoff=model.spam_cutoff, ham_cutoff=model.ham_cutoff, reason=reason,
                       subject=parsed.subject, warnings=warnings)


class VerdictLogger:
    """Stores what was said about which message (the classification log), in one transaction per batch.

    A user the store does not know is registered only when ``create_users``
    is set (``auto_create_users`` in the settings); otherwise their verdicts
    are given but not stored, so a typo in a user name leaves no trace.
    """

    def __init__(self, store: lite.Store, *, create_users: bool = False) -> None:
        self.store = store
        self.create_users = create_users

    def log(self, model: UserModel, items: list[tuple[Prepared, Verdict]], now: datetime) -> bool:
        """Log a batch of verdicts for one user; False when the user is unknown and not created."""
        if not items:
            return True
        with self.store.transaction():
            return self._log_user(model, [(message, verdict, now) for message, verdict in items])

    def log_each(self, entries: Sequence[tuple[UserModel, Prepared, Verdict, datetime]]) -> int:
        """Log verdicts of any users, each with its own time, in one transaction; how many were stored."""
        by_user: dict[int, tuple[UserModel, list[tuple[Prepared, Verdict, datetime]]]] = {}
        for model, message, verdict, now in entries:  # grouped by model object, each group in order
            by_user.setdefault(id(model), (model, []))[1].append((message, verdict, now))
        stored = 0
        with self.store.transaction():
            for model, items in by_user.values():
                stored += len(items) if self._log_user(model, items) else 0
        return stored

    def _log_user(self, model: UserModel, items: list[tuple[Prepared, Verdict, datetime]]) -> bool:
        """The rows of one user's verdicts, inside the caller's transaction."""
        from spamtl.mail import parse_envelope

        store = self.store
        user_id = model.user_id
        if user_id is None:
            if not self.create_users:
                return False
            store.execute(lite.CREATE_USER, {"name": model.user, "now": store.value(items[0][2])})
            row = store.one(lite.USER, {"name": model.user})
            user_id = model.user_id = int(row[0]) if row else None
        for message, verdict, now in items:
            stamp = store.value(now)
            row = store.one(lite.MESSAGE_PK, {"sha256": message.sha256})
            if row is None:
                message_id, date = parse_envelope(message.raw)
                store.execute(lite.STORE_MESSAGE, {
                    "sha256": message.sha256, "message_id": message_id or None,
                    "raw": lite.compress(message.raw), "size": len(message.raw),
                    "date": store.value(lite.naive_utc(date)), "now": stamp,
                    "subject": verdict.subject[:255] or None})
                row = store.one(lite.MESSAGE_PK, {"sha256": message.sha256})
            assert row is not None
            store.execute(lite.LOG_VERDICT, {
                "user_id": user_id, "message_pk": int(row[0]), "probability": verdict.probability,
                "verdict": verdict.verdict, "version": verdict.model_version, "now": stamp})
        return True


class VerdictWriter:
    """Group commit for a daemon: verdicts are queued at once and written by one thread, in batches.

    The scoring thread calls :meth:`submit` (a list append) and answers the
    client; the writer thread, on its own connection, writes every verdict
    queued during the last ``interval`` seconds (or ``max_batch`` of them) in
    one transaction (:meth:`VerdictLogger.log_each`).  So the daemon takes the
    store's write lock a few times a second instead of once per message, and
    never waits for it (or for another process's writer) while clients wait.

    A verdict is in the store within ``interval`` (plus the write itself);
    :meth:`close` writes everything still queued, so a graceful stop loses
    none.  When a batch fails, each user's verdicts are retried in a
    transaction of their own, so one bad row (a user deleted meanwhile) does
    not take the others with it; what still fails goes to ``on_error``.
    """

    def __init__(self, settings: Settings, *, interval: float, max_batch: int = 500,
                 on_error: Callable[[int, Exception], None] | None = None) -> None:
        import threading

        self.settings = settings
        self.interval = max(0.0, interval)
        self.max_batch = max(1, max_batch)
        self.on_error = on_error
        self.written = 0
        self._pending: list[tuple[UserModel, Prepared, Verdict, datetime]] = []
        self._busy = False
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spamtl-verdicts", daemon=True)
        self._thread.start()

    def submit(self, model: UserModel, message: Prepared, verdict: Verdict, now: datetime) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the verdict writer is closed")
            self._pending.append((model, message, verdict, now))
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._wake.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or failed); False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join()

    def _run(self) -> None:
        import time

        store: lite.Store | None = None
        try:
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._pending or self._closed)
                    if not self._pending:
                        return  # closed, nothing left
                    deadline = time.monotonic() + self.interval
                    while not self._closed and len(self._pending) < self.max_batch:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._wake.wait(left):
                            break
                    batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                    self._busy = True
                try:
                    if store is None:
                        store = lite.open_store(self.settings.database_url)
                    self._write(store, batch)
                except Exception as exc:  # noqa: BLE001 - the writer thread must outlive a bad store
                    self._failed(len(batch), exc)
                finally:
                    with self._wake:
                        self._busy = False
                        self._wake.notify_all()
        finally:
            if store is not None:
                store.close()

    def _write(self, store: lite.Store, batch: list[tuple[UserModel, Prepared, Verdict, datetime]]) -> None:
        logger = VerdictLogger(store, create_users=self.settings.auto_create_users)
        try:
            self.written += logger.log_each(batch)
            return
        except DatabaseError:
            if len({id(m) for m, *_ in batch}) == 1:
                raise
        users: dict[int, list[tuple[UserModel, Prepared, Verdict, datetime]]] = {}
        for entry in batch:
            users.setdefault(id(entry[0]), []).append(entry)
        for entries in users.values():
            try:
                self.written += logger.log_each(entries)
            except DatabaseError as exc:
                self._failed(len(entries), exc)

    def _failed(self, count: int, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(count, exc)


def open_reader(settings: Settings) -> ModelReader:
    """A reader on the settings' database, schema checked."""
    reader = ModelReader(lite.open_store(settings.database_url), settings)
    try:
        reader.check_schema()
    except BaseException:
        reader.store.close()
        raise
    return reader


def classify_messages(reader: ModelReader, *, user: str, mails: Iterable[RawMail | Unreadable], now: datetime,
                      log: bool = True, model: UserModel | None = None,
                      logger: VerdictLogger | None = None) -> Iterator[Verdict | Unreadable]:
    """Score each message for ``user`` and log the verdicts (in chunks, one transaction each).

    A user the model has never seen is scored by the shared (and group) part.
    """
    if model is None:
        model = reader.user_model(user)
    if logger is None:
        logger = VerdictLogger(reader.store, create_users=reader.settings.auto_create_users)
    pending: list[tuple[Prepared, Verdict]] = []
    for item in mails:
        if isinstance(item, Unreadable):
            yield item
            continue
        message = prepare(item.raw)
        pending.append((message, reader.classify(model, message, item.origin)))
        if len(pending) >= _LOG_CHUNK:
            if log:
                logger.log(model, pending, now)
            yield from (v for _, v in pending)
            pending = []
    if log:
        logger.log(model, pending, now)
    yield from (v for _, v in pending)
