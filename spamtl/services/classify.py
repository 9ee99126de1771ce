"""Classify mail for one user: one model reader and one verdict logger for every caller.

The CLI, ``spamtl serve`` and the demo score through :class:`ModelReader` and log through
:class:`VerdictLogger`.  A message is known by its digest (:func:`spamtl.mail.headers.message_identity`),
so a delivered copy is the message that was classified; the user's label decides the verdict when there is
one (``reason = "label"``); cutoffs come from ``cutoffs set``, then the settings' per-user cutoffs, then
the active version's, then the global settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from spamtl.errors import DatabaseError, NoModelError
from spamtl.features import FeatureConfig, IdfWeights, MessageTokens, column_tokens, featurize_with_tokens
from spamtl.mail.headers import message_identity, not_mail_reason
from spamtl.mail.parse import ParsedMessage, parse_message
from spamtl.model.weights import ModelWeights, RowScore, SparsePart, decode_stored
from spamtl.settings import Settings, address_without_extension, verdict_at
from spamtl.store import statements
from spamtl.store.statements import Store

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from spamtl.mail.sources import RawMail, Unreadable
    from spamtl.store.engine import SqliteFile

__all__ = ["SHORT_ID_CHARS", "Prepared", "Scored", "Verdict", "Skipped", "UserModel", "ModelReader",
           "VerdictLogger", "VerdictWriter", "prepare", "skip_reason", "classify_messages", "open_reader",
           "verdict_headers"]

SHORT_ID_CHARS = 12
"""Hex characters of the sha256 shown as a message's id (48 bits: unambiguous in any real store)."""
_LOG_CHUNK = 500


@dataclass(frozen=True)
class Prepared:
    """A message as spamtl knows it: the bytes it keeps and its digest (:func:`spamtl.mail.headers.message_identity`)."""

    raw: bytes
    sha256: str

    @property
    def short_id(self) -> str:
        return self.sha256[:SHORT_ID_CHARS]


def prepare(raw: bytes) -> Prepared:
    """The message's kept bytes (filter headers stripped) and its digest, by the one identity rule."""
    return Prepared(*message_identity(raw))


@dataclass(frozen=True)
class Scored:
    """One scoring pass over a message: the score with its parts, and what names their evidence.

    :meth:`UserModel.score_message` makes it (one parse, one featurisation, one
    :meth:`~spamtl.model.weights.ModelWeights.score`); the verdict, the filter's report header, the
    daemon's SYMBOLS and REPORT, ``spamtl explain`` and the review queue all read it.
    """

    score: RowScore  # the logit and its shared, group and personal parts
    warnings: list[str]
    parsed: ParsedMessage
    tokens: MessageTokens  # what the row was hashed from, to name its columns

    @property
    def logit(self) -> float:
        return self.score.logit

    @property
    def probability(self) -> float:
        return self.score.probability

    def column_tokens(self, n_features: int) -> dict[int, list[str]]:
        """Column -> the message's tokens hashed to it (see :func:`spamtl.features.column_tokens`)."""
        return column_tokens(self.tokens.as_list(), n_features)


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
    # The pass this verdict came from, so that its explanation (SYMBOLS, REPORT, --report) costs no second
    # parse.  Up to about 0.5 MB (the body text, the tokens): dropped wherever verdicts are queued or collected.
    scored: Scored | None = field(default=None, repr=False, compare=False)

    @property
    def short_id(self) -> str:
        return self.sha256[:SHORT_ID_CHARS]

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "message_id": self.message_id, "sha256": self.sha256, "id": self.short_id,
                "verdict": self.verdict, "probability": round(self.probability, 6),
                "model_version": self.model_version, "spam_cutoff": self.spam_cutoff, "ham_cutoff": self.ham_cutoff,
                "reason": self.reason}

    def header_value(self) -> str:
        """The ``X-Spamtl-Status`` value: verdict first, then key=value facts (id works with --id), spam cutoff
        before ham cutoff."""
        label = ", label" if self.reason == "label" else ""
        return (f"{self.verdict}, probability={self.probability:.4f}, spam_cutoff={self.spam_cutoff:.4f}, "
                f"ham_cutoff={self.ham_cutoff:.4f}, version={self.model_version}, id={self.short_id}{label}")


