"""Settings: the verdict band and its validation."""

from __future__ import annotations

import pytest

from spamtl.settings import Settings


@pytest.mark.parametrize(("probability", "verdict"),
                         [(0.0, "ham"), (0.20, "ham"), (0.5, "ham"), (0.5001, "unsure"), (0.8999, "unsure"),
                          (0.90, "spam"), (1.0, "spam")])
def test_default_verdict_band(probability: float, verdict: str) -> None:
    assert Settings(database_url="").verdict(probability) == verdict


def test_cutoffs_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="cutoffs"):
        Settings(database_url="", ham_cutoff=0.9, spam_cutoff=0.5)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("alphas", (), "alphas must be a non-empty list of positive numbers, got []"),
    ("mus", (10.0, 0.0), "mus must be a non-empty list of positive numbers, got [10.0, 0.0]"),
    ("mus", (float("inf"),), "mus must be a non-empty list of positive numbers, got [inf]"),
    ("task_weighting", "user", "task_weighting must be 'sample' or 'task', got 'user'"),
    ("cv_folds", 1, "cv_folds must be at least 2 (every label is scored by a model fitted without it)"),
    ("min_spam_cutoff", 1.0, "min_spam_cutoff must be between 0 and 1 (exclusive)"),
    ("holdout_fraction", 0.0, "holdout_fraction must be between 0 and 1 (exclusive) and holdout_min at least 1"),
    ("tol", 0.0, "tol must be > 0.0, got 0.0"),
    ("feedback_weight", 0.0, "feedback_weight must be > 0.0, got 0.0"),
    ("feedback_max_doublings", -1, "feedback_max_doublings must be >= 0, got -1"),
    ("cutoff_confidence", 1.0, "cutoff_confidence must be in [0.5, 1)"),
    ("cutoff_confidence", 0.3, "cutoff_confidence must be in [0.5, 1)"),
    ("serve_workers", 0, "serve_workers must be >= 1, got 0"),
    ("serve_read_timeout", 0.0, "serve_read_timeout must be > 0.0, got 0.0"),
    ("autolearn_days", float("nan"), "autolearn_days must be >= 0.0, got nan"),
    ("user_cutoffs", {"bob": (0.3, 0.6)}, "users.bob: cutoffs must satisfy 0 <= ham_cutoff <= spam_cutoff <= 1"),
    *[("recipient_delimiter", bad, "recipient_delimiter must be at most 8 characters that are neither letters, "
       f"digits, blanks nor '@' (Postfix's recipient_delimiter), got {bad!r}") for bad in ("@", "+a", "+ ", "+" * 9)],
])
def test_training_and_serving_settings_are_checked_up_front(field: str, value: object, message: str) -> None:
    """Catches: a value that a night's training would reject minutes in (an empty grid, mu 0, one fold)
    or misuse silently (feedback weighed 0, a confidence of 1) accepted when the settings are read."""
    with pytest.raises(ValueError) as excinfo:
        Settings(database_url="", **{field: value})  # type: ignore[arg-type]
    assert str(excinfo.value) == message


def test_the_edges_of_the_checked_ranges_are_accepted() -> None:
    settings = Settings(database_url="", alphas=(1e-9,), mus=(1e-6, 1e6), cv_folds=2, min_spam_cutoff=0.99,
                        feedback_max_doublings=0, cutoff_confidence=0.5, serve_refresh_interval=0.0,
                        autolearn_after_hours=0.0, user_cutoffs={"bob": (0.5, 0.5)})
    assert settings.cv_folds == 2
