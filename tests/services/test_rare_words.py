"""Training's vocabulary rule: a word seen in one message only is dropped, one seen in two is kept.

Catches (a planted defect): the ``min_df`` rule of ``spamtl/services/training.py``
(:func:`min_df_mask`, ``min_df=2``, applied by :func:`prepare_features`) dropping words seen in two
messages as well (``min_df=3`` or ``<=``); before, only a review test noticed.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spamtl.services.dataset import TrainingData
from spamtl.services.importing import import_mail
from spamtl.services.models import load_weights
from spamtl.services.training import min_df_mask, prepare_features, train
from spamtl.settings import Settings

from ..cli.test_loop import _mails
from ..conftest import NOW, make_mail, write_mbox

# Rows are messages; column 0 is in one message, column 1 in two, column 2 in three, column 3 in none.
X = sp.csr_matrix(np.array([[1.0, 2.0, 1.0, 0.0],
                            [0.0, 1.0, 1.0, 0.0],
                            [0.0, 0.0, 3.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0]]))


def test_min_df_mask_drops_columns_of_one_message_and_keeps_those_of_two() -> None:
    masked = min_df_mask(X.copy())
    assert masked.toarray().tolist() == [[0.0, 2.0, 1.0, 0.0],
                                         [0.0, 1.0, 1.0, 0.0],
                                         [0.0, 0.0, 3.0, 0.0],
                                         [0.0, 0.0, 0.0, 0.0]]
    assert masked.nnz == 5  # the dropped value is gone, not stored as a zero


def test_prepare_features_applies_the_rule() -> None:
    n = X.shape[0]
    data = TrainingData(X=X.copy(), y=np.array([1, 0, 1, 0]), users=np.array(["u"] * n),
                        groups=np.array([None] * n, dtype=object), message_pks=np.arange(n), recency=np.zeros(n))
    prepared = prepare_features(data)
    assert sorted(set(prepared.X.indices.tolist())) == [1, 2]
    assert prepared.y.tolist() == [1, 0, 1, 0] and prepared.X.shape == X.shape


def test_a_trained_model_knows_words_of_two_messages_not_of_one(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """End to end: the version's idf (fitted on the rows the estimator saw) has a column for a word two
    messages share, and none for a word one message has."""
    once = make_mail("project meeting once", "agenda minutes zorblaxonce budget", sender="colleague@ann.example")
    twice = [make_mail(f"project meeting twice {i}", f"agenda minutes quintwice review {i}",
                       sender="colleague@ann.example") for i in range(2)]
    for user, k in (("ann", 3), ("bob", 4)):
        ham = _mails(k, user, 10) + ([once, *twice] if user == "ann" else [])
        import_mail(engine, user=user, paths=[str(write_mbox(tmp_path / f"{user}-h.mbox", ham))], label="ham", now=NOW)
        import_mail(engine, user=user, paths=[str(write_mbox(tmp_path / f"{user}-s.mbox", _mails(1, "spam", 10)))],
                    label="spam", now=NOW)
    settings = Settings(database_url=str(engine.url), mus=(10.0,))
    assert train(engine, settings, now=NOW).promoted
    _, _, weights = load_weights(engine)
    assert weights.idf is not None
    n_features = settings.features.n_features

    def column(token: str) -> int:  # the hashing trick: CRC-32 of the token, modulo the (power of 2) size
        return zlib.crc32(token.encode()) & (n_features - 1)

    known = set(weights.idf.cols.tolist())
    assert column("body:quintwice") in known
    assert column("body:zorblaxonce") not in known
    assert column("body:agenda") in known  # (the hashing above is the model's: common words are there)