@dataclass(frozen=True)
class Skipped:
    """Input passed over without a verdict (:func:`skip_reason`): nothing scored, nothing logged."""

    user: str
    origin: str
    reason: str  # e.g. "empty message", "not mail: no header fields"

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "origin": self.origin, "verdict": "skipped", "skip_reason": self.reason}

    def header_value(self) -> str:
        """The ``X-Spamtl-Status`` value, as for mail larger than the size limit: ``skipped, <reason>``."""
        return f"skipped, {self.reason}"


def skip_reason(raw: bytes) -> str | None:
    """Why these bytes get no verdict (empty, or not mail at all: :func:`spamtl.mail.headers.not_mail_reason`), or None.

    The one skip decision of every caller (filter mode, a mailbox, the daemon): such input is passed
    through with ``X-Spamtl-Status: skipped, <reason>``, never scored (a model asked about nothing
    answers with its prior, which can be a confident "spam") and never logged as a verdict.
    """
    return not_mail_reason(raw)


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

    def score_message(self, raw: bytes) -> Scored:
        """The one scoring pass (every verdict and explanation comes from it): parse, featurise, score."""
        parsed = parse_message(raw)
        row, tokens = featurize_with_tokens(parsed, self.config)
        warnings = ["; ".join(parsed.defects)] if parsed.is_damaged else []
        return Scored(self.weights.score(row, self.user, self.group, is_dense=True), warnings, parsed, tokens)

    def verdict(self, probability: float) -> str:
        """The verdict at this user's cutoffs."""
        return verdict_at(probability, self.spam_cutoff, self.ham_cutoff)


