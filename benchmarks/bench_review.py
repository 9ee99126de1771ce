"""Does labelling the review queue teach the model more than labelling random mail? (Enron-Spam)

Protocol, per seed and for each of the six Enron-Spam users:

1. ``--labelled`` messages per user (half ham, half spam) are imported as labels; ``spamtl train``.
2. A fixed test set (``--test`` per user) is held out; a pool (``--pool`` per user) of other
   mail is classified (so it is in the classification log, unlabelled).
3. The database is copied.  In one copy the user labels the top ``--k`` of ``spamtl review``
   (``spamtl feedback --id``, which refits the user's personal part after each label); in the
   other, ``--k`` messages drawn at random from the same pool, labelled the same way.
4. Macro 1-AUC % on the test sets, before and after, in both copies.

Everything runs through the services the CLI calls (import, train, classify, review, feedback).
Prints a table and writes benchmarks/results/review.json.

    .venv/bin/python benchmarks/bench_review.py --seeds 5 --corpora /path/to/corpora
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _enron import DEFAULT_CORPORA, USERS, read_raw  # noqa: E402

from spamtl.mail.sources import RawMail  # noqa: E402
from spamtl.metrics import roc_auc  # noqa: E402
from spamtl.services.classify import classify_messages, open_reader, prepare  # noqa: E402
from spamtl.services.feedback import record_feedback  # noqa: E402
from spamtl.services.importing import import_mail  # noqa: E402
from spamtl.services.review import review_queue  # noqa: E402
from spamtl.services.training import train  # noqa: E402
from spamtl.settings import Settings  # noqa: E402
from spamtl.store.engine import make_engine, upgrade  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "review.json"
NOW = datetime(2026, 11, 1, 12, 0, 0)


def _write_mbox(path: Path, raws: list[bytes]) -> str:
    with path.open("wb") as fh:
        for raw in raws:
            body = raw.replace(b"\nFrom ", b"\n>From ")
            fh.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n" + body.rstrip(b"\n") + b"\n\n")
    return str(path)


def macro_error(settings: Settings, tests: dict[str, tuple[list[bytes], np.ndarray]]) -> tuple[float, dict[str, float]]:
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        per_user = {}
        for user, (raws, y) in tests.items():
            model = reader.user_model(user)
            scores = [model.score_message(prepare(raw).raw).probability for raw in raws]
            per_user[user] = 100.0 * (1.0 - roc_auc(y, np.array(scores)))
    finally:
        reader.store.close()
    return float(np.mean(list(per_user.values()))), per_user


def run_seed(seed: int, data: tuple[list[bytes], np.ndarray, np.ndarray], args: argparse.Namespace,
             workdir: Path) -> dict[str, object]:
    raws, y, users = data
    rng = np.random.default_rng(seed)
    base = workdir / f"seed{seed}-base.sqlite3"
    url = f"sqlite:///{base}"
    engine = make_engine(url, create_dir=True)
    upgrade(engine)
    settings = Settings(database_url=url, seed=seed)
    tests: dict[str, tuple[list[bytes], np.ndarray]] = {}
    pools: dict[str, list[int]] = {}
    truth: dict[str, str] = {}
    for user in USERS:
        idx = np.flatnonzero(users == user)
        ham, spam = rng.permutation(idx[y[idx] == 0]), rng.permutation(idx[y[idx] == 1])
        half = args.labelled // 2
        for label, chosen in (("ham", ham[:half]), ("spam", spam[:half])):
            path = _write_mbox(workdir / f"{seed}-{user}-{label}.mbox", [raws[i] for i in chosen])
            import_mail(engine, user=user, paths=[path], label=label, now=NOW)
        rest = rng.permutation(np.concatenate([ham[half:], spam[half:]]))
        test, pool = rest[:args.test], rest[args.test:args.test + args.pool]
        tests[user] = ([raws[i] for i in test], y[test])
        pools[user] = [int(i) for i in pool]
        for i in pool:
            truth[prepare(raws[i]).sha256] = "spam" if y[i] else "ham"
    train(engine, settings, now=NOW)
    reader = open_reader(make_engine(settings.database_url), settings)
    try:
        for user in USERS:
            mails = [RawMail(f"pool-{i}", raws[i]) for i in pools[user]]
            for _ in classify_messages(reader, user=user, mails=mails, now=NOW + timedelta(hours=1)):
                pass
    finally:
        reader.store.close()
    engine.dispose()
    before, before_users = macro_error(settings, tests)
    out: dict[str, object] = {"seed": seed, "before": before, "before_users": before_users}
    for arm in ("review", "random"):
        path = workdir / f"seed{seed}-{arm}.sqlite3"
        shutil.copyfile(base, path)
        arm_settings = Settings(database_url=f"sqlite:///{path}", seed=seed)
        arm_engine = make_engine(arm_settings.database_url)
        arm_rng = np.random.default_rng(seed + 1000)
        started = time.perf_counter()
        for user in USERS:
            if arm == "review":
                picked = [item.sha256 for item in review_queue(make_engine(arm_settings.database_url), arm_settings, user=user, n=args.k)]
            else:
                shas = [prepare(raws[i]).sha256 for i in pools[user]]
                picked = [shas[j] for j in arm_rng.choice(len(shas), size=args.k, replace=False)]
            for sha in picked:
                record_feedback(arm_engine, arm_settings, user=user, label=truth[sha], ref=sha,
                                now=NOW + timedelta(hours=2))
        arm_engine.dispose()
        error, per_user = macro_error(arm_settings, tests)
        out[arm] = error
        out[f"{arm}_users"] = per_user
        out[f"{arm}_seconds"] = time.perf_counter() - started
        print(f"  seed {seed} {arm:<6}: macro 1-AUC {error:.3f} % ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labelled", type=int, default=20, help="initial labels per user (half spam)")
    parser.add_argument("--pool", type=int, default=300, help="unlabelled classified mail per user")
    parser.add_argument("--test", type=int, default=500, help="held-out test messages per user")
    parser.add_argument("--k", type=int, default=20, help="messages labelled per user in each arm")
    parser.add_argument("--corpora", type=Path, default=Path(os.environ.get("SPAMTL_CORPORA", DEFAULT_CORPORA)))
    args = parser.parse_args()
    data = read_raw(args.corpora)
    if not data[0]:
        parser.error(f"no Enron-Spam mail under {args.corpora}; pass --corpora DIR (the folder with enron-spam/)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="spamtl-bench-review-") as tmp:
        for seed in range(args.seeds):
            print(f"seed {seed}:", flush=True)
            runs.append(run_seed(seed, data, args, Path(tmp)))
    summary = {arm: {"mean": statistics.mean(float(r[arm]) for r in runs),  # type: ignore[arg-type]
                     "median": statistics.median(float(r[arm]) for r in runs)}  # type: ignore[arg-type]
               for arm in ("before", "review", "random")}
    wins = sum(float(r["review"]) < float(r["random"]) for r in runs)  # type: ignore[arg-type]
    print(f"\nMacro 1-AUC % on held-out Enron-Spam mail ({args.seeds} seeds, {args.labelled} initial labels per "
          f"user, +{args.k} labels per user from a pool of {args.pool}):\n")
    print(f"{'seed':>4}  {'before':>8}  {'+review':>8}  {'+random':>8}")
    for r in runs:
        print(f"{r['seed']:>4}  {float(r['before']):8.3f}  {float(r['review']):8.3f}  {float(r['random']):8.3f}")
    print(f"{'mean':>4}  {summary['before']['mean']:8.3f}  {summary['review']['mean']:8.3f}  "
          f"{summary['random']['mean']:8.3f}")
    print(f"\nreview queue better than random in {wins} of {len(runs)} seeds; "
          f"error reduction vs before: review {summary['before']['mean'] - summary['review']['mean']:.3f}, "
          f"random {summary['before']['mean'] - summary['random']['mean']:.3f} points")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"protocol": vars(args) | {"corpora": "enron-spam"}, "summary": summary,
                                   "review_wins": wins, "runs": runs}, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
