"""Model benchmark on Enron-Spam: multi-task vs pooled vs per-user logistic regression vs bogofilter.

For each seed, a fixed stratified 40 % of each user's mail is the test set
(the same for every system).  From the rest, n = 20, 50, 200 or all messages
per user are used for training.  Reports macro-averaged 1-AUC % (100 x (1 -
ROC AUC), averaged over the six users) per system and n, the mean over
seeds, and the full-data fit time (median of runs) and peak memory.

Every logistic system sees the same features: binary token presence
reweighted by IDF learned from that system's own training rows (what spamtl
trains with).  ``--tf log --no-idf`` reproduces the first release's features
(1 + log tf, no IDF) for comparison.

    python benchmarks/bench_model.py [--seeds 3] [--ns 20,50,200,all] [--tf log] [--no-idf]

Writes benchmarks/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _enron  # noqa: E402

from spamtl.features import FeatureConfig, IdfWeights  # noqa: E402
from spamtl.metrics import macro_auc_error  # noqa: E402
from spamtl.model.estimator import MultiTaskLogisticRegression  # noqa: E402
from spamtl.model.selection import select_hyperparameters  # noqa: E402
from spamtl.services.training import min_df_mask  # noqa: E402

HERE = Path(__file__).resolve().parent
ALPHAS = (0.01, 0.1, 1.0)
MUS = (1000.0, 100.0, 10.0, 3.0, 1.0, 0.3)
USE_IDF = True  # set from --no-idf in main()


def _logistic(alpha, X, y):  # type: ignore[no-untyped-def]
    """Single-task L2 logistic regression on the same features as the MTL model; returns a scorer."""
    from sklearn.linear_model import LogisticRegression

    idf = IdfWeights.fit(X) if USE_IDF else None
    model = LogisticRegression(C=1 / alpha, max_iter=2000).fit(idf.transform(X) if idf else X, y)
    return lambda Z: model.decision_function(idf.transform(Z) if idf else Z)


def _loss(y, scores, tasks) -> float:  # type: ignore[no-untyped-def]
    """Held-out logistic loss, averaged per user then over users: the same criterion the MTL search uses."""
    from spamtl.metrics import macro_log_loss as _macro_log_loss

    return _macro_log_loss(np.asarray(y) == 1, np.asarray(scores), np.asarray(tasks))


def _cv_pick(fit_score, grid, X, y, tasks, seed: int) -> float:  # type: ignore[no-untyped-def]
    """The grid value with the best mean held-out log loss over 3 task-stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    strata = np.char.add(tasks.astype(str), y.astype(str))
    _, strata_idx, counts = np.unique(strata, return_inverse=True, return_counts=True)
    strata_idx = np.where(counts[strata_idx] >= 3, strata_idx, -1)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(X, strata_idx))
    scores = {g: np.nanmean([fit_score(g, X[tr], y[tr], tasks[tr], X[te], y[te], tasks[te]) for tr, te in folds])
              for g in grid}
    return min(scores, key=lambda g: (scores[g], g))


def pooled(Xtr, ytr, ttr, Xte, seed):  # type: ignore[no-untyped-def]
    def fs(alpha, X1, y1, t1, X2, y2, t2):  # type: ignore[no-untyped-def]
        return _loss(y2, _logistic(alpha, X1, y1)(X2), t2)

    alpha = _cv_pick(fs, ALPHAS, Xtr, ytr, ttr, seed)
    return _logistic(alpha, Xtr, ytr)(Xte), {"alpha": alpha}


def per_user(Xtr, ytr, ttr, Xte, tte, seed):  # type: ignore[no-untyped-def]
    out = np.zeros(Xte.shape[0])
    chosen = {}
    for user in np.unique(ttr):
        m, mt = ttr == user, tte == user

        def fs(alpha, X1, y1, t1, X2, y2, t2):  # type: ignore[no-untyped-def]
            if len(np.unique(y1)) < 2:
                return np.nan
            return _loss(y2, _logistic(alpha, X1, y1)(X2), t2)

        alpha = _cv_pick(fs, ALPHAS, Xtr[m], ytr[m], ttr[m], seed)
        chosen[str(user)] = alpha
        out[mt] = _logistic(alpha, Xtr[m], ytr[m])(Xte[mt])
    return out, {"alpha": chosen}


