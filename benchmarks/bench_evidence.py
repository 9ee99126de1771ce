"""Token-family ablation on the SpamAssassin users (full headers): does each family help, and what does it cost?

The five SpamAssassin users of ``_spamassassin.py`` (sa1, sa2 and the skewed skew5/10/25).  Per seed:
sa1 and sa2 hold out a stratified 40 % and draw ``n`` training labels from the rest (``all``: every one);
the skewed users train on their fixed 200 labels (5, 10, 25 ham) and are tested on the rest (hard_ham
included).  One multi-task model (``MultiTaskLogisticRegression``, alpha 0.01, mu 10, idf, rare columns
dropped as training does) per feature variant, budget and seed.  Reported per variant: macro 1-AUC %
(mean over users and seeds), ham FPR % and spam recall % at the default spam cutoff 0.9 (pooled over
users and seeds), and the CPU time of ``featurize`` per message (its own pass over every message, median of
3, after parsing: parsing is the same for every variant).

The corpus is from 2002-2005 and has no Authentication-Results fields, so the ``auth`` variant measures only
what dropping the authentication headers from the ``hdr:`` family does here; its evidence is tested on
crafted mail (tests/test_features.py).

    python benchmarks/bench_evidence.py [--seeds 0 1] [--n 50 200 all]

Writes benchmarks/results/evidence.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _enron  # noqa: E402
import _spamassassin  # noqa: E402

from spamtl.features import FeatureConfig, featurize, rows_to_csr  # noqa: E402
from spamtl.mail.parse import parse_message  # noqa: E402
from spamtl.metrics import macro_auc_error  # noqa: E402
from spamtl.model.estimator import MultiTaskLogisticRegression  # noqa: E402
from spamtl.services.training import min_df_mask  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = FeatureConfig(auth=False, hops=False)  # the features before these families existed
VARIANTS = {
    "base": BASE,
    "+auth": replace(BASE, auth=True),
    "+bulk": replace(BASE, bulk=True),
    "+sender": replace(BASE, sender=True),
    "+hops": replace(BASE, hops=True),
    "+auth+bulk+sender+hops": replace(BASE, auth=True, bulk=True, sender=True, hops=True),
    "+chargrams4": replace(BASE, chargrams=4),
    "default (+auth+hops)": FeatureConfig(),
}
SPAM_CUTOFF = 0.9


def _split(users: np.ndarray, y: np.ndarray, seed: int, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in ("sa1", "sa2"):
        pool = []
        for label in (0, 1):
            idx = rng.permutation(np.flatnonzero((users == user) & (y == label)))
            cut = int(round(0.4 * len(idx)))
            test.extend(idx[:cut])
            pool.extend(idx[cut:])
        pool = np.array(pool)
        if n is not None:  # stratified draw of n labels from the user's pool
            spam = rng.permutation(pool[y[pool] == 1])
            ham = rng.permutation(pool[y[pool] == 0])
            k = max(1, int(round(n * len(ham) / len(pool))))
            pool = np.concatenate([ham[:k], spam[:n - k]])
        train.extend(pool)
    skew_train, skew_test = _spamassassin.skewed_split(users, y, seed)
    return (np.sort(np.concatenate([train, skew_train]).astype(int)),
            np.sort(np.concatenate([test, skew_test]).astype(int)))


def _cpu_per_message(parsed: list, config: FeatureConfig) -> float:  # type: ignore[type-arg]
    times = []
    for _ in range(3):
        start = time.process_time()
        for msg in parsed:
            featurize(msg, config)
        times.append((time.process_time() - start) / len(parsed))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=_enron.DEFAULT_CORPORA)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--n", nargs="+", default=["50", "200", "all"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evidence.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    raws, y, users = _spamassassin.read_users(args.corpora)
    parsed = [parse_message(raw) for raw in raws]
    print(f"{len(parsed)} messages, users {sorted(set(users.tolist()))}", flush=True)
    result: dict[str, dict[str, object]] = {}
    for name in args.variants:
        config = VARIANTS[name]
        cpu = _cpu_per_message(parsed, config)
        X = rows_to_csr([featurize(msg, config) for msg in parsed], config.n_features)
        per_n: dict[str, dict[str, float]] = {}
        for n_text in args.n:
            n = None if n_text == "all" else int(n_text)
            errors, ham_calls, spam_calls = [], [], []
            for seed in args.seeds:
                train, test = _split(users, y, seed, n)
                model = MultiTaskLogisticRegression(alpha=0.01, mu=10.0, idf=True)
                model.fit(min_df_mask(X[train]), y[train], tasks=users[train])
                p = model.predict_proba(X[test], tasks=users[test])[:, 1]
                errors.append(macro_auc_error(y[test], p, users[test]))
                ham_calls.append(p[y[test] == 0] >= SPAM_CUTOFF)
                spam_calls.append(p[y[test] == 1] >= SPAM_CUTOFF)
            per_n[n_text] = {"auc_error_pct": float(np.mean(errors)), "auc_error_pct_by_seed": errors,
                             "ham_fpr_pct": 100 * float(np.concatenate(ham_calls).mean()),
                             "recall_pct": 100 * float(np.concatenate(spam_calls).mean())}
        result[name] = {"key": config.key, "cpu_ms_per_message": 1000 * cpu, "by_n": per_n}
        print(json.dumps({name: result[name]}), flush=True)
    print("\n| variant | featurize CPU ms/msg | " + " | ".join(
        f"n={n}: 1-AUC % / ham FPR % / recall %" for n in args.n) + " |")
    print("|---|---|" + "---|" * len(args.n))
    for name, row in result.items():
        cells = [f"{v['auc_error_pct']:.3f} / {v['ham_fpr_pct']:.2f} / {v['recall_pct']:.1f}"
                 for v in row["by_n"].values()]  # type: ignore[union-attr]
        print(f"| {name} | {row['cpu_ms_per_message']:.3f} | " + " | ".join(cells) + " |")
    out = args.out
    out.write_text(json.dumps({"command": " ".join(sys.argv), "seeds": args.seeds, "spam_cutoff": SPAM_CUTOFF,
                               "variants": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
