"""Backtest a season of use: replay the store's labelled mail in delivery order, day by day.

``spamtl evaluate --replay``: the labelled mail is copied into a temporary SQLite store; per system,
each user's first labels bootstrap a first model, then each day's mail is classified through the one
classify path and every wrong or unsure verdict is corrected through ``record_feedback``, and every night
``train`` runs as the nightly job does.  Systems: ``mtl``, ``pooled`` (mu = 1e6) and ``per_user`` (mu tiny,
alpha scaled by 1/mu), all through the same code (docs/training.md).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from spamtl.errors import UsageError
from spamtl.metrics import roc_auc
from spamtl.parallel import one_blas_thread
from spamtl.progress import NO_PROGRESS, Progress
from spamtl.settings import Settings
from spamtl.store import queries
from spamtl.store.engine import transaction

__all__ = ["SYSTEMS", "DEFAULT_DAYS", "DEFAULT_BOOTSTRAP", "Item", "UserPlan", "Replay", "delivery_order",
           "plan_replay", "system_settings", "replay", "replay_metrics"]

SYSTEMS = ("mtl", "pooled", "per_user")
DEFAULT_DAYS = 20
DEFAULT_BOOTSTRAP = 20
POOLED_MU = 1e6  # v_t penalised 1e6 times w0: personal parts stay ~0, one shared filter
PER_USER_MU = 1e-3  # w0 penalised 1e3 times v_t: the shared part stays ~0, independent filters
OVERLAP_MIN = 0.5
"""Share of the shorter class's date range (5th-95th percentile) that must overlap the other's
for a user's ham and spam to count as interleaved in time."""
DATED_MIN = 0.9  # share of each class with a Date header needed to merge by date
METRICS = ("ham_fpr", "spam_miss", "unsure_rate", "corrections_per_1000", "auc_error_pct")


@dataclass(frozen=True)
class Item:
    """One labelled message of the source store: its primary key there, truth and Date."""

    pk: int
    is_spam: bool
    date: datetime | None = None


@dataclass
class UserPlan:
    """A user's replay schedule: the bootstrap labels, then the mail of each day in order."""

    user: str
    group: str | None
    ordering: str  # "date" or "relative position"
    ordering_reason: str
    bootstrap: list[Item]
    days: list[list[Item]]

    @property
    def n_messages(self) -> int:
        return sum(len(d) for d in self.days)


@dataclass
class Replay:
    users: dict[str, dict[str, Any]]
    macro: dict[str, dict[str, Any]]
    nights: dict[str, list[dict[str, Any]]]
    protocol: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "users": self.users, "macro": self.macro,
                "nights": self.nights, "seconds": {k: round(v, 1) for k, v in self.seconds.items()}}


# ----------------------------------------------------------------- ordering
def _fill_dates(items: list[Item]) -> list[float]:
    """Timestamps of items (in import order); a missing Date takes the previous message's (else the next's)."""
    stamps: list[float | None] = []
    for item in items:
        try:
            stamps.append(item.date.timestamp() if item.date is not None else None)
        except (OverflowError, OSError, ValueError):
            stamps.append(None)
    known = [s for s in stamps if s is not None]
    last = known[0] if known else 0.0
    out = []
    for s in stamps:
        last = s if s is not None else last
        out.append(last)
    return out


def _by_date(items: list[Item]) -> tuple[list[Item], list[float]]:
    items = sorted(items, key=lambda it: it.pk)
    stamps = _fill_dates(items)
    order = sorted(range(len(items)), key=lambda i: (stamps[i], items[i].pk))
    return [items[i] for i in order], [stamps[i] for i in order]


