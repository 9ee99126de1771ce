"""Peer comparison end to end by label budget: spamtl (as a user runs it) against bogofilter, same mail.

The regime every new user starts in: few labels.  For each seed and each label budget n (labels per user),
all users of the chosen sets are imported into ONE spamtl store (it is multi-task: users share) with
`spamtl import USER box -l spam|ham`, then `spamtl train`, then
`spamtl classify USER test.mbox --format json`; bogofilter gets one wordlist per user, registered with
exactly the same training mail, scoring exactly the same test mail.

User sets (``--sets``):

- ``enron``: the six Enron-Spam users (subject and body only).
- ``sa``: two SpamAssassin users with full headers, ``sa1`` (easy_ham + spam) and ``sa2`` (easy_ham_2 +
  spam_2); see benchmarks/_spamassassin.py.
- ``skewed``: three SpamAssassin users whose mail is mostly spam, with 5, 10 and 25 ham among a FIXED
  training set of 200 labels at every budget (n does not apply to them), tested on the rest of their mail:
  at least 175 ham, about 40 % of it hard_ham (commercial and bulk ham), and 150 spam.  All SpamAssassin
  users' messages are disjoint.
- ``demo``: the built-in demo corpus (data/demo, 8 users in 3 groups).

Per seed, 40 % of each enron, sa and demo user's mail is held out (stratified by label); the training labels
at budget n are drawn from the user's other 60 %, stratified by label with at least one of each class
(``all`` = the whole 60 %).  The split and the draw depend on the seed, and each set is split on its own,
so a set's mail is the same whatever other sets run (its figures still depend on them: users share).

Metrics at each system's default cutoffs (spamtl: verdict "spam"; bogofilter: its "S" verdict), per user and
macro per set: 1-AUC %, ham FPR %, spam recall %; and wall time to import and train, and to classify.  The
table gives the mean over seeds, and per budget and set whether issue 27's targets hold: spamtl's ham FPR no
higher than bogofilter's, its spam recall no lower, its 1-AUC at most half of bogofilter's.

    python benchmarks/bench_peer.py                       # n = 20 50 200 all, seeds 0 1, enron sa skewed
    python benchmarks/bench_peer.py --n 20 --seeds 0 --sets skewed   # a quick look, about 1 min
    python benchmarks/bench_peer.py --config ablation.toml --out benchmarks/results/peer_budget_x.json
    python benchmarks/bench_peer.py --pythonpath /path/to/old/checkout --out before.json

``--config FILE`` goes to every spamtl command (its global ``--config``); ``--pythonpath DIR`` runs DIR's
spamtl, here and in every CLI call (as PYTHONPATH=DIR does).  Writes benchmarks/results/peer_budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _use_pythonpath(argv: list[str]) -> None:
    """--pythonpath DIR: import spamtl from DIR in this process and in every CLI call it makes."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--pythonpath", type=Path)
    folder = early.parse_known_args(argv)[0].pythonpath
    if folder is not None:
        folder = folder.resolve()
        sys.path.insert(0, str(folder))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


_use_pythonpath(sys.argv[1:])
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _enron  # noqa: E402
import _spamassassin  # noqa: E402

from spamtl.mail.sources import RawMail, iter_mail  # noqa: E402
from spamtl.metrics import macro_auc_error  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = ("enron", "sa", "skewed", "demo")
SYSTEMS = ("spamtl", "bogofilter")
METRICS = ("auc_error_pct", "ham_fpr_pct", "spam_recall_pct")


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _mbox(path: Path, raws: list[bytes]) -> Path:
    with path.open("wb") as fh:
        for raw in raws:
            fh.write(b"From bench Thu Jan  1 00:00:00 2004\n" + raw.replace(b"\nFrom ", b"\n>From ").rstrip(b"\n")
                     + b"\n\n")
    return path


def load_demo() -> tuple[list[bytes], np.ndarray, np.ndarray, dict[str, str]]:
    folder = HERE.parent / "data" / "demo"
    meta = json.loads((folder / "users.json").read_text())["users"]
    raws, labels, users = [], [], []
    for user in meta:
        for label in ("ham", "spam"):
            for item in iter_mail([folder / user / f"{label}.mbox"]):
                if isinstance(item, RawMail):
                    raws.append(item.raw)
                    labels.append(int(label == "spam"))
                    users.append(user)
    return raws, np.array(labels), np.array(users), {u: m["group"] for u, m in meta.items()}


