"""Record every number a fixed trained store gives on fixed real mail, through the public CLI only.

A "nothing lost" check for refactors.  Build mode makes a fresh store from ../shared/corpora:
enron1-3 of Enron-Spam (group "enron") and "sa" (SpamAssassin easy_ham + hard_ham / spam, full
headers, no group); per user and label the first 150 messages in file order are imported, the next
40 held out (WORKDIR/heldout, the same bytes every run).  Then: train; models/users/cutoffs;
classify every held-out message (one call per user, 6 decimals) and explain each (full precision;
top tokens for the first 5 per label); feedback two held-out messages of "sa" (one each way: the
refit path); classify all again and explain "sa" again.  Keys are "<user>/<label>/<index>".
Left out: timestamps, durations, free text (cutoff sources, notes), the short "id".

  build:      record_scores.py --python .venv/bin/python --out benchmarks/results/scores_after.json
  score-only: record_scores.py --score-only sqlite:////path/to/trained-store.sqlite3 --out s.json
              (classify/explain the held-out mail with a copy of that store, after `init` on the copy)
  compare:    record_scores.py --compare before.json after.json [--tol 1e-9]
              max abs difference per field; exit 1 if a number differs beyond tol, a string differs,
              or a record/field of the first file is missing from the second (extra fields are listed)

Old code: --pythonpath DIR with DIR/spamtl laid out as installed (migrations/ as spamtl/migrations);
from a bare checkout spamtl.migrations would come from the venv's editable install (refused).
Children run in the workdir (not a checkout: `python -m` puts the cwd ahead of PYTHONPATH) with a
config file holding only seed = 0, no SPAMTL_* variables, one BLAS thread and PYTHONHASHSEED=0.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import mailbox
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
N_TRAIN, N_HELD, N_TOKENS_SHOWN, TOP = 150, 40, 5, 5
# user: (group, {label: [(mbox under CORPORA, training messages, held-out messages)]}), in file order
USERS = {u: ("enron", {lab: [(f"enron-spam/{u}/{lab}.mbox", N_TRAIN, N_HELD)] for lab in ("ham", "spam")})
         for u in ("enron1", "enron2", "enron3")}
USERS["sa"] = (None, {"ham": [("spamassassin/easy_ham.mbox", 100, 25), ("spamassassin/hard_ham.mbox", 50, 15)],
                      "spam": [("spamassassin/spam.mbox", N_TRAIN, N_HELD)]})
FEEDBACK_USER, FEEDBACK = "sa", [("sa/ham/000", "--spam"), ("sa/spam/000", "--ham")]  # one each way
DROP = {"seconds", "searched_at", "created_at", "activated_at", "classified_at", "labelled_at", "source",
        "cutoff_source", "notes", "note", "id"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
MISSING = object()
PIN_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


class Cli:
    """`python -m spamtl` in the workdir, with a pinned environment."""

    def __init__(self, python: str, pythonpath: str | None, workdir: Path) -> None:
        self.python, self.workdir = python, workdir
        (workdir / "config.toml").write_text("seed = 0\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPAMTL_")}
        self.env.update(PIN_ENV, SPAMTL_CONFIG=str(workdir / "config.toml"))
        if pythonpath:
            self.env["PYTHONPATH"] = pythonpath
        code = "import importlib.util as u; print(*(u.find_spec(m).origin for m in ['spamtl', 'spamtl.migrations']))"
        self.modules = subprocess.run([python, "-c", code], cwd=workdir, env=self.env, check=True,
                                      capture_output=True, text=True).stdout.split()
        self.version = self("--version").strip()
        if pythonpath and any(not m.startswith(str(Path(pythonpath).resolve()) + os.sep) for m in self.modules):
            sys.exit(f"{self.modules}: not all under --pythonpath {pythonpath}; see --help")

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([self.python, "-m", "spamtl", *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"spamtl {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
        return proc.stdout

    def json(self, *args: str) -> object:
        return clean(json.loads(self(*args, "--format", "json")))

    def lines(self, *args: str) -> list[dict]:
        return [clean(json.loads(line)) for line in self(*args, "--format", "json").splitlines() if line.strip()]


def clean(obj: object) -> object:
    """Drop timestamps, durations and free text; keep numbers, verdicts, digests and token names."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()
                if k not in DROP and not (isinstance(v, str) and TIMESTAMP.match(v))}
    return [clean(v) for v in obj] if isinstance(obj, list) else obj


