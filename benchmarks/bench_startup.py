"""CPU time of a fresh `spamtl classify --filter` process, as procmail, maildrop or a Postfix pipe run it.

One message, one process: `spamtl classify --filter USER < msg.eml > out.eml`.  Each round runs, in turn,
`python -c pass` (the interpreter's own start), `python -c "import numpy"` with one BLAS thread (the floor
the scorer's arrays impose), the filter, and with ``--before DIR`` the filter from another source tree
(e.g. `git archive HEAD | tar -x -C DIR`, run with PYTHONPATH=DIR); medians over the rounds, and each
command's ratio to `python -c pass` of the same round.  CPU time is the child's user + system time
(getrusage), wall time a monotonic clock around it.  The output of the filter is checked to be the same
bytes from both trees.

    python benchmarks/bench_startup.py --db sqlite:////tmp/demo.sqlite3 --user ann [--message M] [--before DIR]

Without --db a demo store is built first (`spamtl demo`, about a minute).  Writes
benchmarks/results/startup.json.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MESSAGE = HERE.parent.parent / "shared" / "corpora" / "spamassassin" / "easy_ham.mbox"


def first_message(path: Path) -> bytes:
    """The message in ``path``, or the first one of an mbox (its From_ line dropped)."""
    raw = path.read_bytes()
    if not raw.startswith(b"From "):
        return raw
    return raw.split(b"\n", 1)[1].split(b"\nFrom ", 1)[0] + b"\n"


def timed(cmd: list[str], *, stdin: bytes, env: dict[str, str], cwd: str) -> tuple[float, float, bytes]:
    """(CPU seconds, wall seconds, stdout) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, input=stdin, capture_output=True, env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def commands(args: argparse.Namespace, db: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each measured command and its environment (no bytecode writing: every tree is compiled beforehand)."""
    py = sys.executable
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPAMTL_DATABASE_URL")}
    base["PYTHONDONTWRITEBYTECODE"] = "1"
    script = Path(py).with_name("spamtl")
    spamtl = [str(script)] if script.exists() else [py, "-m", "spamtl"]
    filter_cmd = [*spamtl, "classify", "--filter", "--db", db, "--", args.user]  # as the recipes write it
    out = {"python_c_pass": ([py, "-c", "pass"], base),
           "python_import_numpy_1_blas_thread": ([py, "-c", "import numpy"], {**base, "OPENBLAS_NUM_THREADS": "1"}),
           "filter": (filter_cmd, base)}
    if args.before:
        out["filter_before"] = (filter_cmd, {**base, "PYTHONPATH": str(args.before)})
    return out


def compile_trees(args: argparse.Namespace) -> None:
    """Bytecode for every tree measured, so that no run pays for compiling a stale module."""
    import spamtl

    for tree in [Path(spamtl.__file__).parent, *([args.before / "spamtl"] if args.before else [])]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True, capture_output=True)


def measure(args: argparse.Namespace, db: str, message: bytes) -> dict[str, object]:
    cmds = commands(args, db)
    cwd = tempfile.mkdtemp(prefix="spamtl-bench-startup-")  # not the checkout: `-m` would import from there
    outputs = {}
    for name, (cmd, env) in cmds.items():  # warm-up, and the filter's output from each tree
        outputs[name] = timed(cmd, stdin=message, env=env, cwd=cwd)[2]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(args.runs):
        for name, (cmd, env) in cmds.items():
            runs[name].append(timed(cmd, stdin=message, env=env, cwd=cwd)[:2])
    result: dict[str, object] = {}
    for name, pairs in runs.items():
        cpu = [c for c, _ in pairs]
        wall = [w for _, w in pairs]
        ratio = [c / max(base, 1e-6) for (c, _), (base, _) in zip(pairs, runs["python_c_pass"], strict=True)]
        result[name] = {"cpu_median_s": round(statistics.median(cpu), 4), "cpu_min_s": round(min(cpu), 4),
                        "cpu_max_s": round(max(cpu), 4), "wall_median_s": round(statistics.median(wall), 4),
                        "cpu_over_python_c_pass_median": round(statistics.median(ratio), 2)}
    if args.before:
        result["same_output_as_before"] = outputs["filter"] == outputs["filter_before"]
    result["output_first_line"] = outputs["filter"].split(b"\n", 1)[0].decode(errors="replace")
    return result


def demo_store(tmp: Path) -> str:
    db = f"sqlite:///{tmp / 'demo.sqlite3'}"
    subprocess.run([sys.executable, "-m", "spamtl", "demo", "--db", db], check=True, capture_output=True)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a trained store (default: build the demo store)")
    parser.add_argument("--user", default="ann")
    parser.add_argument("--message", type=Path, default=DEFAULT_MESSAGE, help=".eml, or an mbox's first message")
    parser.add_argument("--before", type=Path, help="another source tree to compare with (PYTHONPATH=DIR)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = parser.parse_args()
    db = args.db or demo_store(Path(tempfile.mkdtemp(prefix="spamtl-bench-startup-")))
    compile_trees(args)
    message = first_message(args.message)
    result = {"command": " ".join(["python", *sys.argv]), "message_bytes": len(message), "runs": args.runs,
              "cores": os.cpu_count(), **measure(args, db, message)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result.items():
        print(f"{name}: {row}")


if __name__ == "__main__":
    main()
