"""Scale: import rate, nightly train (wall time, peak memory), classify latency with few vs many users,
feedback refit time and database size, on a store made by gen_scale.py.

    python benchmarks/gen_scale.py --db sqlite:////tmp/scale.sqlite3 --users 10000 --messages 1000000
    python benchmarks/gen_scale.py --db sqlite:////tmp/six.sqlite3 --users 6 --messages 6000
    python benchmarks/bench_scale.py --db sqlite:////tmp/scale.sqlite3 --small-db sqlite:////tmp/six.sqlite3

Targets (issue 11): nightly train on 1M messages / 10k users under 15 min and
8 GB; classify latency flat in the number of users.  Writes
benchmarks/results/scale_<users>users.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spamtl.settings import Settings  # noqa: E402
from spamtl.store.engine import make_engine  # noqa: E402

NOW = datetime(2027, 1, 1)


def _spamtl(*args: str) -> tuple[float, int, str]:
    """Run ``spamtl ARGS`` in a fresh process: (seconds, exit code, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spamtl", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
    return time.perf_counter() - start, proc.returncode, proc.stdout


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _pss_mb(pids: list[int]) -> float:
    """Proportional set size of these processes together (pages shared after fork counted once)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def _spamtl_peak(*args: str) -> tuple[float, int, str, float]:
    """Like :func:`_spamtl`, also the peak of the whole process tree's memory (PSS, sampled 4 times a second):
    training forks worker processes, whose memory counts toward the 8 GB target."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "spamtl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], _pss_mb(_tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        print(err, file=sys.stderr)
    return time.perf_counter() - start, proc.returncode, out, peak[0]


def _size(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            page = conn.execute(text("PRAGMA page_size")).scalar()
            return int(page * conn.execute(text("PRAGMA page_count")).scalar())
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar())
                for t in ("users", "messages", "labels")}


def _first_user(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT name FROM users ORDER BY id LIMIT 1")).scalar())


def _timed(cmd: list[str]) -> float:
    """Wall time of one run of ``cmd`` (the ``python -c pass`` baseline for classify latency)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return time.perf_counter() - start


def _latency(url: str, user: str, mail: Path, runs: int) -> float:
    return statistics.median(_spamtl("classify", user, str(mail), "--db", url)[0] for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="the big store (from gen_scale.py)")
    parser.add_argument("--small-db", required=True, help="a 6-user store (from gen_scale.py --users 6)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--nights", type=int, default=2, choices=(1, 2),
                        help="nightly trainings to time (the second finds the features cached)")
    args = parser.parse_args()
    # The commit measured, taken now: every `spamtl train` below runs the working tree as it is when it starts.
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or None
    result: dict[str, object] = {"benchmark": "scale", "store": _counts(args.db), "small_store": _counts(args.small_db)}
    print(json.dumps(result["store"]))

    # Import rate: the import service on 2,000 new messages for a new user, median of 3 imports (each of
    # mail the store has never seen: a repeated import would take the duplicate path).
    from spamtl.services.importing import import_mail
    from tests.conftest import make_mail, write_mbox

    tmp = Path(tempfile.mkdtemp(prefix="spamtl-scale-"))
    rates = []
    for k in range(3):
        box = write_mbox(tmp / f"new{k}.mbox", [make_mail(f"import {i}", f"fresh body {k} {i} for the rate",
                                                          message_id=f"r{k}-{i}@x") for i in range(2000)])
        start = time.perf_counter()
        import_mail(make_engine(args.db), user=f"import-rate-{k}", paths=[str(box)], label="ham", now=NOW)
        rates.append(2000 / (time.perf_counter() - start))
    result["import_messages_per_s"] = round(statistics.median(rates))
    result["import_messages_per_s_runs"] = [round(r) for r in rates]
    print(f"import: {result['import_messages_per_s']} messages/s (median of {len(rates)}: "
          f"{result['import_messages_per_s_runs']})")

    # Nightly train twice (features computed, then cached); peak RSS of the largest process.
    for night in ("first", "second")[:args.nights]:
        load_before = os.getloadavg()[0]
        seconds, code, out, tree_mb = _spamtl_peak("train", "--db", args.db, "--format", "json")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads(out) if code == 0 else {}
        metrics = summary.get("metrics", {})
        result[f"train_{night}"] = {"seconds": round(seconds, 1), "exit": code, "peak_rss_mb_so_far": round(peak_mb),
                                    "peak_tree_pss_mb": round(tree_mb),
                                    "messages": summary.get("messages"), "users": summary.get("users"),
                                    "promoted": summary.get("promoted"), "mu": metrics.get("mu"),
                                    "search_users": metrics.get("search_users"),
                                    "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        print(f"train ({night} night): {result[f'train_{night}']}", flush=True)

    # Classify latency: one message, a fresh process, a known user, few vs many users.
    mail = tmp / "one.eml"
    mail.write_bytes(make_mail("quarterly numbers", "please review the attached budget draft", message_id="lat@x"))
    _spamtl("train", "--db", args.small_db)
    baseline = statistics.median(_timed([sys.executable, "-c", "pass"]) for _ in range(args.runs))
    small = _latency(args.small_db, _first_user(args.small_db), mail, args.runs)
    big = _latency(args.db, _first_user(args.db), mail, args.runs)
    result["classify_latency_s"] = {"small": round(small, 3), "big": round(big, 3),
                                    "python_c_pass": round(baseline, 3), "big_over_small": round(big / small, 2)}
    print(f"classify latency (median of {args.runs}): {result['classify_latency_s']}")

    # Feedback: refit one user's personal weights (the service call).
    from spamtl.services.feedback import record_feedback

    refits = []
    for k in range(3):  # a new message each time: a repeated one would be the same refit
        raw = make_mail(f"quarterly numbers {k}", f"please review budget draft {k} before friday", message_id=f"fb{k}@x")
        start = time.perf_counter()
        record_feedback(make_engine(args.db), Settings(database_url=args.db), user=_first_user(args.db), label="spam",
                        raw=raw, now=NOW)
        refits.append(time.perf_counter() - start)
    result["feedback_refit_s"] = round(statistics.median(refits), 2)
    result["feedback_refit_s_runs"] = [round(r, 2) for r in refits]
    result["db_bytes"] = _size(args.db)
    print(f"feedback refit: {result['feedback_refit_s']} s (median of 3); database: {result['db_bytes']:,} bytes")
    users = result["store"]["users"]  # type: ignore[index]
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    result["commit"] = commit
    for k in range(len(rates)):  # the import-rate users go again, so a second run measures the same store
        _spamtl("users", "delete", f"import-rate-{k}", "--yes", "--db", args.db)
    (HERE / "results" / f"scale_{users}users.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