def _interleaved(ham: list[Item], spam: list[Item], ham_t: list[float], spam_t: list[float]) -> tuple[bool, str]:
    if not ham or not spam:
        return True, f"only {'spam' if spam else 'ham'}"
    for name, items in (("ham", ham), ("spam", spam)):
        undated = sum(it.date is None for it in items)
        if undated > (1.0 - DATED_MIN) * len(items):
            return False, f"{100 * undated / len(items):.0f}% of the {name} has no Date header"
    lo_h, hi_h = np.percentile(ham_t, [5, 95])
    lo_s, hi_s = np.percentile(spam_t, [5, 95])
    shorter = min(hi_h - lo_h, hi_s - lo_s)
    inter = min(hi_h, hi_s) - max(lo_h, lo_s)
    # one class on (nearly) a single day: interleaved if that day is within the other's range
    share = (1.0 if inter >= 0 else 0.0) if shorter <= 0 else max(inter, 0.0) / shorter
    ranges = f"ham {_day(min(ham_t))}..{_day(max(ham_t))}, spam {_day(min(spam_t))}..{_day(max(spam_t))}"
    if share >= OVERLAP_MIN:
        return True, f"ham and spam dates overlap ({ranges})"
    return False, f"ham and spam dates do not overlap ({ranges})"


def _day(stamp: float) -> str:
    try:
        return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return "?"


def delivery_order(items: Sequence[Item]) -> tuple[list[Item], str, str]:
    """A user's labelled mail in delivery order, how it was ordered, and why.

    Each class is sorted by Date, then import order (primary key).  When the
    ham and spam date ranges overlap (at least half of the shorter class's
    5th-95th percentile range), the two are merged by date: ``"date"``.
    Otherwise (as in Enron-Spam, whose ham and spam come from different years,
    or when over 10 % of a class has no Date) dates say nothing about how they
    interleaved, and the classes are merged by relative position, the i-th of
    n messages at (i + 0.5) / n: ``"relative position"``.
    """
    ham, ham_t = _by_date([it for it in items if not it.is_spam])
    spam, spam_t = _by_date([it for it in items if it.is_spam])
    interleaved, why = _interleaved(ham, spam, ham_t, spam_t)
    if interleaved:
        merged = sorted(zip(ham_t + spam_t, [it.pk for it in ham + spam], ham + spam))
        return [it for _, _, it in merged], "date", why
    keyed = [((i + 0.5) / len(ham), 0, it) for i, it in enumerate(ham)]
    keyed += [((j + 0.5) / len(spam), 1, it) for j, it in enumerate(spam)]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [it for _, _, it in keyed], "relative position", why


