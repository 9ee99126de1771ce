"""Replay a season of mail end to end: spamtl (through the CLI) against bogofilter, same days, same protocol.

Users: the six Enron-Spam users (subject + body) and the SpamAssassin corpus
as a seventh user with full headers (ham = easy_ham + easy_ham_2 + hard_ham,
spam = spam + spam_2).  Each user is subsampled to ``--per-user`` messages
(fixed seed, class shares kept, mbox order kept) to bound the runtime.

spamtl: ``spamtl init``, ``spamtl import USER MBOX --label L`` per file into a
fresh store, then ``spamtl evaluate --replay --format json``.

bogofilter (Debian package ``bogofilter``): one wordlist per user
(``-d DIR``), trained with ``-s``/``-n`` on the same bootstrap messages, then
the same messages on the same days in the same order (the schedule is read
from the same store with :func:`spamtl.services.replay.plan_replay`, and the
message bytes are the store's), each classified with ``-t`` (verdict and
spamicity) at bogofilter's default cutoffs ``-o 0.99,0.45``, and trained on
error (every wrong or unsure verdict), like the spamtl user's corrections.

    .venv/bin/python benchmarks/bench_replay.py            # ~15-25 min
    .venv/bin/python benchmarks/bench_replay.py --per-user 300 --days 8   # a quick look

``--store URL`` replays an existing store instead (all its users and messages; nothing is imported), e.g.
the two-user Enron store of issue 30; ``--no-bogofilter`` times spamtl alone (wall time, CPU and the
replay process's peak RSS are in the JSON).

Prints a table and writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from spamtl.mail.sources import RawMail, iter_mail
from spamtl.services.replay import METRICS, plan_replay, replay_metrics

HERE = Path(__file__).resolve().parent
DEFAULT_CORPORA = Path(os.environ.get("SPAMTL_CORPORA", HERE.parent.parent / "shared" / "corpora"))
ENRON = ("enron1", "enron2", "enron3", "enron4", "enron5", "enron6")
SA_HAM = ("easy_ham", "easy_ham_2", "hard_ham")
SA_SPAM = ("spam", "spam_2")
BOGO_CUTOFFS = "0.99,0.45"  # bogofilter's defaults (spam_cutoff, ham_cutoff in /etc/bogofilter.cf)


def _read(paths: list[Path]) -> list[bytes]:
    return [m.raw for m in iter_mail([str(p) for p in paths]) if isinstance(m, RawMail)]


def _write_mbox(path: Path, raws: list[bytes]) -> None:
    with path.open("wb") as fh:
        for raw in raws:
            fh.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n" + raw.rstrip(b"\n") + b"\n\n")


def prepare_corpora(corpora: Path, out: Path, per_user: int, seed: int) -> dict[str, dict[str, Path]]:
    """Subsampled ham/spam mboxes per user (class shares kept, original order kept)."""
    sources = {u: {"ham": [corpora / "enron-spam" / u / "ham.mbox"], "spam": [corpora / "enron-spam" / u / "spam.mbox"]}
               for u in ENRON}
    sources["spamassassin"] = {"ham": [corpora / "spamassassin" / f"{n}.mbox" for n in SA_HAM],
                               "spam": [corpora / "spamassassin" / f"{n}.mbox" for n in SA_SPAM]}
    missing = [p for classes in sources.values() for paths in classes.values() for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"corpus file not found: {missing[0]} (set --corpora or SPAMTL_CORPORA)")
    rng = random.Random(seed)
    files: dict[str, dict[str, Path]] = {}
    for user, classes in sources.items():
        raws = {label: _read(paths) for label, paths in classes.items()}
        total = sum(len(r) for r in raws.values())
        files[user] = {}
        for label, items in raws.items():
            k = min(len(items), round(per_user * len(items) / total)) if per_user else len(items)
            keep = sorted(rng.sample(range(len(items)), k))
            path = out / f"{user}-{label}.mbox"
            _write_mbox(path, [items[i] for i in keep])
            files[user][label] = path
    return files


def _spamtl(*args: str, db: str) -> str:
    done = subprocess.run([sys.executable, "-m", "spamtl", *args, "--db", db], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"spamtl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the machine may be shared: wall time is noisy)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_spamtl(db: str, days: int, bootstrap: int, systems: list[str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    args = ["evaluate", "--replay", "--format", "json", "--days", str(days), "--bootstrap", str(bootstrap)]
    for system in systems:
        args += ["--system", system]
    result = json.loads(_spamtl(*args, db=db))
    return result, time.monotonic() - started


def _bogo(wordlist: Path, args: list[str], raw: bytes) -> str:
    done = subprocess.run(["bogofilter", "-d", str(wordlist), *args], input=raw, capture_output=True, check=False)
    if done.returncode not in (0, 1, 2):
        raise SystemExit(f"bogofilter {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def run_bogofilter(db: str, days: int, bootstrap: int, workdir: Path) -> tuple[dict[str, Any], float]:
    """The same schedule as spamtl's replay, classified and trained on error by bogofilter."""
    from sqlalchemy.orm import Session

    from spamtl.services.classify import prepare
    from spamtl.store import queries
    from spamtl.store.engine import make_engine

    started = time.monotonic()
    engine = make_engine(db)
    plans = plan_replay(engine, days=days, bootstrap=bootstrap)
    report: dict[str, Any] = {}
    for user, plan in plans.items():
        wordlist = workdir / f"bogo-{user}"
        wordlist.mkdir()
        pks = [it.pk for it in plan.bootstrap] + [it.pk for day in plan.days for it in day]
        with Session(engine) as session:
            raws = {pk: prepare(raw).raw for pk, raw in queries.raw_messages(session=session, message_pks=pks)}
        for item in plan.bootstrap:
            _bogo(wordlist, ["-s" if item.is_spam else "-n"], raws[item.pk])
        rows = []
        for day, todays in enumerate(plan.days):
            for item in todays:
                tag, spamicity = _bogo(wordlist, ["-t", "-o", BOGO_CUTOFFS], raws[item.pk]).split()[:2]
                verdict = {"S": "spam", "H": "ham"}.get(tag, "unsure")
                wrong = verdict != ("spam" if item.is_spam else "ham")
                if wrong:  # train on error, as the spamtl user corrects
                    _bogo(wordlist, ["-s" if item.is_spam else "-n"], raws[item.pk])
                rows.append((day, item.is_spam, float(spamicity), verdict, wrong))
        report[user] = _summary(rows, days)
    engine.dispose()
    return report, time.monotonic() - started


