"""Worst-case CPU per crafted message: parse + featurise (issue 9), and whole requests (issue 24).

``--table parse``: each shape of ``tests/crafted.py`` at 100 KB, 1 MB and 10 MB: CPU seconds
(``time.process_time``, median of 3 runs) of ``featurize(parse_message(raw))`` in one process,
and the ratio 10 MB / 1 MB (at most 10 means linear growth; about 1 means the caps cut the work
off).  Targets: under 0.2 s at 1 MB, and growth at most linear.  Writes
benchmarks/results/worst_case.json.

``--table request``: each shape (and the red team's message of issue 24) cut to the size limit
(``max_message_bytes``, 512,000 bytes), scored for a user of a small trained store whose model is
already loaded, as a running daemon has it: CPU seconds (median of runs) of

- ``filter``: what ``spamtl classify --filter`` does with the bytes (strip filter headers and
  hash, score, add the headers, read Message-ID and Date for the log), without process start
  and the store write;
- ``filter_report``: the same with ``--report`` (the explanation from the same pass);
- ``daemon_report``: a REPORT request through the daemon's own request handler
  (``serve.Worker._score``), in process.

Target: under 0.2 s for every message under the size limit.  Writes
benchmarks/results/worst_case_request.json.

    python benchmarks/bench_worst_case.py [--table parse|request|both] [--runs 3] [--shapes a,b]
                                          [--sizes 100KB,1MB,10MB]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spamtl.features import featurize  # noqa: E402
from spamtl.mail.parse import parse_message  # noqa: E402
from spamtl.store.engine import make_engine  # noqa: E402
from tests.crafted import RED_TEAM, SHAPES, SIZES  # noqa: E402

TARGET_1MB = 0.2
TARGET_REQUEST = 0.2


def measure(raw: bytes, runs: int) -> float:
    return cpu_median(lambda: featurize(parse_message(raw)), runs)


def cpu_median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", choices=["parse", "request", "both"], default="both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sizes", default=",".join(SIZES))
    args = ap.parse_args()
    if args.table in ("parse", "both"):
        parse_table(args)
    if args.table in ("request", "both"):
        request_table(args)


def parse_table(args: argparse.Namespace) -> None:
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
    _write("worst_case.json", "CPU seconds (median of runs) of featurize(parse_message(raw)) per crafted message",
           args.runs, results, target_seconds_at_1MB=TARGET_1MB)


def _trained_store(folder: Path) -> str:
    """A small store (ann: 20 spam, 20 ham) trained by the CLI, as the tests build theirs."""
    from tests.cli.test_loop import _mails
    from tests.conftest import run, write_mbox

    url = f"sqlite:///{folder / 'bench.sqlite3'}"
    assert run(url, "init").exit_code == 0
    spam = write_mbox(folder / "spam.mbox", _mails(1, "spam", 20))
    ham = write_mbox(folder / "ham.mbox", _mails(3, "ann", 20))
    assert run(url, "import", "ann", str(spam), "-l", "spam").exit_code == 0
    assert run(url, "import", "ann", str(ham), "-l", "ham").exit_code == 0
    assert run(url, "train").exit_code == 0
    return url


def request_table(args: argparse.Namespace) -> None:
    from spamtl.mail.headers import add_headers, parse_envelope
    from spamtl.serve import protocol as spamd_protocol
    from spamtl.serve.daemon import ServeOptions, Worker
    from spamtl.serve.peers import Peer
    from spamtl.services.classify import open_reader, prepare, verdict_headers
    from spamtl.services.explain import explain, report_header
    from spamtl.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        url = _trained_store(Path(tmp))
        settings = Settings(database_url=url)
        limit = settings.max_message_bytes
        reader = open_reader(make_engine(settings.database_url), settings)
        model = reader.user_model("ann")
        worker = Worker(lambda: settings, ServeOptions())

        def filter_mode(raw: bytes, report: bool) -> None:
            message = prepare(raw)
            verdict = reader.classify(model, message, "bench")
            add_headers(raw, verdict_headers(verdict))
            parse_envelope(message.raw)
            if report:
                report_header(explain(model, message, scored=verdict.scored))

        def daemon_report(raw: bytes) -> None:
            request = spamd_protocol.Request("REPORT", "1.5", {"user": "ann", "content-length": str(len(raw))})
            worker._score(request, raw, Peer(os.getuid()))

        messages = {"red_team": RED_TEAM, **{name: SHAPES[name](limit)[:limit] for name in args.shapes.split(",")}}
        columns: dict[str, Callable[[bytes], object]] = {
            "filter": lambda raw: filter_mode(raw, False),
            "filter_report": lambda raw: filter_mode(raw, True),
            "daemon_report": daemon_report,
        }
        results: dict[str, dict[str, Any]] = {}
        print(f"\nCPU seconds per request at the size limit ({limit} bytes), median of {args.runs}")
        print(f"{'shape':24s}{'bytes':>9s}" + "".join(f"{c:>15s}" for c in columns), flush=True)
        try:
            for name, raw in messages.items():
                row: dict[str, Any] = {"bytes": len(raw)}
                for column, fn in columns.items():
                    fn(raw)  # warm: caches as a running daemon has them
                    row[column] = cpu_median(lambda: fn(raw), args.runs)
                results[name] = row
                flag = "  <-- over target" if max(row[c] for c in columns) > TARGET_REQUEST else ""
                print(f"{name:24s}{len(raw):9d}" + "".join(f"{row[c]:15.4f}" for c in columns) + flag, flush=True)
        finally:
            worker.writer.close()
            worker.reader.store.close()
            worker.close()
            reader.store.close()
    worst = {c: max(results, key=lambda s: results[s][c]) for c in columns}
    for column, shape in worst.items():
        print(f"worst {column}: {shape} {results[shape][column]:.3f} s (target {TARGET_REQUEST} s)")
    _write("worst_case_request.json",
           "CPU seconds (median of runs) per request on crafted messages cut to the size limit: filter = "
           "prepare + classify + add_headers + parse_envelope; filter_report = the same + explain from the "
           "same pass + report_header; daemon_report = serve.Worker._score of a REPORT request",
           args.runs, results, size_limit_bytes=limit, target_seconds=TARGET_REQUEST)


def _write(name: str, what: str, runs: int, results: dict, **facts: object) -> None:  # type: ignore[type-arg]
    """benchmarks/results/NAME: what was measured, on what, and the figures."""
    out = {"what": what, "runs": runs, **facts, "python": platform.python_version(),
           "machine": platform.machine(), "seconds": results}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
