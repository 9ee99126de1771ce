"""`spamtl web` on a big store: how long a page of 50 verdicts takes with a million classified messages.

    .venv/bin/python benchmarks/bench_web.py [--store /tmp/spamtl-bench-web/store.sqlite3]
        [--classifications 1000000] [--users 100] [--heavy 100000] [--postgres URL]

The store (built once, kept at ``--store`` so a rerun skips building; ``--rebuild`` builds it again):

- a real model: ``--trained`` Enron-Spam users (enron1, enron2, ...) import ``--train-per-class`` real
  messages of each class with ``spamtl import`` and ``spamtl train`` fits the multi-task model;
- the classification log, written directly with SQL (executemany in big transactions):
  ``--classifications`` messages, one verdict each, over ``--users`` users and ``--days`` days, so a
  typical user (enron1) has about 10,000 verdicts and one heavy user (enron2) ``--heavy``.  The rows
  look as retention leaves them: sha256, Message-ID, size, dates and a real Enron subject, ``raw``
  NULL; a verdict's probability and class as the default cutoffs give them; 0.5 % of the verdicts
  later corrected or confirmed by a feedback label;
- the newest verdicts of the typical and the heavy user come from ``spamtl classify`` on real held-out
  Enron mail (bodies kept), so the message page and the review queue have real mail to show.

Then ``spamtl web`` runs on a loopback port as a user would have it, and the script times, client-side,
each page (``--runs`` requests after ``--warmup``, keep-alive off: a new connection per request, and on:
one connection): /mail for the typical and the heavy user, a deep page (the ``Older`` link followed
``--deep`` times), the heavy user's oldest page, a message page, /review, /admin; with the server
process's CPU per request (utime + stime from /proc/PID/stat).  Baselines measured in the same run: the
same /mail page's bytes served by a bare Starlette app under uvicorn (the HTTP stack's floor on this
machine) and ``spamtl history USER -n 50 --format json`` as a fresh process (the same verdicts from the
command line).

``--postgres URL`` (from ``tests/pgserver.py start``) builds the same store there and measures it too.
``--breakdown`` also times the parts of the /mail page in-process (service calls and the template) and
keeps a cProfile of it.

Writes benchmarks/results/web.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CORPUS = Path(os.environ.get("SPAMTL_CORPORA", HERE.parents[1] / "shared" / "corpora")) / "enron-spam"
PY = sys.executable
CHUNK = 50_000
"""Rows per executemany (and per transaction) when writing the log."""
FEEDBACK_SHARE = 0.005
"""Share of verdicts a user later labelled through feedback."""
LIVE_PER_CLASS = 150
"""Held-out real messages of each class classified with `spamtl classify` for the measured users."""
START_SECONDS = 60.0
PAGE_TARGET_MS = 200.0


def spamtl(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One `spamtl` command as a fresh process on the store ``db``."""
    result = subprocess.run([PY, "-m", "spamtl", *args, "--db", db], capture_output=True, text=True,
                            cwd=HERE.parent)
    if check and result.returncode != 0:
        raise SystemExit(f"spamtl {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    return result


def read_mbox(path: Path, limit: int) -> list[bytes]:
    from spamtl.mail.sources import RawMail, iter_mail

    out = []
    for item in iter_mail([str(path)]):
        if isinstance(item, RawMail):
            out.append(item.raw)
            if len(out) >= limit:
                break
    return out


def write_mbox(path: Path, raws: list[bytes]) -> Path:
    with path.open("wb") as fh:
        for raw in raws:
            fh.write(b"From bench@example.org  Thu Jan  1 00:00:00 2004\n" + raw.rstrip(b"\n") + b"\n\n")
    return path


def subjects(limit: int = 4000) -> list[str]:
    """Real subjects (Enron-Spam, both classes) for the synthetic log's rows, cut as the store cuts them."""
    from spamtl.mail.parse import parse_message

    out = []
    for box in sorted(CORPUS.glob("enron*/*.mbox")):
        out += [parse_message(raw).subject[:255] for raw in read_mbox(box, limit // 12)]
    return [s for s in out if s] or ["(no subject)"]


# ------------------------------------------------------------------------------------------ the store
def user_names(n_users: int, trained: int) -> list[str]:
    """enron1..enron<trained> (real mail, personal weights), then bench-NNN (the log only)."""
    return [f"enron{i + 1}" for i in range(trained)] + [f"bench-{i:03d}" for i in range(trained, n_users)]


def verdict_counts(total: int, n_users: int, heavy: int) -> list[int]:
    """Verdicts per user: the second user (the heavy one) gets ``heavy``, the others share the rest equally."""
    rest, others = total - heavy, n_users - 1
    counts = [rest // others] * others
    counts[-1] += rest - sum(counts)
    return [counts[0], heavy, *counts[1:]]


def train_real(db: str, names: list[str], per_class: int, tmp: Path) -> dict[str, Path]:
    """Import real mail for the trained users, `spamtl train`; returns each user's held-out mbox."""
    live = {}
    for i, name in enumerate(names):
        folder = CORPUS / f"enron{i % 6 + 1}"
        held = []
        for label in ("ham", "spam"):
            raws = read_mbox(folder / f"{label}.mbox", per_class + LIVE_PER_CLASS)
            box = write_mbox(tmp / f"{name}-{label}.mbox", raws[:per_class])
            spamtl("import", name, str(box), "--label", label, db=db)
            held += raws[per_class:]
        live[name] = write_mbox(tmp / f"{name}-live.mbox", held)
    print("  trained users imported; training ...", file=sys.stderr, flush=True)
    spamtl("train", db=db)
    return live


def write_log(engine: Any, names: list[str], counts: list[int], days: int, end: datetime, seed: int) -> None:
    """The users and their classification log (messages, verdicts, feedback labels) with executemany."""
    from sqlalchemy import func, insert, select

    from spamtl.settings import Settings
    from spamtl.store.schema import Classification, Label, Message, ModelVersion, User

    rng = np.random.default_rng(seed)
    pool = subjects()
    cutoffs = Settings(database_url=str(engine.url))
    with engine.begin() as conn:
        known = set(conn.scalars(select(User.name)))
        conn.execute(insert(User), [{"name": n, "created_at": end - timedelta(days=days + 1)}
                                    for n in names if n not in known])
        ids = dict(conn.execute(select(User.name, User.id)).all())
        version = conn.scalar(select(ModelVersion.id).where(ModelVersion.status == "active"))
        first_pk = (conn.scalar(select(func.max(Message.id))) or 0) + 1
    owner = np.repeat(np.array([ids[n] for n in names]), counts)
    ages = rng.uniform(0, days * 86400.0, size=len(owner))
    order = np.argsort(-ages)  # oldest first: ids grow with time, as when mail arrives
    owner, ages = owner[order], ages[order]
    for start in range(0, len(owner), CHUNK):
        stop = min(start + CHUNK, len(owner))
        rows = _log_rows(rng, pool, cutoffs, version, end, first_pk + start, owner[start:stop], ages[start:stop])
        with engine.begin() as conn:
            conn.execute(insert(Message), rows[0])
            conn.execute(insert(Classification), rows[1])
            if rows[2]:
                conn.execute(insert(Label), rows[2])
        print(f"  log: {stop:,} / {len(owner):,}", file=sys.stderr, flush=True)
    if engine.dialect.name == "postgresql":  # explicit ids above: move the sequence past them
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages))")


def _log_rows(rng: np.random.Generator, pool: list[str], cutoffs: Any, version: int | None, end: datetime,
              first_pk: int, owner: np.ndarray, ages: np.ndarray) -> tuple[list[dict], list[dict], list[dict]]:
    """One chunk of messages, their verdicts and the few feedback labels."""
    n = len(owner)
    kind = rng.choice(3, size=n, p=[0.40, 0.55, 0.05])  # 0 spam, 1 ham, 2 in between
    prob = np.where(kind == 0, rng.uniform(cutoffs.spam_cutoff, 1.0, n),
                    np.where(kind == 1, rng.uniform(0.0, cutoffs.ham_cutoff * 0.2, n),
                             rng.uniform(cutoffs.ham_cutoff, cutoffs.spam_cutoff, n)))
    sizes = rng.integers(1_500, 60_000, n)
    subject_at = rng.integers(0, len(pool), n)
    labelled = rng.random(n) < FEEDBACK_SHARE
    later = rng.uniform(600, 3 * 86400, n)
    messages, verdicts, labels = [], [], []
    for i in range(n):
        pk = first_pk + i
        at = end - timedelta(seconds=float(ages[i]))
        p = float(prob[i])
        verdict = "spam" if p >= cutoffs.spam_cutoff else "ham" if p <= cutoffs.ham_cutoff else "unsure"
        messages.append({"id": pk, "sha256": hashlib.sha256(b"bench-web %d" % pk).hexdigest(),
                         "message_id": f"<bench.{pk}@mail.example.org>", "raw": None, "size": int(sizes[i]),
                         "date": at - timedelta(seconds=90), "received_at": at - timedelta(seconds=2),
                         "subject": pool[subject_at[i]]})
        verdicts.append({"user_id": int(owner[i]), "message_id": pk, "probability": p, "verdict": verdict,
                         "model_version_id": version, "created_at": at})
        if labelled[i] and float(ages[i]) > later[i]:
            label = ("ham" if verdict == "spam" else "spam") if rng.random() < 0.3 else \
                ("spam" if verdict == "spam" else "ham")
            labels.append({"user_id": int(owner[i]), "message_id": pk, "label": label, "source": "feedback",
                           "created_at": at + timedelta(seconds=float(later[i]))})
    return messages, verdicts, labels


def store_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from spamtl.store.schema import Classification, Label, Message, User

    with engine.connect() as conn:
        return {name: int(conn.scalar(select(func.count()).select_from(table)) or 0)
                for name, table in (("users", User), ("messages", Message), ("classifications", Classification),
                                    ("labels", Label))}


def build(db: str, args: argparse.Namespace) -> dict[str, Any]:
    """The store at ``db`` (built unless it already holds the log asked for); what it holds."""
    from spamtl.store.engine import make_engine

    names = user_names(args.users, args.trained)
    spamtl("init", db=db)
    engine = make_engine(db)
    counts = store_counts(engine)
    if counts["classifications"] >= args.classifications and counts["users"] >= args.users:
        print(f"store {redacted(db)}: already built {counts}", file=sys.stderr)
        return {**counts, "build_seconds": None}
    if counts["messages"]:
        raise SystemExit(f"{redacted(db)} holds a store that is not this benchmark's; use --rebuild or another --store")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spamtl-bench-web-") as tmp:
        live = train_real(db, names[:args.trained], args.train_per_class, Path(tmp))
        trained_at = time.perf_counter()
        if engine.dialect.name == "sqlite":
            _fast_sqlite(engine)
        write_log(engine, names, verdict_counts(args.classifications, args.users, args.heavy), args.days,
                  datetime.now() - timedelta(hours=1), args.seed)
        log_at = time.perf_counter()
        for name in names[:2]:  # the typical and the heavy user get the newest, real verdicts
            spamtl("classify", name, str(live[name]), "--format", "json", db=db)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    counts = store_counts(engine)
    counts["build_seconds"] = {"import_and_train": round(trained_at - start, 1),
                               "log": round(log_at - trained_at, 1),
                               "classify": round(time.perf_counter() - log_at, 1)}
    print(f"built {redacted(db)}: {counts}", file=sys.stderr)
    return counts


def _fast_sqlite(engine: Any) -> None:
    """Building only: no fsync per transaction and a big page cache for the random sha256 index inserts."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-1000000")  # KiB
        cursor.close()

    engine.dispose()


def redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


# ------------------------------------------------------------------------------------------ measuring
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """A server process on ``port``; returns once it answers."""
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=HERE.parent)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{argv[2:4]} exited {proc.returncode}: {log.read_text()[-1000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{argv[2:4]} did not listen within {START_SECONDS:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(conn: http.client.HTTPConnection, path: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Cookie": f"spamtl_token={token}"} if token else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def timed(port: int, path: str, token: str | None, *, runs: int, warmup: int, keep_alive: bool,
          pid: int) -> dict[str, Any]:
    """Client-side wall time of ``runs`` GETs of ``path`` (after ``warmup``), and the server's CPU."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    walls, size = [], 0
    for i in range(warmup + runs):
        if i == warmup:
            cpu0 = cpu_seconds(pid)
        if not keep_alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.perf_counter()
        status, body = get(conn, path, token)
        walls.append(time.perf_counter() - t0)
        if not keep_alive:
            conn.close()
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {body[:300]!r}")
        size = len(body)
    cpu = cpu_seconds(pid) - cpu0
    conn.close()
    ms = sorted(1000 * w for w in walls[warmup:])
    return {"median_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 0.95), 1),
            "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1), "server_cpu_ms": round(1000 * cpu / runs, 1),
            "bytes": size, "runs": runs}


def pct(sorted_values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted values."""
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values))) - 1))]


def tokens(db: str, names: list[str]) -> dict[str, str]:
    out = {name: spamtl("users", "token", name, db=db).stdout.strip() for name in names}
    out["root"] = spamtl("users", "token", "root", "--admin", db=db).stdout.strip()
    return out


def deep_cursor(port: int, token: str, pages: int) -> tuple[str, int]:
    """The ``Older`` link after ``pages`` pages of /mail (followed as a user would), and how many were walked."""
    path = "/mail"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for walked in range(pages):
        status, body = get(conn, path, token)
        found = re.search(rb'id="older" href="([^"]+)"', body)
        if status != 200 or not found:
            return path, walked
        path = found.group(1).decode().replace("&amp;", "&")
    conn.close()
    return path, pages


def oldest_page(db: str, user: str) -> str:
    """The /mail path of ``user``'s last page (their 50 oldest verdicts), its cursor read from the store."""
    from sqlalchemy import select

    from spamtl.store.engine import make_engine
    from spamtl.store.schema import Classification, User

    with make_engine(db).connect() as conn:
        row = conn.execute(select(Classification.created_at, Classification.id).join(User)
                           .where(User.name == user)
                           .order_by(Classification.created_at, Classification.id).offset(50).limit(1)).one()
    return f"/mail?before={row.created_at.isoformat()}_{row.id}"


def first_message(port: int, token: str) -> str:
    _, body = get(http.client.HTTPConnection("127.0.0.1", port, timeout=120), "/mail", token)
    found = re.search(rb'href="(/mail/[0-9a-f]{64})"', body)
    if not found:
        raise SystemExit("the /mail page links no message")
    return found.group(1).decode()


def floor_server(page: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A bare Starlette app under uvicorn answering GET /mail with ``page``'s bytes (the HTTP stack alone)."""
    code = ("import sys, uvicorn\n"
            "from starlette.applications import Starlette\n"
            "from starlette.responses import HTMLResponse\n"
            "from starlette.routing import Route\n"
            "body = open(sys.argv[1], 'rb').read()\n"
            "async def page(request):\n"
            "    return HTMLResponse(body)\n"
            "uvicorn.run(Starlette(routes=[Route('/mail', page)]), host='127.0.0.1', port=int(sys.argv[2]),\n"
            "            log_level='warning', access_log=False)\n")
    return start([PY, "-c", code, str(page), str(port)], port, log)


def cli_history(db: str, user: str, runs: int) -> dict[str, Any]:
    """`spamtl history USER -n 50 --format json` as a fresh process: median and p95 wall time."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        spamtl("history", user, "-n", "50", "--format", "json", db=db)
        walls.append(1000 * (time.perf_counter() - t0))
    walls.sort()
    return {"median_ms": round(statistics.median(walls), 1), "p95_ms": round(pct(walls, 0.95), 1), "runs": runs}


def web_argv(db: str, port: int) -> list[str]:
    return [PY, "-m", "spamtl", "web", "--listen", f"127.0.0.1:{port}", "--db", db]


def measure(db: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every page (keep-alive off and on) and the baselines, on a `spamtl web` over ``db``."""
    typical, heavy = user_names(args.users, args.trained)[:2]
    keys = tokens(db, [typical, heavy])
    port = free_port()
    web = start(web_argv(db, port), port, tmp / "web.log")
    try:
        deep, walked = deep_cursor(port, keys[heavy], args.deep)
        typical_deep, typical_walked = deep_cursor(port, keys[typical], args.deep)
        pages = {"mail_typical": ("/mail", typical), "mail_heavy": ("/mail", heavy),
                 f"mail_heavy_page{walked + 1}": (deep, heavy),
                 f"mail_typical_page{typical_walked + 1}": (typical_deep, typical),
                 "mail_heavy_oldest": (oldest_page(db, heavy), heavy),
                 "message": (first_message(port, keys[typical]), typical),
                 "review_typical": ("/review", typical), "review_heavy": ("/review", heavy),
                 "admin": ("/admin", "root")}
        out: dict[str, Any] = {"paths": {name: path for name, (path, _) in pages.items()}}
        for keep_alive in (False, True):
            out["keep_alive" if keep_alive else "new_connection"] = time_pages(port, web.pid, pages, keys, args,
                                                                               keep_alive)
        page = tmp / "mail.html"
        page.write_bytes(get(http.client.HTTPConnection("127.0.0.1", port, timeout=120), "/mail", keys[typical])[1])
    finally:
        stop(web)
    floor_port = free_port()
    floor = floor_server(page, floor_port, tmp / "floor.log")
    try:
        out["floor_static_page"] = {("keep_alive" if ka else "new_connection"): timed(
            floor_port, "/mail", None, runs=args.runs, warmup=args.warmup, keep_alive=ka, pid=floor.pid)
            for ka in (False, True)}
    finally:
        stop(floor)
    out["cli_history_n50"] = cli_history(db, typical, max(3, args.runs // 6))
    if args.breakdown:
        out["breakdown"] = breakdown(db, typical, heavy, keys, args.runs)
    return out


def time_pages(port: int, pid: int, pages: dict[str, tuple[str, str]], keys: dict[str, str],
               args: argparse.Namespace, keep_alive: bool) -> dict[str, Any]:
    """:func:`timed` for each page: ``--runs`` requests for the /mail pages, a quarter as many for the others."""
    figures = {}
    for name, (path, who) in pages.items():
        runs = args.runs if name.startswith("mail") else max(5, args.runs // 4)
        figures[name] = timed(port, path, keys[who], runs=runs, warmup=args.warmup, keep_alive=keep_alive, pid=pid)
        print(f"  {'keep-alive' if keep_alive else 'new connection'} {name}: {figures[name]}", file=sys.stderr,
              flush=True)
    return figures


def _median_ms(fn: Any, runs: int) -> float:
    fn()
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        walls.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(walls), 2)


def breakdown(db: str, typical: str, heavy: str, keys: dict[str, str], runs: int) -> dict[str, Any]:
    """In-process medians of the steps of GET /mail (the view as the server runs it, and its parts),
    and the top functions of a cProfile of the whole view for the heavy user."""
    import cProfile
    import io
    import pstats

    from starlette.requests import Request

    from spamtl.services.access import Principal, token_holder
    from spamtl.services.cutoffs import list_cutoffs
    from spamtl.services.history import history
    from spamtl.settings import Settings
    from spamtl.store.engine import make_engine
    from spamtl.web import app as webapp

    settings, engine = Settings(database_url=db), make_engine(db)
    web = webapp.Web(settings, engine)

    def request(who: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/mail", "query_string": b"",
                        "headers": [(b"cookie", f"spamtl_token={keys[who]}".encode())]})

    view = webapp.verdicts.__wrapped__  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for label, who in (("typical", typical), ("heavy", heavy)):
        entries = history(engine, user=who, limit=50, counts=False).entries
        cut = list_cutoffs(engine, settings, [who])[0]
        out[label] = {
            "view_ms": _median_ms(lambda: webapp._answer(web, view, request(who), None, False), runs),
            "login_token_holder_ms": _median_ms(lambda: token_holder(engine, keys[who], now=datetime.now()), runs),
            "history_50_ms": _median_ms(lambda: history(engine, user=who, limit=50, counts=False), runs),
            "list_cutoffs_ms": _median_ms(lambda: list_cutoffs(engine, settings, [who]), runs),
            "render_ms": _median_ms(lambda: web.render(request(who), Principal(who), "verdicts.html", entries=entries,
                                                       cutoffs=cut, next_page="x"), runs)}
        print(f"  breakdown {label}: {out[label]}", file=sys.stderr, flush=True)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(runs):
        webapp._answer(web, view, request(heavy), None, False)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
    out["profile_heavy_top25_cumulative"] = text.getvalue().splitlines()
    return out


def explain(db: str, user: str, page: str) -> list[str]:
    """The query plans of the /mail page's statements for the first page and for ``page`` (a /mail?before=
    path); SQLite: EXPLAIN QUERY PLAN, PostgreSQL: EXPLAIN ANALYZE."""
    from urllib.parse import parse_qs, urlsplit

    from sqlalchemy import event, select
    from sqlalchemy.orm import Session

    from spamtl.store import queries
    from spamtl.store.engine import make_engine
    from spamtl.store.schema import User

    engine = make_engine(db)
    captured: list[tuple[str, Any]] = []
    with engine.connect() as conn:
        user_id = conn.scalar(select(User.id).where(User.name == user))

    @event.listens_for(engine, "before_cursor_execute")
    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        captured.append((statement, parameters))

    at, _, pk = parse_qs(urlsplit(page).query)["before"][0].rpartition("_")
    with Session(engine) as session:
        for before in (None, (datetime.fromisoformat(at), int(pk))):
            rows = queries.recent_classifications(session=session, user_id=user_id, since=None, limit=50,
                                                  before=before)
        queries.labels_of(session=session, user_id=user_id, message_pks=[r.message_id for r in rows])
    event.remove(engine, "before_cursor_execute", keep)
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    plans = []
    with engine.connect() as conn:
        for statement, parameters in captured:
            plans.append(statement.replace("\n", " "))
            plans += ["  " + " ".join(str(c) for c in row)
                      for row in conn.exec_driver_sql(prefix + statement, parameters).all()]
    return plans


# ------------------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_1min": round(os.getloadavg()[0], 2)}


def table(name: str, figures: dict[str, Any]) -> str:
    lines = [f"{name}: ms per request, client-side (median / p95), server CPU ms per request",
             f"  {'page':<26} {'new connection':>16} {'keep-alive':>16} {'server CPU':>11} {'bytes':>8}"]
    rows = dict(figures["new_connection"])
    rows["floor: static page"] = figures["floor_static_page"]["new_connection"]
    alive = dict(figures["keep_alive"])
    alive["floor: static page"] = figures["floor_static_page"]["keep_alive"]
    for page, cold in rows.items():
        warm = alive[page]
        lines.append(f"  {page:<26} {cold['median_ms']:>7.1f} / {cold['p95_ms']:>6.1f} "
                     f"{warm['median_ms']:>7.1f} / {warm['p95_ms']:>6.1f} {warm['server_cpu_ms']:>11.1f} "
                     f"{warm['bytes']:>8}")
    cli = figures["cli_history_n50"]
    lines.append(f"  {'cli: history -n 50':<26} {cli['median_ms']:>7.1f} / {cli['p95_ms']:>6.1f}   (a fresh process)")
    return "\n".join(lines)


def run_backend(name: str, db: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{name}: building or checking the store at {redacted(db)}", file=sys.stderr, flush=True)
    store = build(db, args)
    with tempfile.TemporaryDirectory(prefix="spamtl-bench-web-") as tmp:
        figures = measure(db, args, Path(tmp))
    deep = next(path for name, path in figures["paths"].items() if name.startswith("mail_heavy_page"))
    plans = explain(db, user_names(args.users, args.trained)[1], deep)
    print(table(name, figures))
    heavy = figures["keep_alive"]["mail_heavy"]["median_ms"]
    typical = figures["keep_alive"]["mail_typical"]["median_ms"]
    print(f"  target: a page of 50 verdicts under {PAGE_TARGET_MS:.0f} ms: typical {typical} ms, heavy {heavy} ms")
    return {"store": store, "figures": figures, "heavy_user_query_plans": plans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="/tmp/spamtl-bench-web/store.sqlite3",
                        help="SQLite file of the store, built once and reused")
    parser.add_argument("--rebuild", action="store_true", help="delete the SQLite store and build it again")
    parser.add_argument("--postgres", metavar="URL", help="also build and measure on this (empty) PostgreSQL database")
    parser.add_argument("--no-sqlite", action="store_true", help="measure only --postgres")
    parser.add_argument("--classifications", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--heavy", type=int, default=100_000, help="verdicts of the heavy user (enron2)")
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--trained", type=int, default=4, help="users with real mail and a personal model")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=40, help="timed requests per /mail page (a quarter for others)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--deep", type=int, default=50, help="pages walked for the deep page")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of /mail in-process")
    parser.add_argument("--out", default=str(HERE / "results" / "web.json"))
    args = parser.parse_args()
    if args.users < max(3, args.trained) or args.trained < 2 or args.heavy >= args.classifications:
        parser.error("need --users >= 3 and >= --trained >= 2, and --heavy < --classifications")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or None
    result: dict[str, Any] = {"benchmark": "web", "command": " ".join(["python", *sys.argv]), "commit": commit,
                              "when": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                              "target_ms": PAGE_TARGET_MS, "backends": {}}
    store = Path(args.store).expanduser().resolve()
    if args.rebuild:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_sqlite:
        result["backends"]["sqlite"] = run_backend("sqlite", f"sqlite:///{store}", args)
    if args.postgres:
        result["backends"]["postgresql"] = run_backend("postgresql", args.postgres, args)
    result["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
