"""`spamtl serve` against SpamAssassin's spamd and bogofilter, measured in the same run on the same mail.

    .venv/bin/python benchmarks/bench_serve.py [--quick]

Needs Debian's spamassassin, spamc and bogofilter (the script says so and
skips a system that is missing).  Everything lives in a temporary folder;
spamd runs with network tests off (-L, local only) on a loopback port with
its Bayes trained by sa-learn on the same mail as spamtl and bogofilter.

Measured:
- latency of one ~10 KB message through `spamc` (median, p99), including
  spamc's own process start; two floors: `spamc` to a null daemon (a separate
  process that answers every request at once, echoing the message: what any
  daemon behind spamc costs at the least on this machine) and to a port
  nobody listens on (spamc's fallback);
- throughput with 8 concurrent `spamc` clients, against bogofilter's
  single-process batch rate (`bogofilter -b`), spamd under the same load, and
  the null daemon (the most this harness of 8 spamc processes can drive);
- the daemon's memory with 1,000 users' models loaded (RSS and PSS, all processes);
- `spamtl feedback USER --spam JUNK_MAILDIR` for 500 messages, one process.

Writes benchmarks/results/serve.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("SPAMTL_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora")) / "enron-spam"
PY = sys.executable
TRAIN_PER_CLASS = 1000
TARGET_BYTES = 10 * 1024
CLIENTS = 8
USERS_FOR_MEMORY = 1000
JUNK = 500


def mails(path: Path) -> list[bytes]:
    from spamtl.mail.sources import RawMail, iter_mail

    return [m.raw for m in iter_mail([path]) if isinstance(m, RawMail)]


def write_mbox(path: Path, raws: list[bytes]) -> Path:
    with path.open("wb") as fh:  # separators SpamAssassin's mbox reader also accepts
        for raw in raws:
            fh.write(b"From bench@example.org  Thu Jan  1 00:00:00 2004\n" + raw.rstrip(b"\n") + b"\n\n")
    return path


def ten_kb(raws: list[bytes], n: int) -> list[bytes]:
    """n messages of about 10 KB: a real message's headers and body, grown with the bodies of the next ones."""
    out = []
    for i in range(n):
        msg = raws[i % len(raws)]
        j = i + 1
        while len(msg) < TARGET_BYTES:
            body = raws[j % len(raws)].split(b"\n\n", 1)[-1]
            msg = msg.rstrip(b"\n") + b"\n\n" + body
            j += 1
        out.append(msg)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_spamc(args: list[str], path: Path) -> float:
    with path.open("rb") as fh:
        start = time.perf_counter()
        subprocess.run(args, stdin=fh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - start


def latency(args: list[str], files: list[Path], n: int) -> dict[str, float]:
    for f in files[:3]:
        run_spamc(args, f)  # warm up (models loaded, caches hot)
    times = [run_spamc(args, files[i % len(files)]) for i in range(n)]
    return {"median_ms": statistics.median(times) * 1000, "p99_ms": pct(times, 0.99) * 1000, "n": n}


def throughput(args: list[str], files: list[Path], n: int) -> dict[str, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda i: run_spamc(args, files[i % len(files)]), range(n)))
    seconds = time.perf_counter() - start
    return {"messages_per_s": n / seconds, "n": n, "seconds": seconds, "clients": CLIENTS}


def socket_throughput(port: int, raws: list[bytes], n: int) -> dict[str, float]:
    """The daemon's own rate: 8 threads speaking the protocol (PROCESS) without starting spamc."""
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda i: process(port, "enron1", raws[i % len(raws)]), range(n)))
    seconds = time.perf_counter() - start
    return {"messages_per_s": n / seconds, "n": n, "seconds": seconds, "clients": CLIENTS}


def process(port: int, user: str, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"PROCESS SPAMC/1.5\r\nUser: {user}\r\nContent-length: {len(raw)}\r\n\r\n".encode() + raw)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while block := s.recv(65536):
            chunks.append(block)
    return b"".join(chunks)