def verdict_headers(verdict: Verdict, *, tests: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The headers filter mode and ``spamtl serve`` (PROCESS/HEADERS) add for a verdict.

    Always ``X-Spamtl-Status`` (feedback by ``--id`` reads it).  Filter mode (``tests`` None) adds
    ``X-Spam-Flag: YES`` for spam.  The daemon gives ``tests`` (the score's symbols,
    :func:`spamtl.services.explain.symbol_names`) and gets SpamAssassin's ``X-Spam-Flag``,
    ``X-Spam-Level`` and ``X-Spam-Status`` in its layout, on its 5.0 scale (:mod:`spamtl.services.points`),
    as rules and milters written for SpamAssassin expect them.
    """
    headers = [("X-Spamtl-Status", verdict.header_value())]
    if tests is None:
        if verdict.verdict == "spam":
            headers.append(("X-Spam-Flag", "YES"))
        return headers
    from spamtl import __version__
    from spamtl.services.points import score_scale, spamassassin_headers

    score, _ = score_scale(verdict.probability, verdict.spam_cutoff, verdict.ham_cutoff, verdict.verdict)
    return headers + spamassassin_headers(score, verdict.verdict == "spam", list(tests), f"spamtl-{__version__}")


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


class ModelReader:
    """Loads users' slices of the active model, and keeps them while nothing changes.

    A one-shot CLI reads one slice.  A daemon keeps a reader for its lifetime
    and calls :meth:`refresh` before each request (cheap: one row): when the
    store generation moved, it drops exactly what changed, so a promotion,
    ``models activate``, a feedback refit or a user's deletion is seen at once.  Every
    :class:`UserModel` comes from a single version: never two in one verdict.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._generation: int | None = None
        self._version: _VersionParts | None = None
        self._users: dict[str, UserModel] = {}

    def refresh(self) -> bool:
        """Drop cached parts that changed since the last call; True if anything was dropped."""
        row = self.store.one(statements.GENERATION)
        generation = int(row[0]) if row else 0
        if generation == self._generation:
            self.store.finish_read()
            return False
        previous, self._generation = self._generation, generation
        dropped = bool(self._users) or self._version is not None
        active = self.store.one(statements.ACTIVE_VERSION)
        # A deleted or renamed user leaves no changed row behind: the marker says so, and every slice (with
        # its user id) and the version's task groups go.
        users_changed = self.store.one(statements.USERS_CHANGED) if previous is not None else None
        if (previous is None or self._version is None or active is None or active[0] != self._version.version
                or (users_changed is not None and int(users_changed[0]) > previous)):
            self._version = None
            self._users.clear()
        else:
            changed = self.store.all(statements.CHANGED_PARTS, {"version": self._version.version, "generation": previous})
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
            row = self.store.one(statements.ACTIVE_VERSION)
            if row is None:
                raise NoModelError()
            version, feature_key, n_features, params = row
            params = json.loads(params) if isinstance(params, str) else dict(params or {})
            try:
                config = FeatureConfig.from_key(feature_key, self.settings.features.authserv_ids)
            except ValueError as exc:
                raise DatabaseError(f"{exc}; run `spamtl train` to retrain") from None
            n_features = int(n_features)
            shared = self._part(version, n_features, "shared", "")
            idf_bytes = self._part_bytes(version, "idf", "")
            idf = None if idf_bytes is None else decode_stored(IdfWeights.from_bytes, idf_bytes, version=version,
                                                               n_features=n_features, kind="idf")
            self._version = _VersionParts(
                version=version, config=config, n_features=n_features, shared=shared or SparsePart.empty(), idf=idf,
                task_groups=dict(params.pop("task_groups", None) or {}), params=params)
        return self._version

    def _part_bytes(self, version: int, kind: str, name: str) -> bytes | None:
        row = self.store.one(statements.PART, {"version": version, "kind": kind, "name": name})
        return bytes(row[0]) if row else None

    def _part(self, version: int, n_features: int, kind: str, name: str) -> SparsePart | None:
        data = self._part_bytes(version, kind, name)
        if data is None:
            return None
        return decode_stored(SparsePart.from_bytes, data, version=version, n_features=n_features, kind=kind,
                             name=name)

    def user_model(self, user: str) -> UserModel:
        """``user``'s slice of the active model (the shared part alone for a user it does not know)."""
        cached = self._users.get(user)
        if cached is not None:
            return cached
        if self._generation is None:
            self.refresh()
        v = self._version_parts()
        user_row = self.store.one(statements.USER, {"name": user})
        user_id, stored_group, spam_override, ham_override = user_row if user_row else (None, None, None, None)
        group = v.task_groups.get(user, stored_group)
        if group and group not in v.groups:
            v.groups[group] = self._part(v.version, v.n_features, "group", group)
        personal = self._part(v.version, v.n_features, "user", user)
        group_part = v.groups.get(group) if group else None
        weights = ModelWeights(
            n_features=v.n_features, shared=v.shared,
            groups={group: group_part} if group and group_part is not None else {},
            tasks={user: personal} if personal is not None else {},
            task_groups={user: group}, params=v.params, idf=v.idf)
        spam_cutoff, ham_cutoff, source = self._cutoffs(user, v.version, spam_override, ham_override)
        model = UserModel(user=user, version=v.version, weights=weights, config=v.config,
                          is_known_user=personal is not None, group=group, user_id=user_id,
                          spam_cutoff=spam_cutoff, ham_cutoff=ham_cutoff, cutoff_source=source)
        self.store.finish_read()
        self._users[user] = model
        return model

    def _cutoffs(self, user: str, version: int | None, spam_override: float | None,
                 ham_override: float | None) -> tuple[float, float, str]:
        """(spam, ham, source): administrator > configuration > the version's training > global."""
        spam_cutoff, ham_cutoff, source = self.settings.spam_cutoff, self.settings.ham_cutoff, "global setting"
        trained = self.store.one(statements.USER_CUTOFF, {"version": version, "name": user}) if version else None
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
        active = self.store.one(statements.ACTIVE_VERSION)
        row = self.store.one(statements.USER, {"name": user})
        spam_override, ham_override = (row[2], row[3]) if row else (None, None)
        result = self._cutoffs(user, int(active[0]) if active else None, spam_override, ham_override)
        self.store.finish_read()
        return result

    def recipient(self, name: str) -> str:
        """The user a recipient address names: the address itself when the store knows it, else the
        address without its extension (``recipient_delimiter``), as Postfix looks a recipient up."""
        base = address_without_extension(name, self.settings.recipient_delimiter)
        if base == name:
            return name
        is_known = self.store.one(statements.USER, {"name": name}) is not None
        self.store.finish_read()
        return name if is_known else base

    def user_names(self) -> list[str]:
        names = [str(r[0]) for r in self.store.all(statements.USER_NAMES)]
        self.store.finish_read()
        return names

    def current_label(self, model: UserModel, sha256: str) -> str | None:
        if model.user_id is None:
            return None
        row = self.store.one(statements.CURRENT_LABEL, {"user_id": model.user_id, "sha256": sha256})
        self.store.finish_read()
        return str(row[0]) if row else None

    def classify(self, model: UserModel, message: Prepared, origin: str, *, keep_scored: bool = True) -> Verdict:
        """The verdict for one prepared message: the model's, unless the user labelled it.

        With ``keep_scored`` the verdict keeps its scoring pass (``Verdict.scored``) for an explanation;
        callers that hold many verdicts pass False.
        """
        scored = model.score_message(message.raw)
        probability, parsed = scored.probability, scored.parsed
        verdict, reason = model.verdict(probability), "model"
        label = self.current_label(model, message.sha256)
        if label is not None:
            verdict, reason = label, "label"
        return Verdict(user=model.user, origin=origin, message_id=parsed.message_id, sha256=message.sha256,
                       verdict=verdict, probability=probability, model_version=model.version,
                       spam_cutoff=model.spam_cutoff, ham_cutoff=model.ham_cutoff, reason=reason,
                       subject=parsed.subject, warnings=scored.warnings, scored=scored if keep_scored else None)


class VerdictLogger:
    """Stores what was said about which message (the classification log), in one transaction per batch.

    A user the store does not know is registered only when ``create_users``
    is set (``auto_create_users`` in the settings); otherwise their verdicts
    are given but not stored, so a typo in a user name leaves no trace.  Nor
    are the verdicts of a user deleted (or renamed) after their slice was read.
    """

    def __init__(self, store: Store, *, create_users: bool = False) -> None:
        self.store = store
        self.create_users = create_users

    def log(self, model: UserModel, items: list[tuple[Prepared, Verdict]], now: datetime) -> bool:
        """Log a batch of verdicts for one user; False when the user is unknown and not created."""
        if not items:
            return True
        return self.log_each([(model, message, verdict, now) for message, verdict in items]) > 0

    def log_each(self, entries: Sequence[tuple[UserModel, Prepared, Verdict, datetime]]) -> int:
        """Log verdicts of any users, each with its own time, in one transaction; how many were stored."""
        with self.store.transaction():
            user_ids = {id(model): self._user_id(model, now) for model, _, _, now in entries}
            kept = [(user_ids[id(model)], message, verdict, now) for model, message, verdict, now in entries
                    if user_ids[id(model)] is not None]
            if not kept:
                return 0
            pks = statements.store_messages(self.store, [(m.sha256, m.raw, v.subject) for _, m, v, _ in kept],
                                            now=min(now for *_, now in kept))
            self.store.execute(statements.LOG_VERDICT, [
                {"user_id": user_id, "message_pk": pks[message.sha256], "probability": verdict.probability,
                 "verdict": verdict.verdict, "version": verdict.model_version, "now": now}
                for user_id, message, verdict, now in kept])
        return len(kept)

    def _user_id(self, model: UserModel, now: datetime) -> int | None:
        """The user's id, registered first if new and ``create_users``; None: their verdicts are not stored."""
        row = self.store.one(statements.USER, {"name": model.user})
        if model.user_id is None:
            if not self.create_users:
                return None
            if row is None:
                statements.create_user(self.store, name=model.user, group=None, now=now)
                row = self.store.one(statements.USER, {"name": model.user})
            model.user_id = int(row[0]) if row else None
        elif row is None or int(row[0]) != model.user_id:
            return None  # deleted (or renamed) since the slice was read: nothing of theirs is stored
        return model.user_id


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

    def __init__(self, engine: Engine, settings: Settings, *, interval: float, max_batch: int = 500,
                 on_error: Callable[[int, Exception], None] | None = None) -> None:
        import threading

        self.engine = engine
        self.settings = settings
        self.interval = max(0.0, interval)
        self.max_batch = max(1, max_batch)
        self.on_error = on_error
        self._pending: list[tuple[UserModel, Prepared, Verdict, datetime]] = []
        self._busy = False
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spamtl-verdicts", daemon=True)
        self._thread.start()

    def submit(self, model: UserModel, message: Prepared, verdict: Verdict, now: datetime) -> None:
        if verdict.scored is not None:
            verdict = replace(verdict, scored=None)  # the queue holds what is stored, not the scoring pass
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

        store = Store(self.engine)  # its own connection, in this thread
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
                    self._write(store, batch)
                except Exception as exc:  # noqa: BLE001 - the writer thread must outlive a bad store
                    self._failed(len(batch), exc)
                finally:
                    with self._wake:
                        self._busy = False
                        self._wake.notify_all()
        finally:
            store.close()

    def _write(self, store: Store, batch: list[tuple[UserModel, Prepared, Verdict, datetime]]) -> None:
        logger = VerdictLogger(store, create_users=self.settings.auto_create_users)
        try:
            logger.log_each(batch)
            return
        except DatabaseError:
            if len({id(m) for m, *_ in batch}) == 1:
                raise
        users: dict[int, list[tuple[UserModel, Prepared, Verdict, datetime]]] = {}
        for entry in batch:
            users.setdefault(id(entry[0]), []).append(entry)
        for entries in users.values():
            try:
                logger.log_each(entries)
            except DatabaseError as exc:
                self._failed(len(entries), exc)

    def _failed(self, count: int, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(count, exc)


def open_reader(engine: Engine | SqliteFile, settings: Settings) -> ModelReader:
    """A reader on its own connection of ``engine``, schema checked."""
    reader = ModelReader(Store(engine), settings)
    try:
        reader.store.check_schema()
    except BaseException:
        reader.store.close()
        raise
    return reader


def classify_messages(reader: ModelReader, *, user: str, mails: Iterable[RawMail | Unreadable], now: datetime,
                      log: bool = True, model: UserModel | None = None,
                      logger: VerdictLogger | None = None) -> Iterator[Verdict | Skipped | Unreadable]:
    """Score each message for ``user`` and log the verdicts (in chunks, one transaction each), in input order.

    A user the model has never seen is scored by the shared (and group) part.  Input that is not
    mail (:func:`skip_reason`) comes out as :class:`Skipped`: not scored, not logged.
    """
    from spamtl.mail.sources import Unreadable  # not on the one-message path (filter mode, the daemon)

    scorer = model if model is not None else reader.user_model(user)
    verdicts = logger if logger is not None else VerdictLogger(reader.store,
                                                               create_users=reader.settings.auto_create_users)
    pending: list[tuple[Prepared | None, Verdict | Skipped | Unreadable]] = []

    def flush() -> Iterator[Verdict | Skipped | Unreadable]:
        if log:
            verdicts.log(scorer, [(m, v) for m, v in pending if m is not None and isinstance(v, Verdict)], now)
        yield from (v for _, v in pending)
        pending.clear()

    for item in mails:
        if isinstance(item, Unreadable):  # a file that is not mail was read, and is skipped as stdin would be
            pending.append((None, Skipped(user, item.origin, item.not_mail) if item.not_mail else item))
        elif (reason := skip_reason(item.raw)) is not None:
            pending.append((None, Skipped(user, item.origin, reason)))
        else:
            message = prepare(item.raw)
            pending.append((message, reader.classify(scorer, message, item.origin, keep_scored=False)))
        if len(pending) >= _LOG_CHUNK:
            yield from flush()
    yield from flush()