def write_mail(workdir: Path, corpora: Path) -> dict[str, Path]:
    """WORKDIR/train/USER/LABEL/*.eml and the held-out files by key: the same bytes every run."""
    held: dict[str, Path] = {}
    for user, (_group, labels) in USERS.items():
        for label, sources in labels.items():
            tdir, hdir, held_raws = workdir / "train" / user / label, workdir / "heldout" / user / label, []
            for folder in (tdir, hdir):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            for rel, n_train, n_held in sources:
                box = mailbox.mbox(corpora / rel, create=False)
                raws = [box.get_bytes(key) for _, key in zip(range(n_train + n_held), box.iterkeys())]
                box.close()
                for i, raw in enumerate(raws[:n_train]):
                    (tdir / f"{Path(rel).stem}-{i:04d}.eml").write_bytes(raw)
                held_raws += raws[n_train:]
            for j, raw in enumerate(held_raws):
                held[f"{user}/{label}/{j:03d}"] = hdir / f"{j:03d}.eml"
                held[f"{user}/{label}/{j:03d}"].write_bytes(raw)
    return held


def norm_explain(d: dict) -> dict:
    """Parts keyed by kind, tokens keyed by name (ties may come in any order)."""
    out = {k: v for k, v in d.items() if k != "parts"}
    for part in d.get("parts", []):
        rec = {k: v for k, v in part.items() if k not in ("kind", "toward_spam", "toward_ham")}
        for side in ("toward_spam", "toward_ham"):
            rec[side] = {t["name"]: {k: v for k, v in t.items() if k != "name"} for t in part.get(side, [])}
        out[f"part:{part['kind']}"] = rec
    return out


def score(cli: Cli, db: str, held: dict[str, Path], explain_users: list[str], prefix: str = "") -> dict[str, dict]:
    """classify (one call per user) every held-out message; explain (one call each) those of explain_users."""
    messages: dict[str, dict] = {}
    explain: dict[str, dict] = {}
    for user in USERS:
        keys = [k for k in held if k.startswith(user + "/")]
        lines = cli.lines("classify", user, *(str(held[k]) for k in keys), "--db", db)
        if len(lines) != len(keys):
            sys.exit(f"classify {user}: {len(lines)} results for {len(keys)} messages")
        messages.update(zip(keys, lines))
        for key in keys if user in explain_users else []:
            top = TOP if int(key.rsplit("/", 1)[1]) < N_TOKENS_SHOWN else 0
            explain[key] = norm_explain(cli.json("explain", user, str(held[key]), "-n", str(top), "--db", db))
            if explain[key].get("sha256") != messages[key].get("sha256"):
                sys.exit(f"{key}: classify and explain disagree on the message (output order?)")
    return {prefix + "messages": messages, prefix + "explain": explain}


def listing(cli: Cli, db: str, prefix: str = "") -> dict[str, dict]:
    return {prefix + "models": {f"v{m['version']}": m for m in cli.json("models", "--db", db)},
            prefix + "users": {u["user"]: u for u in cli.json("users", "--db", db)},
            prefix + "cutoffs": {c["user"]: c for c in cli.json("cutoffs", "--db", db)}}


def build(cli: Cli, held: dict[str, Path]) -> dict:
    (cli.workdir / "store.sqlite3").unlink(missing_ok=True)
    db = f"sqlite:///{cli.workdir / 'store.sqlite3'}"
    cli("init", "--db", db)
    out: dict = {"import": {f"{user}/{label}": cli.json(
        "import", user, str(cli.workdir / "train" / user / label), "--label", label,
        *(["--group", group] if group else []), "--db", db) for user, (group, labels) in USERS.items() for label in labels}}
    out["train"] = {"train": cli.json("train", "--db", db)}
    out.update(listing(cli, db))
    out.update(score(cli, db, held, list(USERS)))
    out["feedback"] = {key: cli.json("feedback", FEEDBACK_USER, flag, str(held[key]), "--db", db)
                       for key, flag in FEEDBACK}
    out.update(score(cli, db, held, [FEEDBACK_USER], prefix="after_feedback_"))  # other users must not move
    return {**out, **listing(cli, db, prefix="after_feedback_")}


def score_only(cli: Cli, held: dict[str, Path], url: str) -> dict:
    if not url.startswith("sqlite:///"):
        sys.exit("--score-only takes a sqlite:/// URL (the store is copied, not scored in place)")
    shutil.copy2(url[len("sqlite:///"):], cli.workdir / "scored.sqlite3")
    db = f"sqlite:///{cli.workdir / 'scored.sqlite3'}"
    cli("init", "--db", db)  # the upgrade a new schema would need; a no-op otherwise
    return {**listing(cli, db), **score(cli, db, held, list(USERS))}