NULL_DAEMON = r"""
import asyncio, sys
async def handle(reader, writer):
    try:
        length = 0
        await reader.readline()
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        writer.write(b"SPAMD/1.5 0 EX_OK\r\nContent-length: %d\r\nSpam: False ; 0.0 / 5.0\r\n\r\n" % len(body) + body)
        await writer.drain()
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


class NullDaemon:
    """A spamd that answers every request at once (PROCESS: the message back): spamc's own floor."""

    running: list[subprocess.Popen[bytes]] = []

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PY, "-c", NULL_DAEMON], stdout=subprocess.PIPE)
        self.running.append(self.proc)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def spamtl(db: str, *args: str) -> str:
    out = subprocess.run([PY, "-m", "spamtl", *args, "--db", db], capture_output=True, text=True, check=True)
    return out.stdout


class Serve:
    def __init__(self, db: str, log: Path, workers: int = 2) -> None:
        self.proc = subprocess.Popen([PY, "-m", "spamtl", "serve", "--db", db, "--port", "0", "--workers", str(workers)],
                                     stdout=subprocess.PIPE, stderr=log.open("wb"))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, children)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of these processes (their threads included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def memory_kb(pids: list[int]) -> dict[str, float]:
    rss = pss = 0
    per = []
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        r = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        p = int(re.search(r"Pss:\s+(\d+)", rollup).group(1))  # type: ignore[union-attr]
        rss, pss = rss + r, pss + p
        per.append(r)
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "rss_per_process_mb": [x / 1024 for x in per]}


