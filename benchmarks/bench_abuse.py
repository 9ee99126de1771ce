"""`spamtl serve` under abuse: normal checks while slow clients and floods hit it, and a dead worker.

    .venv/bin/python benchmarks/bench_abuse.py [--runs 3]

On a store trained from the built-in demo corpus (a temporary folder), with
`--workers 2` and the default limits (64 connections, 5 s for the headers):

- slowloris: 100 connections that send one byte a second (reopened as soon as
  the daemon drops them) for 20 s; meanwhile 100 normal CHECKs, one every
  0.15 s: the share answered with a score, and their latency (median, p99);
- flood: 500 connections at once, a third sending whole requests and waiting,
  a third vanishing mid-request, a third vanishing before the answer: the share
  of waiting clients answered (scanned or told to retry), then whether 20 normal
  CHECKs are all scanned afterwards;
- a worker killed with SIGKILL: seconds until a new worker serves.

Baseline in the same run: the same 100 CHECKs with no attack. Each figure is the
median over --runs runs. Writes benchmarks/results/abuse.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.serve.test_abuse import Slowloris  # noqa: E402 - the repository root first

DEMO = HERE.parent / "data" / "demo"
SPAM = (b"From: x@cheap.example\nTo: ann@example.org\nSubject: win the lottery now\n\n"
        b"claim your prize casino viagra now, click here\n")
REQUEST = f"CHECK SPAMC/1.5\r\nUser: ann\r\nContent-length: {len(SPAM)}\r\n\r\n".encode() + SPAM


def build_store(folder: Path) -> str:
    db = f"sqlite:///{folder / 'bench.sqlite3'}"
    subprocess.run([sys.executable, "-m", "spamtl", "demo", "--db", db], check=True, capture_output=True)
    return db


def start(db: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-m", "spamtl", "serve", "--db", db, "--port", "0", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    port = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert port is not None, line
    return proc, int(port.group(1))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def check(port: int, timeout: float = 30.0) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(REQUEST)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, TimeoutError):
        return False, time.perf_counter() - started
    return answer.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: "), time.perf_counter() - started


def checks(port: int, count: int, gap: float) -> list[tuple[bool, float]]:
    out = []
    for _ in range(count):
        out.append(asyncio.run(check(port)))
        time.sleep(gap)
    return out


async def flood(port: int, count: int) -> float:
    async def vanish(kind: int) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.write(REQUEST[: len(REQUEST) // 2] if kind == 1 else REQUEST)
        await writer.drain()
        writer.transport.abort()

    async def waiting() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 60)
            writer.close()
        except (OSError, TimeoutError):
            return False
        return answer.startswith((b"SPAMD/1.5 0 EX_OK\r\nSpam: ", b"SPAMD/1.5 75 "))

    results = await asyncio.gather(*(waiting() if i % 3 == 0 else vanish(i % 3) for i in range(count)))
    answered = [r for i, r in enumerate(results) if i % 3 == 0]
    return sum(answered) / len(answered)


def workers_of(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def replacement_seconds(proc: subprocess.Popen[bytes], port: int) -> float:
    while len(workers_of(proc.pid)) < 2:
        time.sleep(0.05)
    victim = min(workers_of(proc.pid))
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    while True:
        now = workers_of(proc.pid)
        if len(now) == 2 and victim not in now:
            return time.monotonic() - started
        if time.monotonic() - started > 30:
            return float("inf")
        time.sleep(0.005)


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def one_run(db: str, folder: Path) -> dict[str, float]:
    proc, port = start(db, folder)
    try:
        quiet = checks(port, 100, 0.05)
        attack = Slowloris(port, count=100, seconds=20)  # the attacker of tests/serve/test_abuse.py
        attack.start()
        time.sleep(3)
        attacked = checks(port, 100, 0.15)
        attack.join(60)
        flood_answered = asyncio.run(flood(port, 500))
        after = checks(port, 20, 0.0)
        replaced = replacement_seconds(proc, port)
    finally:
        stop(proc)
    return {
        "quiet_scanned": sum(ok for ok, _ in quiet) / len(quiet),
        "quiet_median_ms": 1000 * statistics.median(t for _, t in quiet),
        "slowloris_scanned": sum(ok for ok, _ in attacked) / len(attacked),
        "slowloris_median_ms": 1000 * statistics.median(t for _, t in attacked),
        "slowloris_p99_ms": 1000 * p99([t for _, t in attacked]),
        "flood_answered": flood_answered,
        "after_flood_scanned": sum(ok for ok, _ in after) / len(after),
        "worker_replaced_s": replaced,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spamtl-abuse-") as tmp:
        folder = Path(tmp)
        db = build_store(folder)
        runs = [one_run(db, folder) for _ in range(args.runs)]
    result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result["runs"] = args.runs
    result["per_run"] = runs
    out = HERE / "results" / "abuse.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'figure (median of %d runs)' % args.runs:44} value")
    for key, value in result.items():
        if key not in ("runs", "per_run"):
            print(f"{key:44} {value:.3f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
