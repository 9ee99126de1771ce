"""Peer comparison end to end: spamtl (as a user runs it) against bogofilter, same mail, same splits.

For each corpus (Enron-Spam from ../shared/corpora, and the demo corpus in
data/demo) a fixed stratified 40 % of each user's mail is held out.  spamtl:
`spamtl import` the rest per user and label, `spamtl train`, then
`spamtl classify USER test.mbox --format json`.  bogofilter: one wordlist
per user, registered with the same training mail, scoring the same test
mail.  Reports macro 1-AUC %, ham false-positive rate and spam recall at each
system's default cutoff (spamtl: verdict "spam", p >= 0.90; bogofilter: its
"S" verdict), and wall time for training and for classifying.

    python benchmarks/bench_peer.py [--corpora ../shared/corpora]

Writes benchmarks/results/peer.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _enron  # noqa: E402

from spamtl.mail.sources import RawMail, iter_mail  # noqa: E402
from spamtl.metrics import macro_auc_error  # noqa: E402

HERE = Path(__file__).resolve().parent


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


def spamtl_run(tmp: Path, raws, y, users, train, test, groups):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp / 'peer.sqlite3'}"
    cli = [sys.executable, "-m", "spamtl"]
    subprocess.run([*cli, "init", "--db", db], check=True, capture_output=True)
    start = time.perf_counter()
    for user in np.unique(users):
        for label, name in ((1, "spam"), (0, "ham")):
            idx = train[(users[train] == user) & (y[train] == label)]
            box = _mbox(tmp / f"train-{user}-{name}.mbox", [raws[i] for i in idx])
            extra = ["--group", groups[user]] if groups.get(user) else []
            subprocess.run([*cli, "import", user, str(box), "-l", name, "--db", db, *extra], check=True,
                           capture_output=True)
    subprocess.run([*cli, "train", "--db", db], check=True, capture_output=True)
    train_s = time.perf_counter() - start
    scores, verdicts = np.zeros(len(test)), np.zeros(len(test), dtype=bool)
    start = time.perf_counter()
    for user in np.unique(users):
        pos = np.flatnonzero(users[test] == user)
        box = _mbox(tmp / f"test-{user}.mbox", [raws[test[k]] for k in pos])
        out = subprocess.run([*cli, "classify", user, str(box), "--format", "json", "--db", db], check=True,
                             capture_output=True, text=True).stdout.splitlines()
        rows = [json.loads(line) for line in out]
        assert len(rows) == len(pos)
        scores[pos] = [r["probability"] for r in rows]
        verdicts[pos] = [r["verdict"] == "spam" for r in rows]
    return scores, verdicts, train_s, time.perf_counter() - start


def bogofilter_run(tmp: Path, raws, y, users, train, test):  # type: ignore[no-untyped-def]
    files = tmp / "bogo-test"
    files.mkdir()
    scores, verdicts = np.zeros(len(test)), np.zeros(len(test), dtype=bool)
    train_s = classify_s = 0.0
    for user in np.unique(users):
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


def summarise(y, users, scores, verdicts) -> dict[str, float]:  # type: ignore[no-untyped-def]
    ham, spam = y == 0, y == 1
    per_user_fpr = [float(verdicts[ham & (users == u)].mean()) for u in np.unique(users)]
    per_user_recall = [float(verdicts[spam & (users == u)].mean()) for u in np.unique(users)]
    return {"macro_auc_error_pct": macro_auc_error(y, scores, users),
            "macro_ham_fpr": float(np.mean(per_user_fpr)), "macro_spam_recall": float(np.mean(per_user_recall))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=_enron.DEFAULT_CORPORA)
    args = parser.parse_args()
    results = {}
    corpora = {"demo": load_demo()}
    enron_raws, enron_y, enron_users = _enron.read_raw(args.corpora)
    corpora["enron"] = (enron_raws, enron_y, enron_users, {})
    for name, (raws, y, users, groups) in corpora.items():
        train, test = _enron.split(users, y, seed=0)
        tmp = Path(tempfile.mkdtemp(prefix=f"spamtl-peer-{name}-"))
        try:
            row = {"train_messages": int(len(train)), "test_messages": int(len(test))}
            s, v, tr, cl = spamtl_run(tmp, raws, y, users, train, test, groups)
            row["spamtl"] = {**summarise(y[test], users[test], s, v), "train_s": tr, "classify_s": cl}
            if shutil.which("bogofilter"):
                s, v, tr, cl = bogofilter_run(tmp, raws, y, users, train, test)
                row["bogofilter"] = {**summarise(y[test], users[test], s, v), "train_s": tr, "classify_s": cl}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results[name] = row
        print(name, json.dumps(row), flush=True)
    print(f"\n{'corpus':<7} {'system':<11} {'1-AUC %':>8} {'ham FPR':>8} {'recall':>7} {'train s':>8} {'classify s':>10}")
    for name, row in results.items():
        for system in ("spamtl", "bogofilter"):
            if system in row:
                r = row[system]
                print(f"{name:<7} {system:<11} {r['macro_auc_error_pct']:8.4f} {r['macro_ham_fpr']:8.4f} "
                      f"{r['macro_spam_recall']:7.4f} {r['train_s']:8.1f} {r['classify_s']:10.1f}")
    out = HERE / "results" / "peer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
