"""Worst-case parse + featurise times for crafted messages (issue 9).

Each shape of ``tests/crafted.py`` at 100 KB, 1 MB and 10 MB: CPU seconds
(``time.process_time``, median of 3 runs) of ``featurize(parse_message(raw))``
in one process, and the ratio 10 MB / 1 MB (at most 10 means linear growth;
about 1 means the caps cut the work off).  Targets: under 0.2 s at 1 MB, and
growth at most linear.

    python benchmarks/bench_worst_case.py [--runs 3] [--shapes a,b] [--sizes 100KB,1MB,10MB]

Writes benchmarks/results/worst_case.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spamtl.features import featurize  # noqa: E402
from spamtl.mail import parse_message  # noqa: E402
from tests.crafted import SHAPES, SIZES  # noqa: E402

TARGET_1MB = 0.2


def measure(raw: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        featurize(parse_message(raw))
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sizes", default=",".join(SIZES))
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    sizes = args.sizes.split(",")
    results: dict[str, dict[str, float]] = {}
    print(f"{'shape':24s}" + "".join(f"{s:>10s}" for s in sizes) + f"{'10MB/1MB':>10s}", flush=True)
    for shape in shapes:
        row: dict[str, float] = {}
        for size in sizes:
            raw = SHAPES[shape](SIZES[size])
            row[size] = measure(raw, args.runs)
        results[shape] = row
        ratio = row["10MB"] / max(row["1MB"], 1e-4) if "10MB" in row and "1MB" in row else float("nan")
        flag = "  <-- over target" if row.get("1MB", 0) > TARGET_1MB else ""
        print(f"{shape:24s}" + "".join(f"{row[s]:10.4f}" for s in sizes) + f"{ratio:10.1f}{flag}", flush=True)
    worst = max(results, key=lambda s: results[s].get("1MB", 0))
    print(f"\nworst at 1 MB: {worst} {results[worst].get('1MB', float('nan')):.3f} s (target {TARGET_1MB} s)")
    out = {
        "what": "CPU seconds (median of runs) of featurize(parse_message(raw)) per crafted message",
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "target_seconds_at_1MB": TARGET_1MB,
        "seconds": results,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "worst_case.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
