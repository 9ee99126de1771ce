"""Load Enron-Spam from ../shared/corpora as features, for benchmarks (not collected by pytest).

Features are computed with two processes and cached under
``$XDG_CACHE_HOME/spamtl-bench/`` (never in the repository), keyed by the
feature configuration, so repeated benchmark runs start fast.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spamtl.features import FeatureConfig, featurize, rows_to_csr
from spamtl.mail.parse import parse_message
from spamtl.mail.sources import RawMail, iter_mail

USERS = ("enron1", "enron2", "enron3", "enron4", "enron5", "enron6")
DEFAULT_CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"


@dataclass
class Corpus:
    X: sp.csr_matrix
    y: np.ndarray  # 1 = spam
    users: np.ndarray
    raws: list[bytes] | None = None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spamtl-bench"


def _featurize_chunk(args: tuple[list[bytes], FeatureConfig]) -> list[tuple[np.ndarray, np.ndarray]]:
    raws, config = args
    out = []
    for raw in raws:
        row = featurize(parse_message(raw), config)
        out.append((row.indices, row.values))
    return out


def read_raw(corpora: Path = DEFAULT_CORPORA) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    raws, labels, users = [], [], []
    for user in USERS:
        for label in ("ham", "spam"):
            for item in iter_mail([corpora / "enron-spam" / user / f"{label}.mbox"]):
                if isinstance(item, RawMail):
                    raws.append(item.raw)
                    labels.append(label == "spam")
                    users.append(user)
    return raws, np.array(labels, dtype=int), np.array(users)


def load(config: FeatureConfig = FeatureConfig(), corpora: Path = DEFAULT_CORPORA, keep_raw: bool = False,
         workers: int = 2) -> Corpus:
    """All 33,716 Enron-Spam messages as a CSR matrix, labels and user names."""
    cache = _cache_dir() / f"enron-{config.key.replace(':', '_')}.npz"
    raws, y, users = read_raw(corpora)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        if X.shape[0] == len(y):
            return Corpus(X, y, users, raws if keep_raw else None)
    chunks = [raws[i:i + 500] for i in range(0, len(raws), 500)]
    rows = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_featurize_chunk, [(c, config) for c in chunks]):
            rows.extend(part)
    from spamtl.features import FeatureRow

    X = rows_to_csr([FeatureRow(i, v) for i, v in rows], config.n_features)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape))
    return Corpus(X, y, users, raws if keep_raw else None)


def split(users: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split per user and label: indices of the train pool and the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in np.unique(users):
        for label in (0, 1):
            idx = np.flatnonzero((users == user) & (y == label))
            idx = rng.permutation(idx)
            k = int(round(test_fraction * len(idx)))
            test.extend(idx[:k])
            train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def subsample(train: np.ndarray, users: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """n training messages per user (stratified by label, at least one of each), or all if n is None."""
    if n is None:
        return train
    rng = np.random.default_rng(seed + 1000)
    out = []
    for user in np.unique(users[train]):
        pool = train[users[train] == user]
        spam_share = y[pool].mean()
        n_spam = int(np.clip(round(n * spam_share), 1, n - 1))
        for label, k in ((1, n_spam), (0, n - n_spam)):
            cand = pool[y[pool] == label]
            out.extend(rng.choice(cand, size=min(k, len(cand)), replace=False))
    return np.sort(np.array(out))
