"""Feature ablation on Enron-Spam: term values (1 + log tf vs binary) x IDF (off vs on).

One pooled L2 logistic regression (alpha = 0.01, the value every model
benchmark run has chosen) per variant, on the splits of ``bench_model.py``
(fixed stratified 40 % test per user, n training messages per user, 3 seeds).
IDF is learned from the training rows only.  Reports macro 1-AUC % (mean over
seeds) per variant and n.

    python benchmarks/bench_features.py [--seeds 3] [--ns 20,50,200,all]

Writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _enron  # noqa: E402

from spamtl.features import FeatureConfig, IdfWeights  # noqa: E402
from spamtl.metrics import macro_auc_error  # noqa: E402
from spamtl.services.training import min_df_mask  # noqa: E402

HERE = Path(__file__).resolve().parent
ALPHA = 0.01
VARIANTS = (("log", False), ("binary", False), ("log", True), ("binary", True))


def score(Xtr, ytr, Xte, idf: bool):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    weights = IdfWeights.fit(Xtr) if idf else None
    if weights is not None:
        Xtr, Xte = weights.transform(Xtr), weights.transform(Xte)
    return LogisticRegression(C=1 / ALPHA, max_iter=3000).fit(Xtr, ytr).decision_function(Xte)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ns", default="20,50,200,all")
    args = parser.parse_args()
    ns = [None if n == "all" else int(n) for n in args.ns.split(",")]
    warnings.simplefilter("ignore")
    rows = []
    for tf in ("log", "binary"):
        corpus = _enron.load(FeatureConfig(tf=tf))
        for seed in range(args.seeds):
            pool, test = _enron.split(corpus.users, corpus.y, seed)
            for n in ns:
                train = _enron.subsample(pool, corpus.users, corpus.y, n, seed)
                Xtr = min_df_mask(corpus.X[train]) if n is None else corpus.X[train]
                for idf in (False, True):
                    start = time.perf_counter()
                    s = score(Xtr, corpus.y[train], corpus.X[test], idf)
                    row = {"tf": tf, "idf": idf, "seed": seed, "n": "all" if n is None else n,
                           "auc_error_pct": macro_auc_error(corpus.y[test], s, corpus.users[test]),
                           "seconds": time.perf_counter() - start}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = {}
    for tf, idf in VARIANTS:
        name = f"{tf}{' + idf' if idf else ''}"
        table[name] = {str(n): float(np.mean([r["auc_error_pct"] for r in rows
                                              if r["tf"] == tf and r["idf"] == idf and str(r["n"]) == str(n)]))
                       for n in ["all" if n is None else n for n in ns]}
    print(f"\npooled logistic regression, alpha={ALPHA}: macro 1-AUC % (mean over {args.seeds} seeds)")
    print(f"{'features':>14}  " + "  ".join(f"{n:>8}" for n in next(iter(table.values()))))
    for name, vals in table.items():
        print(f"{name:>14}  " + "  ".join(f"{v:8.3f}" for v in vals.values()))
    out = HERE / "results" / "features.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"alpha": ALPHA, "table": table, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
