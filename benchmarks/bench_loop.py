"""The daily loop on Enron-Spam: train, single-message classify, batch classify, feedback, many users.

Imports the six Enron-Spam users into a fresh SQLite store, then measures, as
a user or a mail pipeline would run them:

- `spamtl train` end to end (first night: features computed and cached;
  second night: cached features, warm start);
- single-message `spamtl classify` in a fresh process (median of runs), with
  the same-run baselines `python -c pass` and `python -c "import sklearn"`,
  and the full Typer command for comparison;
- batch classify of an mbox (messages per second);
- `spamtl feedback` for a user with 5,000+ labels (the service call, and the
  whole process);
- single-message classify latency with 6 users and with 1,000 users.

    python benchmarks/bench_loop.py [--runs 15]

Writes benchmarks/results/loop.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
USERS = ("enron1", "enron2", "enron3", "enron4", "enron5", "enron6")


def sh(*args: str, stdin: bytes | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(list(args), input=stdin, capture_output=True, check=True).stdout.decode()
    return time.perf_counter() - start, out


def spamtl(db: str, *args: str, stdin: bytes | None = None) -> tuple[float, str]:
    return sh(sys.executable, "-m", "spamtl", *args, "--db", db, stdin=stdin)


def median_time(runs: int, *args: str, stdin: bytes | None = None) -> dict[str, float]:
    times = [sh(*args, stdin=stdin)[0] for _ in range(runs)]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def add_synthetic_users(db_file: Path, count: int) -> None:
    """Copy enron1's personal part under ``count`` new user names into the active version."""
    con = sqlite3.connect(db_file)
    version, = con.execute("SELECT id FROM model_versions WHERE status = 'active'").fetchone()
    blob, = con.execute("SELECT data FROM model_parts WHERE model_version_id = ? AND kind = 'user' AND name = ?",
                        (version, "enron1")).fetchone()
    now = datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    with con:
        con.executemany("INSERT INTO users (name, group_name, created_at) VALUES (?, NULL, ?)",
                        [(f"synthetic{i:04d}", now) for i in range(count)])
        con.executemany("INSERT INTO model_parts (model_version_id, kind, name, data) VALUES (?, 'user', ?, ?)",
                        [(version, f"synthetic{i:04d}", blob) for i in range(count)])
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=HERE.parent.parent / "shared" / "corpora")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-bench-loop-"))
    db_file = tmp / "loop.sqlite3"
    db = f"sqlite:///{db_file}"
    result: dict[str, object] = {}
    try:
        spamtl(db, "init")
        for user in USERS:
            for label in ("ham", "spam"):
                spamtl(db, "import", user, str(args.corpora / "enron-spam" / user / f"{label}.mbox"), "-l", label)
        seconds, out = spamtl(db, "train", "--format", "json")
        first = json.loads(out)
        seconds2, out2 = spamtl(db, "train", "--format", "json")
        second = json.loads(out2)
        result["train_first_night_s"] = seconds
        result["train_second_night_s"] = seconds2
        result["train_messages"] = first["messages"]
        result["train_holdout_auc_error_pct"] = first["metrics"].get("candidate_auc_error_pct")
        result["train_params"] = {"alpha": first["metrics"]["alpha"], "mu": first["metrics"]["mu"]}
        result["second_night_promoted"] = second["promoted"]
        print(f"train: first night {seconds:.1f} s, second night {seconds2:.1f} s "
              f"({first['messages']} messages)", flush=True)

        message = tmp / "one.eml"
        message.write_bytes((args.corpora / "spamassassin" / "spam.mbox").read_bytes().split(b"\nFrom ", 2)[1]
                            .split(b"\n", 1)[1])
        py = sys.executable
        single = {
            "python_pass": median_time(args.runs, py, "-c", "pass"),
            "python_import_sklearn": median_time(args.runs, py, "-c", "import sklearn"),
            "spamtl_classify": median_time(args.runs, py, "-m", "spamtl", "classify", "enron1", str(message),
                                           "--db", db),
            "spamtl_classify_filter": median_time(args.runs, py, "-m", "spamtl", "classify", "enron1", "--filter",
                                                  "--db", db, stdin=message.read_bytes()),
            "full_typer_command": median_time(max(3, args.runs // 3), py, "-c",
                                              "import sys; from spamtl.cli.app import app; sys.argv[0]='spamtl'; app()",
                                              "classify", "enron1", str(message), "--db", db),
        }
        result["single_classify"] = single
        for k, v in single.items():
            print(f"{k}: median {v['median_s']:.3f} s", flush=True)

        mbox = args.corpora / "enron-spam" / "enron6" / "spam.mbox"
        seconds, out = spamtl(db, "classify", "enron6", str(mbox), "--format", "json")
        n = len(out.splitlines())
        result["batch_classify"] = {"messages": n, "seconds": seconds, "messages_per_second": n / seconds}
        print(f"batch classify: {n} messages in {seconds:.1f} s = {n / seconds:,.0f}/s", flush=True)

        from spamtl.services.feedback import record_feedback
        from spamtl.settings import Settings
        from spamtl.store.engine import make_engine

        engine = make_engine(db)
        settings = Settings(database_url=db)
        fb_times = []
        raw = message.read_bytes()
        for i in range(5):
            start = time.perf_counter()
            res = record_feedback(engine, settings, user="enron1", label="spam" if i % 2 == 0 else "ham",
                                  raw=raw, now=datetime.utcnow())
            fb_times.append(time.perf_counter() - start)
        proc = [spamtl(db, "feedback", "enron1", "--spam", str(message))[0] for _ in range(5)]
        result["feedback"] = {"user_labels": res.user_labels, "service_median_s": statistics.median(fb_times),
                              "service_runs_s": fb_times, "process_median_s": statistics.median(proc)}
        print(f"feedback ({res.user_labels} labels): service median {statistics.median(fb_times):.3f} s, "
              f"whole process median {statistics.median(proc):.3f} s", flush=True)

        users6 = median_time(args.runs, py, "-m", "spamtl", "classify", "enron1", str(message), "--db", db)
        add_synthetic_users(db_file, 994)
        users1000 = median_time(args.runs, py, "-m", "spamtl", "classify", "enron1", str(message), "--db", db)
        result["classify_vs_users"] = {"users_6": users6, "users_1000": users1000,
                                       "ratio_1000_over_6": users1000["median_s"] / users6["median_s"]}
        print(f"classify with 6 users {users6['median_s']:.3f} s, with 1000 users {users1000['median_s']:.3f} s",
              flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out_path = HERE / "results" / "loop.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