@dataclass
class Mail:
    """Every chosen set's messages in one list: labels (1 = spam), user, set, and each demo user's group."""

    raws: list[bytes]
    y: np.ndarray
    users: np.ndarray
    sets: np.ndarray
    groups: dict[str, str]


def load_sets(names: list[str], corpora: Path) -> Mail:
    raws: list[bytes] = []
    y, users, sets, groups = [], [], [], {}
    sa = _spamassassin.read_users(corpora) if {"sa", "skewed"} & set(names) else None
    for name in names:
        if name == "enron":
            part = _enron.read_raw(corpora)
        elif name == "demo":
            *part, demo_groups = load_demo()
            groups.update(demo_groups)
        else:
            assert sa is not None
            keep = np.flatnonzero(np.isin(sa[2], list(_spamassassin.SKEWED_HAM)) == (name == "skewed"))
            part = ([sa[0][i] for i in keep], sa[1][keep], sa[2][keep])
        raws += part[0]
        y += list(part[1])
        users += list(part[2])
        sets += [name] * len(part[1])
    return Mail(raws, np.array(y, dtype=int), np.array(users), np.array(sets), groups)


def split(mail: Mail, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per set, the seed's training share and test set (global indices); each set split on its own."""
    out = {}
    for name in dict.fromkeys(mail.sets):
        rows = np.flatnonzero(mail.sets == name)
        split_of = _spamassassin.skewed_split if name == "skewed" else _enron.split
        train, test = split_of(mail.users[rows], mail.y[rows], seed)
        out[name] = (rows[train], rows[test])
    return out


def draw(mail: Mail, splits: dict[str, tuple[np.ndarray, np.ndarray]], n: int | None, seed: int) -> np.ndarray:
    """The training labels at budget n (None = all): n per user from their share; skewed users keep 200."""
    parts = []
    for name, (share, _) in splits.items():
        if name == "skewed" or n is None:
            parts.append(share)
        else:
            parts.append(share[_enron.subsample(np.arange(len(share)), mail.users[share], mail.y[share], n, seed)])
    return np.sort(np.concatenate(parts))


def spamtl_run(tmp: Path, raws, y, users, train, test, groups, config: Path | None = None):  # type: ignore[no-untyped-def]
    """Import, train and classify through the CLI; scores, spam verdicts, train and classify seconds."""
    db = f"sqlite:///{tmp / 'peer.sqlite3'}"
    cli = [sys.executable, "-m", "spamtl", *(["--config", str(config)] if config else [])]

    def run(*args: str) -> str:  # in tmp, so that the working directory never decides which spamtl runs
        done = subprocess.run([*cli, *args, "--db", db], capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            raise SystemExit(f"spamtl {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr.strip()}")
        return done.stdout

    run("init")
    start = time.perf_counter()
    for user in np.unique(users):
        for label, name in ((1, "spam"), (0, "ham")):
            idx = train[(users[train] == user) & (y[train] == label)]
            box = _mbox(tmp / f"train-{user}-{name}.mbox", [raws[i] for i in idx])
            run("import", user, str(box), "-l", name, *(["--group", groups[user]] if groups.get(user) else []))
    run("train")
    train_s = time.perf_counter() - start
    scores, verdicts = np.zeros(len(test)), np.zeros(len(test), dtype=bool)
    start = time.perf_counter()
    for user in np.unique(users[test]):
        pos = np.flatnonzero(users[test] == user)
        box = _mbox(tmp / f"test-{user}.mbox", [raws[test[k]] for k in pos])
        rows = [json.loads(line) for line in run("classify", user, str(box), "--format", "json").splitlines()]
        assert len(rows) == len(pos), f"{user}: {len(rows)} verdicts for {len(pos)} messages"
        scores[pos] = [r["probability"] for r in rows]
        verdicts[pos] = [r["verdict"] == "spam" for r in rows]
    return scores, verdicts, train_s, time.perf_counter() - start


def bogofilter_run(tmp: Path, raws, y, users, train, test):  # type: ignore[no-untyped-def]
    files = tmp / "bogo-test"
    files.mkdir()
    scores, verdicts = np.zeros(len(test)), np.zeros(len(test), dtype=bool)
    train_s = classify_s = 0.0
    for user in np.unique(users[test]):
        wordlist = tmp / f"bogo-{user}"
        wordlist.mkdir()
        start = time.perf_counter()
        for label, flag in ((1, "-s"), (0, "-n")):
            idx = train[(users[train] == user) & (y[train] == label)]
            data = b"".join(b"From bench Thu Jan  1 00:00:00 2004\n" + raws[i].replace(b"\nFrom ", b"\n>From ")
                            + b"\n\n" for i in idx)
            subprocess.run(["bogofilter", "-d", str(wordlist), flag, "-M"], input=data, check=True)
        train_s += time.perf_counter() - start
        pos = np.flatnonzero(users[test] == user)
        names = []
        for k in pos:
            path = files / f"{k}.eml"
            path.write_bytes(raws[test[k]])
            names.append(str(path))
        start = time.perf_counter()
        out = subprocess.run(["bogofilter", "-d", str(wordlist), "-T", "-b"], input="\n".join(names).encode(),
                             capture_output=True).stdout.decode()
        classify_s += time.perf_counter() - start
        parsed = {line.split()[0]: (line.split()[1], float(line.split()[2])) for line in out.splitlines() if line}
        for k, name in zip(pos, names):
            verdict, score = parsed.get(name, ("U", 0.5))
            scores[k], verdicts[k] = score, verdict == "S"
    return scores, verdicts, train_s, classify_s


def summarise(y, users, scores, verdicts) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Per user and macro over users: 1-AUC %, ham FPR % and spam recall % (verdict spam = caught)."""
    per_user = {}
    for user in np.unique(users):
        mine = users == user
        ham, spam = mine & (y == 0), mine & (y == 1)
        per_user[str(user)] = {"auc_error_pct": macro_auc_error(y[mine], scores[mine], users[mine]),
                               "ham_fpr_pct": 100.0 * float(verdicts[ham].mean()),
                               "spam_recall_pct": 100.0 * float(verdicts[spam].mean()),
                               "test_ham": int(ham.sum()), "test_spam": int(spam.sum())}
    macro = {m: float(np.mean([u[m] for u in per_user.values()])) for m in METRICS}
    return {**macro, "users": per_user}


def run_once(mail: Mail, train: np.ndarray, test: np.ndarray, config: Path | None) -> dict[str, Any]:
    """Both systems on one training set and test set; each system's figures per set and its times."""
    row: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-peer-"))
    try:
        for system in SYSTEMS:
            start = time.perf_counter()
            if system == "spamtl":
                s, v, tr, cl = spamtl_run(tmp, mail.raws, mail.y, mail.users, train, test, mail.groups, config)
            else:
                s, v, tr, cl = bogofilter_run(tmp, mail.raws, mail.y, mail.users, train, test)
            sets = mail.sets[test]
            row[system] = {"train_s": tr, "classify_s": cl, "sets": {
                name: summarise(mail.y[test][sets == name], mail.users[test][sets == name], s[sets == name],
                                v[sets == name]) for name in dict.fromkeys(sets)}}
            _log(f"  {system}: import+train {tr:.0f} s, classify {cl:.0f} s ({time.perf_counter() - start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget, set and system: the mean over seeds of each macro metric and time; targets per budget."""
    out: dict[str, Any] = {}
    for run in runs:
        for system in SYSTEMS:
            for name, figures in run[system]["sets"].items():
                cell = out.setdefault(run["budget"], {}).setdefault(name, {}).setdefault(system, {})
                for metric in METRICS:
                    cell.setdefault(metric, []).append(figures[metric])
                for metric in ("train_s", "classify_s"):  # for the whole store, every set together
                    cell.setdefault(metric, []).append(run[system][metric])
    for by_set in out.values():
        for cells in by_set.values():
            for cell in cells.values():
                cell.update({metric: float(np.mean(values)) for metric, values in cell.items()})
            ours, theirs = cells["spamtl"], cells["bogofilter"]
            cells["targets"] = {"ham_fpr": ours["ham_fpr_pct"] <= theirs["ham_fpr_pct"],
                                "spam_recall": ours["spam_recall_pct"] >= theirs["spam_recall_pct"],
                                "auc_half": ours["auc_error_pct"] <= 0.5 * theirs["auc_error_pct"]}
    return out


def print_table(table: dict[str, Any], seeds: list[int]) -> None:
    print(f"\nmean over seeds {seeds}; train s and classify s are for the whole store (every set together)")
    print(f"{'n':>4} {'set':<7} {'system':<11} {'1-AUC %':>8} {'ham FPR %':>9} {'recall %':>8} "
          f"{'train s':>8} {'classify s':>10}")
    for budget, by_set in table.items():
        for name, cells in by_set.items():
            for system in SYSTEMS:
                r = cells[system]
                print(f"{budget:>4} {name:<7} {system:<11} {r['auc_error_pct']:8.3f} {r['ham_fpr_pct']:9.2f} "
                      f"{r['spam_recall_pct']:8.1f} {r['train_s']:8.1f} {r['classify_s']:10.1f}")
            t = cells["targets"]
            print(f"{budget:>4} {name:<7} targets:    ham FPR <= bogofilter {'ok' if t['ham_fpr'] else 'MISS'}, "
                  f"recall >= bogofilter {'ok' if t['spam_recall'] else 'MISS'}, "
                  f"1-AUC <= half {'ok' if t['auc_half'] else 'MISS'}")


def markdown_table(result: dict[str, Any]) -> str:
    """A saved result as a Markdown table: each figure as the mean over seeds, then each seed's value."""
    lines = [f"Mean over seeds {result['seeds']} (each seed's value in brackets).", "",
             "| n | set | system | 1-AUC % | ham FPR % | spam recall % | targets missed |", "|---|---|---|---:|---:|---:|---|"]
    names = {"ham_fpr": "FPR", "spam_recall": "recall", "auc_half": "1-AUC"}
    for budget, by_set in result["summary"].items():
        for name, cells in by_set.items():
            missed = ", ".join(names[t] for t, ok in cells["targets"].items() if not ok) or "none"
            for system in SYSTEMS:
                seeds = [run[system]["sets"][name] for run in result["runs"] if run["budget"] == budget]
                shown = [f"{cells[system][m]:.3g} ({', '.join(f'{f[m]:.3g}' for f in seeds)})" for m in METRICS]
                lines.append(f"| {budget} | {name} | {system} | {' | '.join(shown)} | "
                             f"{missed if system == 'spamtl' else ''} |")
    return "\n".join(lines)


def _budget(text: str) -> str:
    if text != "all" and not (text.isdigit() and int(text) >= 2):
        raise argparse.ArgumentTypeError(f"a budget is a number of labels per user (at least 2) or 'all': {text!r}")
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=_enron.DEFAULT_CORPORA)
    parser.add_argument("--n", nargs="+", type=_budget, default=["20", "50", "200", "all"],
                        help="labels per user: numbers or 'all' (default: 20 50 200 all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=["enron", "sa", "skewed"])
    parser.add_argument("--config", type=Path, help="a spamtl settings file (TOML) for every spamtl command")
    parser.add_argument("--pythonpath", type=Path, help="run this checkout's spamtl (as PYTHONPATH=DIR)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "peer_budget.json")
    parser.add_argument("--table", type=Path, help="print a saved result (JSON) as a Markdown table and stop")
    args = parser.parse_args()
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())))
        raise SystemExit(0)
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if not shutil.which("bogofilter"):
        parser.error("bogofilter is not installed (apt-get install bogofilter)")
    return args


def main() -> None:
    args = parse_args()
    where = subprocess.run([sys.executable, "-c", "import spamtl; print(spamtl.__file__)"], capture_output=True,
                           text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
    _log(f"spamtl from {where}; sets {args.sets}; budgets {args.n}; seeds {args.seeds}")
    mail = load_sets(list(dict.fromkeys(args.sets)), args.corpora)
    runs, began = [], time.perf_counter()
    for seed in args.seeds:
        splits = split(mail, seed)
        test = np.sort(np.concatenate([t for _, t in splits.values()]))
        for budget in args.n:
            train = draw(mail, splits, None if budget == "all" else int(budget), seed)
            _log(f"seed {seed}, n={budget}: {len(train)} training and {len(test)} test messages")
            started = time.perf_counter()
            runs.append({"budget": budget, "seed": seed, "train_messages": int(len(train)),
                         "test_messages": int(len(test)), **run_once(mail, train, test, args.config),
                         "wall_s": time.perf_counter() - started})
    table = summary(runs)
    print_table(table, args.seeds)
    # Paths are the machine's, not the result's: the JSON keeps file names only.
    command = " ".join(Path(a).name if a.startswith("/") else a for a in sys.argv)
    version = subprocess.run([sys.executable, "-c", "import spamtl; print(spamtl.__version__)"], capture_output=True,
                             text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
    result = {"command": command, "spamtl": version, "config": args.config.name if args.config else None,
              "sets": args.sets, "budgets": args.n, "seeds": args.seeds,
              "wall_s": time.perf_counter() - began, "summary": table, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _log(f"wrote {args.out} after {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
