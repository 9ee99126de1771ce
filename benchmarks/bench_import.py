"""Import benchmark: all six Enron-Spam users into a fresh SQLite store.

Runs `spamtl import` as a user would (a fresh process per mbox), several
times from an empty database, and reports messages per second (median over
runs) and the peak resident memory of the largest import process.  Then it
checks the per-user counts and that a second import adds nothing.

    python benchmarks/bench_import.py [--corpora ../shared/corpora] [--runs 3]

Writes benchmarks/results/import.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = {"enron1": (3672, 1500), "enron2": (4361, 1496), "enron3": (4012, 1500),
            "enron4": (1500, 4500), "enron5": (1500, 3675), "enron6": (1500, 4500)}


def spamtl(db: str, *args: str) -> tuple[str, float]:
    """Run the spamtl CLI in a fresh process; return stdout and that child's peak RSS in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-m", "spamtl", *args, "--db", db], check=True,
                         capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return out, max(before, after) / 1024.0


def import_all(db: str, corpora: Path) -> tuple[float, float]:
    peak = 0.0
    start = time.perf_counter()
    for user in EXPECTED:
        for label in ("ham", "spam"):
            _, rss = spamtl(db, "import", user, str(corpora / "enron-spam" / user / f"{label}.mbox"),
                            "--label", label)
            peak = max(peak, rss)
    return time.perf_counter() - start, peak


def big_mbox(path: Path, corpora: Path, size: int) -> Path:
    """An mbox of about ``size`` bytes: Enron messages, each made distinct by a serial header."""
    source = (corpora / "enron-spam" / "enron1" / "ham.mbox").read_bytes()
    messages = source.split(b"\n\nFrom MAILER-DAEMON ")
    written = serial = 0
    with path.open("wb") as fh:
        while written < size:
            for body in messages:
                head, _, rest = body.partition(b"\n")
                if not head.startswith(b"From MAILER-DAEMON "):
                    head = b"From MAILER-DAEMON " + head
                chunk = head + f"\nX-Bench-Serial: {serial}\n".encode() + rest.rstrip(b"\n") + b"\n\n"
                fh.write(chunk)
                written += len(chunk)
                serial += 1
                if written >= size:
                    break
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=HERE.parent.parent / "shared" / "corpora")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    total = sum(h + s for h, s in EXPECTED.values())
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-bench-"))
    times = []
    try:
        for run in range(args.runs):
            db = f"sqlite:///{tmp / f'run{run}.sqlite3'}"
            spamtl(db, "init")
            seconds, peak = import_all(db, args.corpora)
            times.append(seconds)
            print(f"run {run + 1}: {seconds:.1f} s, {total / seconds:,.0f} messages/s, peak RSS {peak:.0f} MiB",
                  flush=True)
        users = json.loads(spamtl(db, "users", "--format", "json")[0])
        counts = {u["user"]: (u["ham"], u["spam"]) for u in users}
        start = time.perf_counter()
        import_all(db, args.corpora)
        again_seconds = time.perf_counter() - start
        unchanged = json.loads(spamtl(db, "users", "--format", "json")[0]) == users
        size_mb = os.path.getsize(db.removeprefix("sqlite:///")) / 2**20
        big = big_mbox(tmp / "big.mbox", args.corpora, 100 * 2**20)
        big_db = f"sqlite:///{tmp / 'big.sqlite3'}"
        spamtl(big_db, "init")
        start = time.perf_counter()
        big_out, big_peak = spamtl(big_db, "import", "bigbox", str(big), "--label", "ham", "--format", "json")
        big_seconds = time.perf_counter() - start
        big_imported = json.loads(big_out)["imported"]
        print(f"100 MB mbox: {big_imported} messages in {big_seconds:.1f} s, peak RSS {big_peak:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = statistics.median(times)
    result = {
        "messages": total,
        "runs_seconds": times,
        "median_seconds": median,
        "messages_per_second": total / median,
        "peak_rss_mib": peak,
        "counts_match": counts == EXPECTED,
        "counts": counts,
        "reimport_seconds": again_seconds,
        "reimport_adds_nothing": unchanged,
        "database_mib": size_mb,
        "big_mbox_mib": 100,
        "big_mbox_messages": big_imported,
        "big_mbox_seconds": big_seconds,
        "big_mbox_peak_rss_mib": big_peak,
        "note": "each mbox imported by a fresh `python -m spamtl import` process (startup included)",
    }
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "import.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not (result["counts_match"] and unchanged):
        sys.exit("counts do not match the expected Enron-Spam counts")


if __name__ == "__main__":
    main()