def mtl(Xtr, ytr, ttr, Xte, tte, seed):  # type: ignore[no-untyped-def]
    # alpha=1 never won on the full data in our trials (see README); searching it there only costs time.
    alphas = ALPHAS if Xtr.shape[0] < 5000 else ALPHAS[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = select_hyperparameters(Xtr, ytr, ttr, alphas=alphas, mus=MUS, n_splits=3, random_state=seed,
                                        estimator=MultiTaskLogisticRegression(tol=1e-5, max_iter=500, idf=USE_IDF))
        est = MultiTaskLogisticRegression(alpha=search.alpha, mu=search.mu, tol=1e-5, max_iter=500, idf=USE_IDF)
        est.fit(Xtr, ytr, tasks=ttr)
    return est.decision_function(Xte, tasks=tte), {"alpha": search.alpha, "mu": search.mu}


def bogofilter(raws, train, test, users, y, tmp: Path):  # type: ignore[no-untyped-def]
    """Scores of test messages by per-user and by pooled bogofilter wordlists trained on the same mail."""
    if shutil.which("bogofilter") is None:
        return None
    files = tmp / "test"
    if not files.exists():
        files.mkdir()
    names = []
    for i in test:
        path = files / f"{i}.eml"
        if not path.exists():
            path.write_bytes(raws[i])
        names.append(str(path))
    scores = {}
    for mode in ("per_user", "pooled"):
        out = np.zeros(len(test))
        groups = [(u, train[users[train] == u], test[users[test] == u]) for u in np.unique(users)] if mode == "per_user" \
            else [("all", train, test)]
        for name, tr, te in groups:
            wordlist = tmp / f"wl-{mode}-{name}"
            shutil.rmtree(wordlist, ignore_errors=True)
            wordlist.mkdir()
            for flag, label in (("-s", 1), ("-n", 0)):
                mbox = b"".join(b"From bench Thu Jan  1 00:00:00 2004\n" + raws[i].replace(b"\nFrom ", b"\n>From ")
                                + b"\n\n" for i in tr[y[tr] == label])
                subprocess.run(["bogofilter", "-d", str(wordlist), flag, "-M"], input=mbox, check=True)
            wanted = [names[k] for k in range(len(test)) if test[k] in set(te)]
            result = subprocess.run(["bogofilter", "-d", str(wordlist), "-T", "-b"], input="\n".join(wanted).encode(),
                                    capture_output=True, check=False).stdout.decode()
            by_name = {line.split()[0]: float(line.split()[2]) for line in result.splitlines() if line.strip()}
            pos = {n: k for k, n in enumerate(names)}
            for n in wanted:
                out[pos[n]] = by_name.get(n, 0.5)
        scores[mode] = out
    return scores


def full_fit(params: dict[str, float], runs: int, tf: str, idf: bool) -> dict[str, float]:
    """Fit on all 33,716 messages in a fresh process per run; median seconds and peak RSS."""
    times, rss = [], []
    for _ in range(runs):
        code = ("import sys,time,json,resource,warnings; sys.path.insert(0, %r); import _enron;"
                "from spamtl.model.estimator import MultiTaskLogisticRegression;"
                "from spamtl.services.training import min_df_mask;"
                "from spamtl.features import FeatureConfig;"
                "c=_enron.load(FeatureConfig(tf=%r)); X=min_df_mask(c.X); warnings.simplefilter('ignore');"
                "t=time.perf_counter(); m=MultiTaskLogisticRegression(alpha=%r, mu=%r, tol=1e-5, max_iter=500, idf=%r)"
                ".fit(X, c.y, tasks=c.users); d=time.perf_counter()-t;"
                "print(json.dumps({'seconds': d, 'n_iter': m.n_iter_,"
                "'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))") % (
            str(HERE), tf, params["alpha"], params["mu"], idf)
        out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout.splitlines()[-1])
        times.append(out["seconds"])
        rss.append(out["rss"])
    return {"median_seconds": statistics.median(times), "runs_seconds": times, "peak_rss_mib": max(rss),
            "note": "peak RSS of the whole process, including the loaded 33,716 x 2^18 feature matrix"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ns", default="20,50,200,all")
    parser.add_argument("--fit-runs", type=int, default=3)
    parser.add_argument("--tf", choices=("binary", "log"), default="binary", help="token values (default binary)")
    parser.add_argument("--no-idf", action="store_true", help="no IDF reweighting (the first release's features)")
    parser.add_argument("--out", default=str(HERE / "results" / "model.json"), help="where to write the JSON")
    args = parser.parse_args()
    global USE_IDF
    USE_IDF = not args.no_idf
    corpus = _enron.load(FeatureConfig(tf=args.tf), keep_raw=True)
    ns = [None if n == "all" else int(n) for n in args.ns.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="spamtl-bench-model-"))
    rows = []
    try:
        for seed in range(args.seeds):
            train_pool, test = _enron.split(corpus.users, corpus.y, seed)
            for n in ns:
                train = _enron.subsample(train_pool, corpus.users, corpus.y, n, seed)
                Xtr = min_df_mask(corpus.X[train]) if n is None else corpus.X[train]
                ytr, ttr = corpus.y[train], corpus.users[train]
                Xte, yte, tte = corpus.X[test], corpus.y[test], corpus.users[test]
                result = {"seed": seed, "n": "all" if n is None else n, "train_messages": int(len(train))}
                for name, fn in (("mtl", lambda: mtl(Xtr, ytr, ttr, Xte, tte, seed)),
                                 ("pooled", lambda: pooled(Xtr, ytr, ttr, Xte, seed)),
                                 ("per_user", lambda: per_user(Xtr, ytr, ttr, Xte, tte, seed))):
                    start = time.perf_counter()
                    scores, chosen = fn()
                    result[name] = macro_auc_error(yte, scores, tte)
                    result[f"{name}_params"] = chosen
                    result[f"{name}_seconds"] = time.perf_counter() - start
                bogo = bogofilter(corpus.raws, train, test, corpus.users, corpus.y, tmp)
                if bogo is not None:
                    result["bogofilter_per_user"] = macro_auc_error(yte, bogo["per_user"], tte)
                    result["bogofilter_pooled"] = macro_auc_error(yte, bogo["pooled"], tte)
                rows.append(result)
                print(json.dumps({k: v for k, v in result.items() if not k.endswith("_params")}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    systems = [s for s in ("mtl", "pooled", "per_user", "bogofilter_per_user", "bogofilter_pooled") if s in rows[0]]
    table = {}
    for n in ["all" if n is None else n for n in ns]:
        sel = [r for r in rows if r["n"] == n]
        table[str(n)] = {s: float(np.mean([r[s] for r in sel])) for s in systems}
    print(f"\nmacro 1-AUC % (mean over {args.seeds} seeds; lower is better)")
    print(f"{'n/user':>7}  " + "  ".join(f"{s:>19}" for s in systems))
    for n, vals in table.items():
        print(f"{n:>7}  " + "  ".join(f"{vals[s]:19.4f}" for s in systems))
    all_rows = [r for r in rows if r["n"] == "all"]
    fit = None
    if all_rows:
        params = all_rows[0]["mtl_params"]
        fit = full_fit(params, args.fit_runs, args.tf, USE_IDF)
        print(f"\nfull-data fit (33,716 messages, alpha={params['alpha']}, mu={params['mu']}): "
              f"median {fit['median_seconds']:.1f} s over {args.fit_runs} runs, peak RSS {fit['peak_rss_mib']:.0f} MiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"features": {"tf": args.tf, "idf": USE_IDF}, "table": table, "rows": rows,
                               "full_fit": fit,
                               "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                              indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
