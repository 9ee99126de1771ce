"""A year of a 50-user office: does the store level off under the default retention?

Simulates days by passing ``now`` to the services (no waiting, no CLI):

- day 0: each user imports 20 spam and 20 ham (small synthetic messages);
- every day: each user receives 200 messages (150 campaign messages everyone
  gets, 50 personal) and every one is logged as a verdict, as `spamtl
  classify` would (the scoring itself is skipped: it stores nothing, and the
  store's growth is what is measured); 5 users correct one of the day's
  verdicts (a feedback label);
- nightly `spamtl prune` (the service) with the default Settings; weekly
  (not nightly, to keep the run to minutes) `train` with a one-point grid,
  which applies retention again and adds a model version.

    python benchmarks/bench_retention.py [--days 365] [--users 50] [--per-day 200] [--db URL]

Prints a table every 14 days (day, database bytes, messages, bodies kept,
verdicts, model versions and those with weights) and writes
benchmarks/results/retention.json.  SQLite file size does not shrink after
deletes (freed pages are reused), so a plateau of the file size is the claim;
``used bytes`` (pages minus free pages) is printed too.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spamtl.services.importing import store_messages  # noqa: E402
from spamtl.services.retention import prune  # noqa: E402
from spamtl.services.training import train  # noqa: E402
from spamtl.settings import Settings  # noqa: E402
from spamtl.store import queries  # noqa: E402
from spamtl.store.engine import make_engine, upgrade  # noqa: E402
from spamtl.store.schema import Classification  # noqa: E402

START = datetime(2026, 1, 1, 8, 0, 0)
SPAM_WORDS = "win prize casino offer cheap pills loan credit free bonus click now limited viagra".split()
HAM_WORDS = "meeting agenda budget report draft review schedule lunch project client invoice team".split()
NEWS_WORDS = "weekly digest newsletter update garden travel recipes tips events community".split()


def _mail(rng: random.Random, words: list[str], tag: str, day: int, i: int) -> bytes:
    body = " ".join(rng.choice(words) for _ in range(30))
    return (f"From: {tag}@example.org\nTo: staff@office.example\nSubject: {tag} {day} {i} "
            f"{rng.choice(words)}\nMessage-ID: <{tag}-{day}-{i}-{rng.getrandbits(40):x}@example.org>\n"
            f"Date: Thu, 01 Jan 2026 08:00:00 +0000\n\n{body}\n").encode()


def _db_bytes(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(bytes on disk, bytes in use) of the database."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            page = conn.execute(text("PRAGMA page_size")).scalar()
            pages = conn.execute(text("PRAGMA page_count")).scalar()
            free = conn.execute(text("PRAGMA freelist_count")).scalar()
            path = Path(engine.url.database)
            wal = path.with_name(path.name + "-wal")
            on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
            return on_disk, page * (pages - free)
        size = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())
        return size, size


def _counts(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    queries_ = {"messages": "SELECT count(*) FROM messages",
                "bodies": "SELECT count(*) FROM messages WHERE raw IS NOT NULL",
                "classifications": "SELECT count(*) FROM classifications",
                "labels": "SELECT count(*) FROM labels",
                "versions": "SELECT count(*) FROM model_versions",
                "versions_with_weights": "SELECT count(DISTINCT model_version_id) FROM model_parts"}
    with engine.connect() as conn:
        return {k: int(conn.execute(text(q)).scalar()) for k, q in queries_.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-day", type=int, default=200, help="messages per user per day")
    parser.add_argument("--shared", type=float, default=0.75, help="share of each day's mail everyone gets")
    parser.add_argument("--db", help="database URL (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--every", type=int, default=14, help="print a row every N days")
    args = parser.parse_args()

    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='spamtl-retention-')) / 'year.sqlite3'}"
    engine = make_engine(url, create_dir=True)
    upgrade(engine)
    settings = Settings(database_url=url, mus=(3.0,), max_iter=200)
    rng = random.Random(0)
    users = [f"user{i:02d}" for i in range(args.users)]
    n_shared = int(args.per_day * args.shared)
    n_personal = args.per_day - n_shared

    with Session(engine) as session, session.begin():
        for u in users:
            uid = queries.get_or_create_user(session=session, name=u, group=None, now=START).id
            spam = [_mail(rng, SPAM_WORDS, "promo", 0, i) for i in range(20)]
            ham = [_mail(rng, HAM_WORDS + [u], u, 0, i) for i in range(20)]
            pks = store_messages(session=session, raws=spam + ham, now=START)
            queries.add_labels(session=session, rows=[
                {"user_id": uid, "message_id": pk, "label": "spam" if i < 20 else "ham", "source": "import",
                 "created_at": START} for i, pk in enumerate(pks)])
    with Session(engine) as session:
        user_ids = {u.name: u.id for u in queries.users_by_name(session=session).values()}

    rows: list[dict[str, object]] = []
    started = time.perf_counter()
    header = (f"{'day':>4} {'DB bytes':>12} {'used bytes':>12} {'messages':>9} {'bodies':>8} {'verdicts':>9} "
              f"{'labels':>7} {'versions':>8} {'w/ weights':>10} {'elapsed s':>9}")
    print(header)
    for day in range(1, args.days + 1):
        now = START + timedelta(days=day)
        shared = [_mail(rng, SPAM_WORDS if i % 3 else NEWS_WORDS, "campaign", day, i) for i in range(n_shared)]
        with Session(engine) as session, session.begin():
            shared_pks = store_messages(session=session, raws=shared, now=now)
            verdicts = []
            todays: dict[str, list[tuple[int, bool]]] = {}
            for u in users:
                personal = [_mail(rng, HAM_WORDS + [u], u, day, i) for i in range(n_personal)]
                pks = store_messages(session=session, raws=personal, now=now)
                todays[u] = [(pk, True) for pk in shared_pks] + [(pk, False) for pk in pks]
                verdicts += [{"user_id": user_ids[u], "message_id": pk, "probability": 0.5, "verdict": "unsure",
                              "model_version_id": None, "created_at": now} for pk, _ in todays[u]]
            session.execute(insert(Classification), verdicts)
            corrections = []
            for u in rng.sample(users, min(5, len(users))):
                pk, is_campaign = rng.choice(todays[u])
                corrections.append({"user_id": user_ids[u], "message_id": pk, "label": "spam" if is_campaign else "ham",
                                    "source": "feedback", "created_at": now})
            queries.add_labels(session=session, rows=corrections)
        if day % 7 == 0:
            train(engine, settings, now=now + timedelta(hours=19))  # 03:00 the next night; applies retention
        else:
            prune(engine, settings, now=now + timedelta(hours=19))
        if day % args.every == 0 or day == args.days:
            on_disk, used = _db_bytes(engine)
            row = {"day": day, "db_bytes": on_disk, "used_bytes": used, **_counts(engine),
                   "elapsed_s": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(f"{day:>4} {on_disk:>12,} {used:>12,} {row['messages']:>9,} {row['bodies']:>8,} "
                  f"{row['classifications']:>9,} {row['labels']:>7,} {row['versions']:>8} "
                  f"{row['versions_with_weights']:>10} {row['elapsed_s']:>9}", flush=True)

    result = {"benchmark": "retention", "users": args.users, "per_day": args.per_day, "shared": args.shared,
              "days": args.days, "backend": engine.dialect.name, "train": "weekly (one-point grid), prune nightly",
              "settings": {"raw_retention_days": settings.raw_retention_days,
                           "classification_retention_days": settings.classification_retention_days,
                           "keep_promoted_versions": settings.keep_promoted_versions},
              "rows": rows}
    out = HERE / "results" / "retention.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