def _split(stream: list[Item], bootstrap: int, days: int) -> tuple[list[Item], list[list[Item]]]:
    """The first ``bootstrap`` messages (at most half of them; plus the first two of a class they lack),
    then ``days`` days."""
    bootstrap = min(bootstrap, len(stream) // 2)
    boot, rest = stream[:bootstrap], stream[bootstrap:]
    for label in (False, True):
        if not any(it.is_spam == label for it in boot):
            extra = [it for it in rest if it.is_spam == label][:2]
            boot = boot + extra
            rest = [it for it in rest if it not in extra]
    n = len(rest)
    bounds = [round(d * n / days) for d in range(days + 1)]
    return boot, [rest[bounds[d]:bounds[d + 1]] for d in range(days)]


def plan_replay(engine: Engine, *, users: Sequence[str] | None = None, days: int = DEFAULT_DAYS,
                bootstrap: int = DEFAULT_BOOTSTRAP) -> dict[str, UserPlan]:
    """Every (wanted) user's replay schedule from the store's current labels."""
    if days < 1:
        raise UsageError("--days must be at least 1")
    if bootstrap < 2:
        raise UsageError("--bootstrap must be at least 2")
    with transaction(engine) as session:
        labels = queries.current_labels(session=session, users=users)
        groups = {u.name: u.group_name for u in queries.users_by_name(session=session).values()}
    per_user: dict[str, list[Item]] = {}
    for lab in labels:
        per_user.setdefault(lab.user, []).append(Item(lab.message_pk, lab.is_spam, lab.date))
    if not per_user:
        raise UsageError("no labelled mail yet; add some with `spamtl import USER PATH --label spam|ham`")
    unknown = [u for u in users or [] if u not in per_user]
    if unknown:
        raise UsageError(f"no labelled mail for user {unknown[0]!r}; see `spamtl users`")
    plans = {}
    for user in sorted(per_user):
        stream, how, why = delivery_order(per_user[user])
        boot, schedule = _split(stream, bootstrap, days)
        plans[user] = UserPlan(user, groups.get(user), how, why, boot, schedule)
    if not any(it.is_spam for p in plans.values() for it in p.bootstrap) or \
            all(it.is_spam for p in plans.values() for it in p.bootstrap):
        raise UsageError("the replay needs both spam and ham labels; import some of each")
    return plans


# ------------------------------------------------------------------ systems
def system_settings(settings: Settings, system: str) -> Settings:
    """The settings that make the multi-task model one of the single-task baselines (or itself)."""
    if system == "mtl":
        return settings
    if system == "pooled":
        return replace(settings, mus=(POOLED_MU,))
    if system == "per_user":
        return replace(settings, mus=(PER_USER_MU,), alphas=tuple(a / PER_USER_MU for a in settings.alphas))
    raise UsageError(f"unknown system {system!r}; use one of: {', '.join(SYSTEMS)}")


@dataclass
class _Record:
    user: str
    day: int
    is_spam: bool
    probability: float
    verdict: str
    corrected: bool


def _raws(engine: Engine, pks: Sequence[int]) -> dict[int, bytes]:
    with transaction(engine, checked=False) as session:
        return dict(queries.raw_messages(session=session, message_pks=list(pks)))


def _night(engine: Engine, settings: Settings, now: datetime, night: int) -> dict[str, Any]:
    from spamtl.services.training import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(engine, settings, now=now)
    return {"night": night, "version": result.version, "promoted": result.promoted, "reason": result.reason,
            "labels": result.messages}


def _user_day(source: Engine, engine: Engine, settings: Settings, reader: Any, logger: Any, plan: UserPlan,
              day: int, morning: datetime, tick: int, records: list[_Record], *, label_all: bool,
              progress: Progress = NO_PROGRESS) -> int:
    """Classify one user's mail of one day, correcting each wrong or unsure verdict at once; the next tick.
    ``progress`` counts each message as its verdict (and correction) is done."""
    from spamtl.services.classify import prepare
    from spamtl.services.feedback import record_feedback

    todays = plan.days[day]
    raws = _raws(source, [it.pk for it in todays])
    reader.refresh()
    model = reader.user_model(plan.user)
    pending: list[Any] = []
    correct: list[tuple[bytes, str]] = []
    for item in todays:
        now = morning + timedelta(seconds=tick)
        tick += 1
        raw = raws[item.pk]
        prepared = prepare(raw)
        verdict = reader.classify(model, prepared, "replay", keep_scored=False)
        truth = "spam" if item.is_spam else "ham"
        wrong = verdict.verdict != truth
        records.append(_Record(plan.user, day, item.is_spam, verdict.probability, verdict.verdict, wrong))
        pending.append((prepared, verdict))
        if wrong:
            logger.log(model, pending, now)  # the verdict is logged before it is corrected
            pending = []
            record_feedback(engine, settings, user=plan.user, label=truth, raw=raw,
                            now=now + timedelta(milliseconds=500))
            reader.refresh()
            model = reader.user_model(plan.user)
        elif label_all:
            correct.append((raw, truth))
        progress.advance(1)
    logger.log(model, pending, morning + timedelta(seconds=tick))
    if correct:
        _file_correct(engine, plan.user, correct, morning + timedelta(hours=12))
    return tick


def _run_system(source: Engine, plans: dict[str, UserPlan], settings: Settings, *, days: int, label_all: bool,
                start: datetime, workdir: Path, progress: Progress = NO_PROGRESS,
                system: str = "mtl") -> tuple[list[_Record], list[dict[str, Any]]]:
    from spamtl.services.classify import VerdictLogger, open_reader
    from spamtl.store.engine import make_engine, upgrade

    url = f"sqlite:///{workdir / 'replay.sqlite3'}"
    engine, settings = make_engine(url, create_dir=True), replace(settings, database_url=url)
    records: list[_Record] = []
    nights: list[dict[str, Any]] = []
    try:
        upgrade(engine)
        _bootstrap(source, engine, plans, start)
        nights.append(_night(engine, settings, start + timedelta(hours=23), 0))
        reader = open_reader(engine, settings)
        try:
            logger = VerdictLogger(reader.store, create_users=True)
            for day in range(days):
                # One stage per day (its mail, then its night's training): a line per day off a terminal.
                progress.stage("day", sum(len(p.days[day]) for p in plans.values()), unit="messages",
                               system=system, day=f"{day + 1}/{days}", users=len(plans))
                morning = start + timedelta(days=day + 1, hours=8)
                tick = 0
                for plan in plans.values():
                    tick = _user_day(source, engine, settings, reader, logger, plan, day, morning, tick, records,
                                     label_all=label_all, progress=progress)
                nights.append(_night(engine, settings, start + timedelta(days=day + 1, hours=23), day + 1))
        finally:
            reader.store.close()
    finally:
        engine.dispose()
    return records, nights


def _bootstrap(source: Engine, engine: Engine, plans: dict[str, UserPlan], start: datetime) -> None:
    """Every user and their bootstrap mail, labelled, in the replay's own store."""
    from spamtl.services.importing import store_messages

    with transaction(engine, checked=False) as session:
        for plan in plans.values():
            user_id = queries.get_or_create_user(session=session, name=plan.user, group=plan.group, now=start).id
            raws = _raws(source, [it.pk for it in plan.bootstrap])
            pks = store_messages(session=session, raws=[raws[it.pk] for it in plan.bootstrap], now=start)
            queries.add_labels(session=session, rows=[
                {"user_id": user_id, "message_id": pk, "label": "spam" if it.is_spam else "ham",
                 "source": "import", "created_at": start} for pk, it in zip(pks, plan.bootstrap)])


def _file_correct(engine: Engine, user: str, items: list[tuple[bytes, str]], now: datetime) -> None:
    """--label-all: the day's correctly classified mail is labelled too (as filing it into folders would)."""
    from spamtl.services.importing import store_messages

    with transaction(engine, checked=False) as session:
        user_id = queries.get_or_create_user(session=session, name=user, group=None, now=now).id
        pks = store_messages(session=session, raws=[raw for raw, _ in items], now=now)
        queries.add_labels(session=session, rows=[
            {"user_id": user_id, "message_id": pk, "label": label, "source": "feedback", "created_at": now}
            for pk, (_, label) in zip(pks, items)])


# ------------------------------------------------------------------ metrics
def replay_metrics(is_spam: Any, probability: Any, verdict: Any, corrected: Any) -> dict[str, Any]:
    """Online quality of a stretch of replayed mail.

    ``ham_fpr``: ham called spam / ham; ``spam_miss``: spam not called spam
    (ham or unsure) / spam; ``unsure_rate``: unsure / all;
    ``corrections_per_1000``: wrong or unsure verdicts the user corrected per
    1,000 messages; ``auc_error_pct``: 100 * (1 - ROC AUC) of the online scores.
    Undefined values are NaN.
    """
    y = np.asarray(is_spam, dtype=bool)
    p = np.asarray(probability, dtype=np.float64)
    v = np.asarray(verdict, dtype=object)
    c = np.asarray(corrected, dtype=bool)
    n, n_spam = len(y), int(y.sum())
    n_ham = n - n_spam
    nan = float("nan")
    auc = roc_auc(y, p) if n else nan
    return {
        "messages": n, "ham": n_ham, "spam": n_spam,
        "ham_fpr": float(((v == "spam") & ~y).sum() / n_ham) if n_ham else nan,
        "spam_miss": float(((v != "spam") & y).sum() / n_spam) if n_spam else nan,
        "unsure_rate": float((v == "unsure").sum() / n) if n else nan,
        "corrections": int(c.sum()),
        "corrections_per_1000": float(1000.0 * c.sum() / n) if n else nan,
        "auc_error_pct": 100.0 * (1.0 - auc) if not np.isnan(auc) else nan,
    }


def _thirds(days: int) -> tuple[set[int], set[int]]:
    parts = np.array_split(np.arange(days), 3)
    return set(parts[0].tolist()), set(parts[-1].tolist())


def _summary(records: list[_Record], days: int) -> dict[str, Any]:
    first, last = _thirds(days)

    def of(rows: list[_Record]) -> dict[str, Any]:
        return replay_metrics([r.is_spam for r in rows], [r.probability for r in rows],
                              [r.verdict for r in rows], [r.corrected for r in rows])

    out = of(records)
    out["first_third"] = of([r for r in records if r.day in first])
    out["last_third"] = of([r for r in records if r.day in last])
    return out


def _nanmean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _macro(entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {m: _nanmean([e[m] for e in entries]) for m in METRICS}
    out["messages"] = int(sum(e["messages"] for e in entries))
    out["corrections"] = int(sum(e["corrections"] for e in entries))
    for part in ("first_third", "last_third"):
        out[part] = {m: _nanmean([e[part][m] for e in entries]) for m in METRICS}
    return out


def replay(engine: Engine, settings: Settings, *, now: datetime, users: Sequence[str] | None = None,
           days: int = DEFAULT_DAYS, bootstrap: int = DEFAULT_BOOTSTRAP, label_all: bool = False,
           systems: Sequence[str] = SYSTEMS, progress: Progress = NO_PROGRESS) -> Replay:
    """Replay the store's labelled mail day by day for each system; the real store is only read.

    Every user is replayed (they all train together, as in real life);
    ``users`` restricts the report.  ``progress`` hears per system a stage bootstrap (copying the
    first labels, the first training), then one stage per day (its messages classified and corrected,
    then that night's training).

    BLAS runs on one thread throughout (:func:`~spamtl.parallel.one_blas_thread`): training's workers are
    the replay's parallelism, and BLAS threads beside them only spin on a small machine.  Set in this
    thread before any worker is forked (and after the solver's BLAS library is loaded), the limit holds
    in the workers too.
    """
    for system in systems:
        system_settings(settings, system)  # unknown names fail before any work
    # The solver's modules load SciPy's own BLAS library; threadpoolctl limits only loaded ones.
    import spamtl.model.estimator  # noqa: F401
    plans = plan_replay(engine, days=days, bootstrap=bootstrap)
    wanted = list(users) if users else list(plans)
    unknown = [u for u in wanted if u not in plans]
    if unknown:
        raise UsageError(f"no labelled mail for user {unknown[0]!r}; see `spamtl users`")
    start = (now - timedelta(days=days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    report: dict[str, dict[str, Any]] = {
        u: {"ordering": plans[u].ordering, "ordering_reason": plans[u].ordering_reason, "group": plans[u].group, "bootstrap": len(plans[u].bootstrap),
            "messages": plans[u].n_messages} for u in wanted}
    macro: dict[str, dict[str, Any]] = {}
    nights: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for system in systems:
        began = time.monotonic()
        progress.stage("bootstrap", system=system, users=len(plans),
                       labels=sum(len(p.bootstrap) for p in plans.values()))
        with tempfile.TemporaryDirectory(prefix="spamtl-replay-") as tmp, one_blas_thread():
            records, nights[system] = _run_system(engine, plans, system_settings(settings, system), days=days,
                                                  label_all=label_all, start=start, workdir=Path(tmp),
                                                  progress=progress, system=system)
        for user in wanted:
            report[user][system] = _summary([r for r in records if r.user == user], days)
        macro[system] = _macro([report[u][system] for u in wanted])
        refused = [n for n in nights[system] if not n["promoted"]]
        macro[system]["nights_promoted"] = len(nights[system]) - len(refused)
        macro[system]["nights_refused"] = len(refused)
        seconds[system] = time.monotonic() - began
    orderings = sorted({plans[u].ordering for u in wanted})
    protocol = {"days": days, "bootstrap": bootstrap, "feedback": "all" if label_all else "errors-only",
                "systems": list(systems), "orderings": {u: plans[u].ordering for u in wanted},
                "note": _ordering_note(orderings)}
    return Replay(users=report, macro=macro, nights=nights, protocol=protocol, seconds=seconds)


def _ordering_note(orderings: list[str]) -> str:
    if "relative position" in orderings:
        return ("where a user's ham and spam do not overlap in time (e.g. Enron-Spam: different years) or lack "
                "Date headers, each class was kept in Date order and the two merged by relative position")
    return "every user's mail was merged by Date (then import order)"