def check(port: int, user: str, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"CHECK SPAMC/1.5\r\nUser: {user}\r\nContent-length: {len(raw)}\r\n\r\n".encode() + raw)
        s.shutdown(socket.SHUT_WR)
        return s.recv(1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="spamtl serve workers (default 2, one per core)")
    opts = parser.parse_args()
    reps = 60 if opts.quick else 300
    missing = [p for p in ("spamc", "spamd", "sa-learn", "bogofilter") if shutil.which(p) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install spamassassin spamc bogofilter", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-bench-serve-"))
    tmp.chmod(0o755)
    results: dict[str, object] = {"machine_cpus": os.cpu_count(), "message_bytes": TARGET_BYTES,
                                  "load_average_at_start": os.getloadavg()}
    try:
        ham, spam = mails(CORPUS / "enron1" / "ham.mbox"), mails(CORPUS / "enron1" / "spam.mbox")
        train_ham, train_spam = ham[:TRAIN_PER_CLASS], spam[:TRAIN_PER_CLASS]
        held = [m for pair in zip(ham[TRAIN_PER_CLASS:], spam[TRAIN_PER_CLASS:]) for m in pair]
        test = ten_kb(held, 200)
        files = []
        (tmp / "msgs").mkdir()
        for i, raw in enumerate(test):
            f = tmp / "msgs" / f"{i:04d}.eml"
            f.write_bytes(raw)
            files.append(f)
        ham_box, spam_box = write_mbox(tmp / "ham.mbox", train_ham), write_mbox(tmp / "spam.mbox", train_spam)

        # spamtl: import + train
        db = f"sqlite:///{tmp / 'spamtl.sqlite3'}"
        spamtl(db, "init")
        spamtl(db, "import", "enron1", str(spam_box), "-l", "spam")
        spamtl(db, "import", "enron1", str(ham_box), "-l", "ham")
        t = time.perf_counter()
        spamtl(db, "train")
        print(f"spamtl trained in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        # bogofilter: register the same mail
        bogo = tmp / "bogo"
        bogo.mkdir()
        if shutil.which("bogofilter"):
            subprocess.run(["bogofilter", "-d", str(bogo), "-M", "-s", "-I", str(spam_box)], check=True)
            subprocess.run(["bogofilter", "-d", str(bogo), "-M", "-n", "-I", str(ham_box)], check=True)

        # spamd: Bayes trained with sa-learn on the same mail, network tests off
        sa = tmp / "sa"
        sa.mkdir()
        sa.chmod(0o777)
        for pre in Path("/etc/spamassassin").glob("*.pre"):
            shutil.copy(pre, sa)
        (sa / "local.cf").write_text(f"use_bayes 1\nbayes_auto_learn 0\nbayes_path {sa}/bayes\nbayes_file_mode 0777\n"
                                     "skip_rbl_checks 1\ndns_available no\n")
        spamd = None
        spamd_port = free_port()
        if shutil.which("spamd"):
            t = time.perf_counter()
            subprocess.run(["sa-learn", "--siteconfigpath", str(sa), "--spam", "--mbox", str(spam_box)],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["sa-learn", "--siteconfigpath", str(sa), "--ham", "--mbox", str(ham_box)],
                           check=True, stdout=subprocess.DEVNULL)
            for f in sa.glob("bayes*"):
                f.chmod(0o666)
            print(f"sa-learn took {time.perf_counter() - t:.1f} s", file=sys.stderr)
            user = ["-u", "nobody"] if os.getuid() == 0 else []
            spamd = subprocess.Popen(["spamd", "-L", "-i", "127.0.0.1", "-p", str(spamd_port), "--siteconfigpath",
                                      str(sa), "-x", "--max-children", "5", *user,
                                      "--pidfile", str(tmp / "spamd.pid")],
                                     stdout=subprocess.DEVNULL, stderr=(tmp / "spamd.log").open("wb"))
            deadline = time.monotonic() + 120
            while subprocess.run(["spamc", "-K", "-p", str(spamd_port)], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit("spamd did not start: " + (tmp / "spamd.log").read_text()[-2000:])
                time.sleep(0.5)

        serve = Serve(db, tmp / "serve.log", workers=opts.workers)
        null = NullDaemon()
        spamc_tl = ["spamc", "-p", str(serve.port), "-u", "enron1"]
        spamc_sa = ["spamc", "-p", str(spamd_port)]
        spamc_down = ["spamc", "-p", str(free_port()), "--connect-retries", "1", "-u", "enron1"]
        spamc_null = ["spamc", "-p", str(null.port), "-u", "enron1"]

        lat = {"spamc_floor (daemon down)": latency(spamc_down, files, reps),
               "spamc_floor (null daemon)": latency(spamc_null, files, reps),
               "spamtl serve": latency(spamc_tl, files, reps)}
        if spamd is not None:
            lat["spamd"] = latency(spamc_sa, files, max(20, reps // 10))
        if shutil.which("bogofilter"):
            lat["bogofilter (one process per message)"] = latency(["bogofilter", "-d", str(bogo)], files, reps)
        results["latency"] = lat

        tput = {"spamc_floor (null daemon, 8 spamc clients)": throughput(spamc_null, files, reps * 2),
                "spamtl serve (8 spamc clients)": throughput(spamc_tl, files, reps * 2),
                "spamc_floor (null daemon, 8 socket clients)": socket_throughput(null.port, test, reps * 4),
                }
        cpu_before = cpu_seconds(serve.pids())
        tput["spamtl serve (8 socket clients, no spamc process)"] = socket_throughput(serve.port, test, reps * 4)
        cpu_ms = {"spamtl serve (all processes)": (cpu_seconds(serve.pids()) - cpu_before) / (reps * 4) * 1000}
        null.stop()
        if spamd is not None:
            tput["spamd (8 spamc clients)"] = throughput(spamc_sa, files, max(40, reps // 5))
        if shutil.which("bogofilter"):
            names = "\n".join(str(f) for f in files).encode() + b"\n"
            runs, cpu = [], []
            for _ in range(5):
                start, used = time.perf_counter(), children_cpu()
                subprocess.run(["bogofilter", "-d", str(bogo), "-b"], input=names, stdout=subprocess.DEVNULL,
                               check=False)
                runs.append(time.perf_counter() - start)
                cpu.append(children_cpu() - used)
            cpu_ms["bogofilter -b"] = statistics.median(cpu) / len(files) * 1000
            tput["bogofilter -b (one process, batch)"] = {"messages_per_s": len(files) / statistics.median(runs),
                                                          "n": len(files), "seconds": statistics.median(runs),
                                                          "clients": 1}
        results["throughput"] = tput
        results["cpu_ms_per_message"] = cpu_ms  # CPU time (user + system): what load does not inflate much
        results["workers"] = opts.workers
        serve.stop()
        if spamd is not None:
            spamd.send_signal(signal.SIGTERM)
            spamd.wait(timeout=60)

        # memory: 1,000 users (copies of the trained user's personal part), each scored by the daemon
        mem_db = tmp / "users.sqlite3"
        shutil.copy(tmp / "spamtl.sqlite3", mem_db)
        con = sqlite3.connect(mem_db)
        created = con.execute("SELECT created_at FROM users WHERE name = 'enron1'").fetchone()[0]
        names = [f"user{i:04d}" for i in range(1, USERS_FOR_MEMORY)]
        con.executemany("INSERT INTO users (name, group_name, created_at) VALUES (?, NULL, ?)",
                        [(n, created) for n in names])
        con.executemany("INSERT INTO model_parts (model_version_id, kind, name, data, revision) "
                        "SELECT model_version_id, kind, ?, data, revision FROM model_parts "
                        "WHERE kind = 'user' AND name = 'enron1'", [(n,) for n in names])
        part_bytes = con.execute("SELECT length(data) FROM model_parts WHERE kind = 'user' AND name = 'enron1'").fetchone()[0]
        con.commit()
        con.close()
        serve = Serve(f"sqlite:///{mem_db}", tmp / "serve-mem.log")
        for _ in range(4):
            check(serve.port, "enron1", test[0])
        one_user = memory_kb(serve.pids())
        start = time.perf_counter()
        for _ in range(3):  # each worker gets most users at least once
            for name in ["enron1", *names]:
                check(serve.port, name, test[0])
        loaded_s = time.perf_counter() - start
        results["memory"] = {"users": USERS_FOR_MEMORY, "personal_part_bytes": part_bytes,
                             "one_user": one_user, "all_users": memory_kb(serve.pids()),
                             "requests": 3 * USERS_FOR_MEMORY, "seconds": loaded_s}
        serve.stop()

        # feedback: a 500-message Junk Maildir in one process (fresh store copy each run)
        junk = tmp / "Maildir" / ".Junk"
        for sub in ("cur", "new", "tmp"):
            (junk / sub).mkdir(parents=True)
        for i, raw in enumerate(mails(CORPUS / "enron2" / "spam.mbox")[:JUNK]):
            (junk / "cur" / f"{1700000000 + i}.M{i}.bench:2,S").write_bytes(raw)
        runs = []
        for k in range(3):
            copy = tmp / f"fb{k}.sqlite3"
            shutil.copy(tmp / "spamtl.sqlite3", copy)
            start = time.perf_counter()
            out = spamtl(f"sqlite:///{copy}", "feedback", "enron1", "--spam", str(junk), "--format", "json")
            runs.append(time.perf_counter() - start)
        results["feedback"] = {"messages": JUNK, "seconds_median": statistics.median(runs), "runs": runs,
                               "result": json.loads(out)}
    finally:
        for proc in NullDaemon.running:
            if proc.poll() is None:
                proc.kill()
        for pidfile in (tmp / "spamd.pid",):
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(tmp, ignore_errors=True)

    lat, tput = results["latency"], results["throughput"]  # type: ignore[assignment]
    tl, sa_t = tput["spamtl serve (8 spamc clients)"], tput.get("spamd (8 spamc clients)")  # type: ignore[index,union-attr]
    bogo_t = tput.get("bogofilter -b (one process, batch)")  # type: ignore[union-attr]
    targets = {
        "latency_median_ms_at_most_5": lat["spamtl serve"]["median_ms"] <= 5.0,  # type: ignore[index]
        "throughput_above_bogofilter_batch": bogo_t is not None and tl["messages_per_s"] > bogo_t["messages_per_s"],
        "throughput_at_least_10x_spamd": sa_t is not None and tl["messages_per_s"] >= 10 * sa_t["messages_per_s"],
        "feedback_500_under_5_s": results["feedback"]["seconds_median"] < 5.0,  # type: ignore[index]
    }
    floor = lat["spamc_floor (null daemon)"]["median_ms"]  # type: ignore[index]
    results["spamtl_added_over_spamc_floor_ms"] = lat["spamtl serve"]["median_ms"] - floor  # type: ignore[index]
    results["spamtl_added_over_daemon_down_ms"] = (lat["spamtl serve"]["median_ms"]  # type: ignore[index]
                                                   - lat["spamc_floor (daemon down)"]["median_ms"])  # type: ignore[index]
    targets["latency_added_over_floor_at_most_5_ms"] = results["spamtl_added_over_spamc_floor_ms"] <= 5.0  # type: ignore[operator]
    null_rate = tput["spamc_floor (null daemon, 8 spamc clients)"]["messages_per_s"]  # type: ignore[index]
    results["spamc_throughput_share_of_floor"] = tl["messages_per_s"] / null_rate
    targets["spamc_floor_itself_above_bogofilter_batch"] = bogo_t is not None and null_rate > bogo_t["messages_per_s"]
    targets["daemon_rate_without_spamc_above_bogofilter_batch"] = (
        bogo_t is not None and tput["spamtl serve (8 socket clients, no spamc process)"]["messages_per_s"]  # type: ignore[index]
        > bogo_t["messages_per_s"])
    results["load_average_at_end"] = os.getloadavg()
    results["targets_met"] = targets
    out_path = HERE / "results" / "serve.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{'latency, one ~10 KB message through the client':<48} {'median ms':>10} {'p99 ms':>10} {'n':>6}")
    for name, v in lat.items():  # type: ignore[union-attr]
        print(f"{name:<48} {v['median_ms']:>10.2f} {v['p99_ms']:>10.2f} {v['n']:>6}")
    print(f"\n{'throughput':<48} {'msg/s':>10} {'clients':>10} {'n':>6}")
    for name, v in tput.items():  # type: ignore[union-attr]
        print(f"{name:<48} {v['messages_per_s']:>10.1f} {v['clients']:>10} {v['n']:>6}")
    for name, ms in results["cpu_ms_per_message"].items():  # type: ignore[union-attr]
        print(f"CPU per message, {name}: {ms:.2f} ms")
    print(f"spamtl serve adds {results['spamtl_added_over_spamc_floor_ms']:.2f} ms (median) over spamc to a null daemon; "
          f"8 spamc clients reach {results['spamc_throughput_share_of_floor']:.0%} of the null daemon's rate")
    mem = results["memory"]
    print(f"\nmemory, spamtl serve (2 workers + parent): 1 user {mem['one_user']['rss_mb']:.0f} MB RSS "  # type: ignore[index]
          f"({mem['one_user']['pss_mb']:.0f} MB PSS); {mem['users']} users {mem['all_users']['rss_mb']:.0f} MB RSS "  # type: ignore[index]
          f"({mem['all_users']['pss_mb']:.0f} MB PSS); personal part {mem['personal_part_bytes'] / 1024:.0f} KB each")  # type: ignore[index]
    fb = results["feedback"]
    print(f"feedback of a {fb['messages']}-message Junk Maildir, one process: {fb['seconds_median']:.2f} s (median of 3)")  # type: ignore[index]
    print(f"load average at the start: {results['load_average_at_start'][0]:.1f}, at the end: "  # type: ignore[index]
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("\ntargets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