def _summary(rows: list[tuple[int, bool, float, str, bool]], days: int) -> dict[str, Any]:
    parts = np.array_split(np.arange(days), 3)
    first, last = set(parts[0].tolist()), set(parts[-1].tolist())

    def of(selected: list[tuple[int, bool, float, str, bool]]) -> dict[str, Any]:
        return replay_metrics([r[1] for r in selected], [r[2] for r in selected], [r[3] for r in selected],
                              [r[4] for r in selected])

    out = of(rows)
    out["first_third"] = of([r for r in rows if r[0] in first])
    out["last_third"] = of([r for r in rows if r[0] in last])
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _macro(entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {m: _mean([e[m] for e in entries]) for m in METRICS}
    for part in ("first_third", "last_third"):
        out[part] = {m: _mean([e[part][m] for e in entries]) for m in METRICS}
    return out


def _f(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{scale * value:.{digits}f}"


def _row(user: str, system: str, m: dict[str, Any], extra: str = "") -> str:
    trend = f"{_f(m['first_third']['corrections_per_1000'], digits=1)} -> {_f(m['last_third']['corrections_per_1000'], digits=1)}"
    return (f"{user:<13} {system:<13} {_f(m['ham_fpr'], 100):>8} {_f(m['spam_miss'], 100):>7} "
            f"{_f(m['unsure_rate'], 100):>8} {_f(m['corrections_per_1000'], digits=1):>8} "
            f"{_f(m['auc_error_pct'], digits=3):>7}  {trend:>16}  {extra}")


def _build_store(args: argparse.Namespace, work: Path) -> tuple[str, float]:
    """A fresh store of the subsampled corpora; its URL and the import's wall seconds."""
    files = prepare_corpora(args.corpora, work, args.per_user, args.seed)
    db = f"sqlite:///{work / 'store.sqlite3'}"
    _spamtl("init", db=db)
    started = time.monotonic()
    for user, classes in files.items():
        for label, path in classes.items():
            _spamtl("import", user, str(path), "--label", label, db=db)
    import_seconds = time.monotonic() - started
    print(f"imported {len(files)} users in {import_seconds:.0f} s", file=sys.stderr)
    return db, import_seconds


def _write_spamtl_only(args: argparse.Namespace, commit: str, spamtl: dict[str, Any], systems: list[str],
                       seconds: float, cpu: float, rss_mb: float) -> None:
    """--no-bogofilter: spamtl's table, wall time, CPU and peak RSS."""
    for user, entry in [*spamtl["users"].items(), ("macro", spamtl["macro"])]:
        for system in systems:
            print(_row(user, f"spamtl {system}", entry[system], entry.get("ordering", "")))
    print(f"spamtl replay: {seconds:.0f} s wall ({len(systems)} system(s); {cpu:.0f} CPU s; "
          f"peak RSS {rss_mb:.0f} MB); per system: {spamtl['seconds']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "commit": commit, "store": args.store, "per_user": None if args.store else args.per_user,
        "days": args.days, "bootstrap": args.bootstrap, "spamtl": spamtl,
        "seconds": {"spamtl": seconds}, "cpu_seconds": {"spamtl": cpu}, "peak_rss_mb": {"spamtl": rss_mb},
        "load_average": os.getloadavg()}, indent=2, default=str))
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--per-user", type=int, default=1000, help="messages per user after subsampling (0: all)")
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system", action="append", default=None,
                        help="spamtl systems to replay (mtl, pooled, per_user; default mtl)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "replay.json")
    parser.add_argument("--store", default=None, help="replay this store (a database URL) instead of building one")
    parser.add_argument("--no-bogofilter", action="store_true", help="time spamtl alone")
    args = parser.parse_args()
    # SIGTERM as an exception: subprocess.run then kills the `spamtl evaluate` child instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    systems = args.system or ["mtl"]
    if not args.no_bogofilter and shutil.which("bogofilter") is None:
        raise SystemExit("bogofilter is not installed (Debian: apt-get install -y bogofilter)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE, check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        work = Path(tmp)
        db, import_seconds = args.store, 0.0
        if db is None:
            db, import_seconds = _build_store(args, work)
        print(f"replaying spamtl ({', '.join(systems)})...", file=sys.stderr)
        cpu = _cpu()
        spamtl, spamtl_seconds = run_spamtl(db, args.days, args.bootstrap, systems)
        spamtl_cpu, cpu = _cpu() - cpu, _cpu()
        spamtl_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child's peak
        if args.no_bogofilter:
            _write_spamtl_only(args, commit, spamtl, systems, spamtl_seconds, spamtl_cpu, spamtl_rss_mb)
            return
        print(f"spamtl: {spamtl_seconds:.0f} s; replaying bogofilter...", file=sys.stderr)
        bogo_users, bogo_seconds = run_bogofilter(db, args.days, args.bootstrap, work)
        bogo_cpu = _cpu() - cpu
    bogo_macro = _macro(list(bogo_users.values()))

    print(f"Replay: {args.days} days after the first {args.bootstrap} labels per user, errors-only feedback, "
          f"{args.per_user or 'all'} messages per user (seed {args.seed}); commit {commit}")
    print(f"{'user':<13} {'system':<13} {'hamFPR%':>8} {'miss%':>7} {'unsure%':>8} {'corr/1k':>8} {'1-AUC%':>7}  "
          f"{'corr/1k 1st->3rd':>16}  ordering")
    for user in spamtl["users"]:
        entry = spamtl["users"][user]
        for system in systems:
            print(_row(user, f"spamtl {system}", entry[system], entry["ordering"]))
        print(_row(user, "bogofilter", bogo_users[user]))
    for system in systems:
        m = spamtl["macro"][system]
        print(_row("macro", f"spamtl {system}", m, f"nights promoted {m['nights_promoted']}, "
                                                   f"refused {m['nights_refused']}"))
    print(_row("macro", "bogofilter", bogo_macro))
    ratios = {}
    for system in systems:
        m = spamtl["macro"][system]
        ratios[system] = {
            "corrections_per_1000": m["corrections_per_1000"] / bogo_macro["corrections_per_1000"],
            "ham_fpr": (m["ham_fpr"] / bogo_macro["ham_fpr"]) if bogo_macro["ham_fpr"] else float("nan"),
        }
        print(f"spamtl {system} / bogofilter: corrections {ratios[system]['corrections_per_1000']:.2f}x "
              f"(target <= 0.5x), ham FPR {_f(m['ham_fpr'], 100, 3)}% vs {_f(bogo_macro['ham_fpr'], 100, 3)}% "
              f"(target: at or below)")
    refused = [n for n in spamtl["nights"].get("mtl", []) if not n["promoted"]]
    for night in refused:
        print(f"  mtl night {night['night']} refused: {night['reason']}")
    print(f"wall time: import {import_seconds:.0f} s, spamtl replay {spamtl_seconds:.0f} s "
          f"({len(systems)} system(s); {spamtl_cpu:.0f} CPU s), bogofilter replay {bogo_seconds:.0f} s "
          f"({bogo_cpu:.0f} CPU s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "commit": commit, "per_user": args.per_user, "seed": args.seed, "days": args.days,
        "bootstrap": args.bootstrap, "spamtl": spamtl, "bogofilter": {"users": bogo_users, "macro": bogo_macro},
        "ratios": ratios, "seconds": {"import": import_seconds, "spamtl": spamtl_seconds,
                                      "bogofilter": bogo_seconds},
        "cpu_seconds": {"spamtl": spamtl_cpu, "bogofilter": bogo_cpu}}, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
