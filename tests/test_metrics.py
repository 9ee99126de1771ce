"""spamtl.metrics against scikit-learn, including ties and one-class users."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from spamtl.metrics import binary_metrics, macro_auc_error, roc_auc, roc_curve_points, rows_by_task, spam_caught_at_fpr


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    fpr, tpr = roc_curve_points(y, scores)
    ref_fpr, ref_tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_one_class_is_nan_not_an_error() -> None:
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))
    metrics = binary_metrics([True, True, True], [0.9, 0.2, 0.95], threshold=0.5)
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["ham_fpr"])
    assert metrics["recall"] == pytest.approx(2 / 3) and metrics["precision"] == 1.0


def test_macro_skips_one_class_tasks() -> None:
    y = np.array([0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.8, 0.2, 0.5, 0.6])
    t = np.array(["a", "a", "b", "b", "c", "c"])
    assert macro_auc_error(y, s, t) == pytest.approx((0.0 + 100.0) / 2)


def test_macro_on_interleaved_tasks_matches_sklearn_per_task() -> None:
    """Rows of 40 tasks in random order (and a numeric task id): each task's AUC from its own rows only."""
    rng = np.random.default_rng(3)
    t = rng.integers(0, 40, 2000)
    y = rng.random(2000) < 0.4
    s = np.round(rng.normal(size=2000) + y * (t % 5) / 4, 1)
    expected = [100 * (1 - roc_auc_score(y[t == k], s[t == k])) for k in range(40)]
    assert macro_auc_error(y, s, t) == pytest.approx(np.mean(expected), abs=1e-10)
    assert macro_auc_error(y, s, t.astype(str)) == pytest.approx(np.mean(expected), abs=1e-10)


def test_rows_by_task_splits_every_row_once_in_order() -> None:
    tasks = np.array(["b", "a", "c", "b", "a", "b"])
    assert [(name, rows.tolist()) for name, rows in rows_by_task(tasks)] == [
        ("a", [1, 4]), ("b", [0, 3, 5]), ("c", [2])]
    assert list(rows_by_task(np.array([], dtype=str))) == []


def test_spam_caught_at_low_fpr() -> None:
    y = np.array([0] * 1000 + [1] * 10)
    s = np.r_[np.linspace(0, 0.5, 1000), [0.49, 0.6, 0.7, 0.8, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]]
    # One ham may be above the cutoff at 0.1 % FPR: all spam above 0.5 is caught, the 0.49 one is not.
    assert spam_caught_at_fpr(y, s, 0.001) == pytest.approx(0.9)
    m = binary_metrics(y == 1, s, threshold=0.55)
    assert (m["precision"], m["recall"], m["ham_fpr"]) == (1.0, 0.9, 0.0)
