"""Settings: the verdict band and its validation."""

from __future__ import annotations

import pytest

from spamtl.config import Settings


@pytest.mark.parametrize(("probability", "verdict"),
                         [(0.0, "ham"), (0.20, "ham"), (0.5, "ham"), (0.5001, "unsure"), (0.8999, "unsure"),
                          (0.90, "spam"), (1.0, "spam")])
def test_default_verdict_band(probability: float, verdict: str) -> None:
    assert Settings(database_url="").verdict(probability) == verdict


def test_cutoffs_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="cutoffs"):
        Settings(database_url="", ham_cutoff=0.9, spam_cutoff=0.5)
