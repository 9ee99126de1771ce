"""Generate a synthetic but realistic large store: N users, M labelled messages.

Real messages from ../shared/corpora (Enron-Spam) are resampled and perturbed
per user, so the store has what a real office has:

- personal ham: each user draws ham from one Enron mailbox (their "job") and
  gets a personal vocabulary (colleagues' names, project codes) mixed into it;
- shared campaigns: each spam message goes, byte-identical, to a random
  handful of users (stored once, labelled by each of them);
- per-user gray mail: newsletters that a third of users call spam and the
  rest ham.

Every message gets a unique Message-ID and a user tag, so messages are
distinct except the shared campaigns.  Messages and labels are written with
the store's own functions (``store_messages``, ``add_labels``) in chunks.

    python benchmarks/gen_scale.py --db sqlite:////tmp/scale.sqlite3 --users 10000 --messages 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spamtl.mail.sources import RawMail, iter_mail  # noqa: E402
from spamtl.services.importing import store_messages  # noqa: E402
from spamtl.store import queries  # noqa: E402
from spamtl.store.engine import make_engine, upgrade  # noqa: E402

CORPORA = next((base / "shared" / "corpora" / "enron-spam" for base in (HERE.parent.parent, HERE.parent.parent.parent)
                if (base / "shared" / "corpora" / "enron-spam").exists()), HERE.parent.parent / "shared")
if os.environ.get("SPAMTL_CORPORA"):
    CORPORA = Path(os.environ["SPAMTL_CORPORA"]) / "enron-spam"
START = datetime(2026, 1, 1)
SYLLABLES = "ka lo mi ne ru ta vo si pe da zu fi ho ge ba".split()


def _pool(folder: Path, limit: int) -> list[bytes]:
    out = []
    for item in iter_mail([str(folder)]):
        if isinstance(item, RawMail):
            out.append(item.raw)
            if len(out) >= limit:
                break
    return out


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _perturb(raw: bytes, tag: str, words: list[str], rng: random.Random) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    if not sep:
        head, body = raw, b""
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"message-id:")]
    extra = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
    lines.append(f"Message-ID: <{tag}.{rng.getrandbits(48):x}@scale.example>".encode())
    return b"\n".join(lines) + b"\n\n" + body + f"\n{extra}\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=1000000, help="labels in total (about)")
    parser.add_argument("--pool", type=int, default=3000, help="real messages read per Enron folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    engine = make_engine(args.db, create_dir=True)
    upgrade(engine)

    started = time.perf_counter()
    hams = [_pool(CORPORA / f"enron{i}" / "ham.mbox", args.pool) for i in range(1, 7)]
    spams = [raw for i in range(1, 7) for raw in _pool(CORPORA / f"enron{i}" / "spam.mbox", args.pool // 2)]
    gray = [raw for pool in hams for raw in pool[:20]]  # "newsletters": shared mail users disagree on
    print(f"read {sum(map(len, hams))} ham, {len(spams)} spam in {time.perf_counter() - started:.1f} s", flush=True)

    per_user = max(4, args.messages // args.users)
    campaign_size = 8  # a spam message reaches this many users, byte-identical
    campaigns: list[tuple[bytes, list[int]]] = []
    total = 0
    for u in range(args.users):
        user = f"u{u:05d}"
        group = f"dept{u % 50:02d}"
        user_rng = random.Random(f"{args.seed}-{u}")
        words = [_word(user_rng) for _ in range(40)]
        ham_pool = hams[u % 6]
        n_spam = per_user // 3
        n_gray = max(1, per_user // 10)
        n_ham = per_user - n_spam - n_gray
        ham = [_perturb(user_rng.choice(ham_pool), user, words, user_rng) for _ in range(n_ham)]
        gray_label = "spam" if u % 3 == 0 else "ham"
        grays = [_perturb(user_rng.choice(gray), "news", ["digest", "weekly"], user_rng) for _ in range(n_gray)]
        spam_new = max(1, n_spam // campaign_size)
        for _ in range(spam_new):
            campaigns.append((_perturb(rng.choice(spams), "campaign", [_word(rng) for _ in range(5)], rng), []))
        mine = [c for c in rng.sample(campaigns[-2000:], min(n_spam, len(campaigns[-2000:])))]
        day = START + timedelta(days=rng.randint(0, 364))
        with Session(engine) as session, session.begin():
            uid = queries.get_or_create_user(session=session, name=user, group=group, now=day).id
            rows = []
            for raws, label in ((ham, "ham"), (grays, gray_label), ([c[0] for c in mine], "spam")):
                pks = store_messages(session=session, raws=raws, now=day)
                rows += [{"user_id": uid, "message_id": pk, "label": label, "source": "import",
                          "created_at": day + timedelta(seconds=i)} for i, pk in enumerate(pks)]
            queries.add_labels(session=session, rows=rows)
            total += len(rows)
        if (u + 1) % max(1, args.users // 20) == 0:
            rate = total / (time.perf_counter() - started)
            print(f"{u + 1} users, {total} labels ({rate:,.0f} labels/s)", flush=True)
    print(f"done: {args.users} users, {total} labels in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