def flatten(obj: object, path: tuple = ()) -> dict[tuple, object]:
    if isinstance(obj, dict):
        return {p: v for k, sub in obj.items() for p, v in flatten(sub, (*path, str(k))).items()}
    if isinstance(obj, list):
        return {p: v for i, sub in enumerate(obj) for p, v in flatten(sub, (*path, str(i))).items()}
    return {path: obj}


def pattern(path: tuple) -> str:
    """section.*.field, with token names as * too: the unit the differences are reported by."""
    parts = ["*" if i == 1 or path[i - 1] in ("toward_spam", "toward_ham") else c for i, c in enumerate(path)]
    return ".".join(parts)


def compare(a_file: str, b_file: str, tol: float, ignore: list[str]) -> int:
    a, b = (json.loads(Path(f).read_text()) for f in (a_file, b_file))
    fa, fb = ({p: v for p, v in flatten(x).items() if p[0] not in ("command", "meta")} for x in (a, b))
    stats: dict[str, list] = {}  # pattern: [values, max abs diff, strings differing, missing in b]
    for path, va in fa.items():
        if any(fnmatch.fnmatch(pattern(path), g) for g in ignore):
            continue
        st, vb = stats.setdefault(pattern(path), [0, 0.0, 0, 0]), fb.get(path, MISSING)
        st[0] += 1
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb)):
            st[1] = max(st[1], abs(va - vb))
        else:
            st[3 if vb is MISSING else 2] += va != vb
    print(f"{'field':60} {'values':>7} {'max abs diff':>13} {'strings':>7} {'missing':>7}")
    bad = 0
    for pat, (n, diff, strings, missing) in sorted(stats.items()):
        bad += bool(diff > tol or strings or missing)
        flag = "  <-- DIFFERS" if diff > tol or strings or missing else ""
        print(f"{pat:60} {n:7d} {diff:13.3g} {strings:7d} {missing:7d}{flag}")
    have = {q[:2] for q in fb}
    if gone := sorted({"/".join(p[:2]) for p in fa if p[:2] not in have}):
        print(f"records missing from {b_file}: {len(gone)}, e.g. {gone[:10]}")
    for pat in sorted({pattern(p) for p in fb if p not in fa}):
        print(f"only in {b_file}: {pat}")
    print(f"records in {a_file}: {({k: len(v) for k, v in a.items() if k not in ('command', 'meta')})}")
    print(f"{bad} field(s) differ beyond tol={tol:g}" if bad else f"OK: every value of {a_file} within {tol:g}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter that has spamtl (default: this one)")
    ap.add_argument("--pythonpath", help="PYTHONPATH for the children: the old code (see above)")
    ap.add_argument("--out", help="result JSON to write (build and --score-only)")
    ap.add_argument("--workdir", help="where the store and mail files go (default: a temporary dir, removed)")
    ap.add_argument("--corpora", default=str(CORPORA), help="default: %(default)s")
    ap.add_argument("--score-only", metavar="STORE_URL", help="only score the held-out mail with a copy of this store")
    ap.add_argument("--keep-store", metavar="FILE", help="build: copy the final SQLite store here")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two result files")
    ap.add_argument("--tol", type=float, default=1e-9, help="--compare: allowed abs difference (default 1e-9)")
    ap.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                    help="--compare: skip fields matching GLOB (e.g. 'explain.*.notes'); repeatable")
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare, args.tol, args.ignore)
    if not args.out:
        ap.error("--out is required unless --compare")
    started = time.monotonic()
    with contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory() as where:
        (workdir := Path(where).resolve()).mkdir(parents=True, exist_ok=True)
        cli = Cli(args.python, args.pythonpath, workdir)
        print(f"spamtl: {' '.join(cli.modules)} ({cli.version}); workdir {workdir}", file=sys.stderr)
        held = write_mail(workdir, Path(args.corpora))
        data = score_only(cli, held, args.score_only) if args.score_only else build(cli, held)
        if args.keep_store and not args.score_only:
            shutil.copy2(workdir / "store.sqlite3", args.keep_store)
    meta = {"spamtl_modules": cli.modules, "version": cli.version, "python": args.python,
            "pythonpath": args.pythonpath, "pinned_env": PIN_ENV, "seconds": round(time.monotonic() - started, 1),
            "counts": {k: len(v) for k, v in data.items()}}
    result = {"command": " ".join(sys.argv), "meta": meta, **data}
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {meta['counts']} in {meta['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
