"""SpamAssassin users with full headers, for benchmarks (not collected by pytest).

The SpamAssassin public corpus (../shared/corpora/spamassassin: easy_ham, easy_ham_2, hard_ham, spam,
spam_2) is cut once, with a fixed seed, into five users whose messages are disjoint (a message that occurs
twice in the corpus, by Message-ID or by body, is kept once), so no message can leak from one user's
training mail into another's test mail:

- ``sa1``: easy_ham (all but the 351 messages the skewed users take) and spam (2002 mail).
- ``sa2``: easy_ham_2 and what is left of spam_2 (2003-2005 spam).
- ``skew5``, ``skew10``, ``skew25``: users whose mail is mostly spam.  Each has 200 ham (a third of
  hard_ham, commercial and bulk ham, plus 117 easy_ham from many senders) and 150 + (200 - k) spam from
  spam_2.  :func:`skewed_split` draws a fixed training set of 200 labels with k = 5, 10 or 25 ham; the
  rest is the test set (at least 175 ham, about 40 % of it hard_ham, and 150 spam).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from spamtl.mail.sources import RawMail, iter_mail

SKEWED_HAM = {"skew5": 5, "skew10": 10, "skew25": 25}
"""Ham among each skewed user's 200 training labels."""
SKEWED_TRAIN = 200
SKEWED_TEST_SPAM = 150
SKEWED_EASY_HAM = 117
PARTITION_SEED = 2003  # the users are fixed people: their mail does not depend on the benchmark's seed
_MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def _dedup_key(raw: bytes) -> tuple[bytes | None, bytes]:
    head, _, body = raw.partition(b"\n\n")
    found = _MESSAGE_ID_RE.search(head)
    return (found.group(1) if found else None), hashlib.sha256(body.strip()).digest()


def _read(corpora: Path) -> dict[str, list[bytes]]:
    """Each folder's messages in corpus order, every message at most once over all folders."""
    seen_ids: set[bytes] = set()
    seen_bodies: set[bytes] = set()
    out: dict[str, list[bytes]] = {}
    for name in ("easy_ham", "easy_ham_2", "hard_ham", "spam", "spam_2"):
        out[name] = []
        for item in iter_mail([corpora / "spamassassin" / f"{name}.mbox"]):
            if not isinstance(item, RawMail):
                continue
            msg_id, body = _dedup_key(item.raw)
            if body in seen_bodies or (msg_id is not None and msg_id in seen_ids):
                continue
            seen_bodies.add(body)
            if msg_id is not None:
                seen_ids.add(msg_id)
            out[name].append(item.raw)
    return out


def read_users(corpora: Path) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The five users' messages, labels (1 = spam) and user names; the same on every call."""
    rng = np.random.default_rng(PARTITION_SEED)
    folders = {name: [raws[i] for i in rng.permutation(len(raws))] for name, raws in _read(corpora).items()}
    hard_parts = np.array_split(np.arange(len(folders["hard_ham"])), len(SKEWED_HAM))
    mail: list[tuple[str, int, list[bytes]]] = []
    easy_used = spam2_used = 0
    for (user, k), hard in zip(SKEWED_HAM.items(), hard_parts):
        ham = [folders["hard_ham"][i] for i in hard] + folders["easy_ham"][easy_used:easy_used + SKEWED_EASY_HAM]
        n_spam = SKEWED_TRAIN - k + SKEWED_TEST_SPAM
        mail += [(user, 0, ham), (user, 1, folders["spam_2"][spam2_used:spam2_used + n_spam])]
        easy_used += SKEWED_EASY_HAM
        spam2_used += n_spam
    mail += [("sa1", 0, folders["easy_ham"][easy_used:]), ("sa1", 1, folders["spam"]),
             ("sa2", 0, folders["easy_ham_2"]), ("sa2", 1, folders["spam_2"][spam2_used:])]
    raws = [raw for _, _, part in mail for raw in part]
    labels = np.array([label for _, label, part in mail for _ in part], dtype=int)
    users = np.array([user for user, _, part in mail for _ in part])
    return raws, labels, users


def skewed_split(users: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the skewed users' training mail (200 each, k ham) and of their test mail (the rest)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user, k in SKEWED_HAM.items():
        for label, n in ((0, k), (1, SKEWED_TRAIN - k)):
            idx = rng.permutation(np.flatnonzero((users == user) & (y == label)))
            train.extend(idx[:n])
            test.extend(idx[n:])
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(test, dtype=int))
