"""Settings: every tunable the services read, in one frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from spamtl.features import FeatureConfig

ENV_DATABASE_URL = "SPAMTL_DATABASE_URL"


@dataclass(frozen=True)
class Settings:
    """What a service needs to know; build one per command and pass it in.

    ``spam_cutoff`` and ``ham_cutoff`` bound the *unsure* band: probability
    >= spam_cutoff is spam, <= ham_cutoff is ham, anything between is unsure
    (as SpamBayes does).  The defaults are justified in the README.
    """

    database_url: str
    spam_cutoff: float = 0.90
    ham_cutoff: float = 0.20
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # Hyper-parameter grid searched at training time (see README, "Choosing mu").
    alphas: tuple[float, ...] = (0.01,)
    mus: tuple[float, ...] = (100.0, 10.0, 3.0, 1.0)
    task_weighting: str = "sample"
    idf: bool = True  # reweight rows by inverse document frequency (see README, "Features")
    tol: float = 1e-5
    max_iter: int = 500
    holdout_fraction: float = 0.15
    holdout_min: int = 2
    promote_tolerance: float = 0.0
    chunk_size: int = 1000
    seed: int = 0
    # Retention (``spamtl prune``, also run at the end of every ``spamtl train``); None keeps forever.
    # 30 days: a user who corrects a verdict does so within days of seeing it; after a month
    # `feedback` still works by passing the message itself.  Labelled mail is never pruned.
    raw_retention_days: int | None = 30
    # 180 days: half a year of verdicts for error counts and audits; then only labels remain.
    classification_retention_days: int | None = 180
    # 5 promoted versions: about a week of nightly models to roll back to (plus any pinned one).
    keep_promoted_versions: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.ham_cutoff <= self.spam_cutoff <= 1.0:
            raise ValueError("cutoffs must satisfy 0 <= ham_cutoff <= spam_cutoff <= 1")
        if self.keep_promoted_versions < 1:
            raise ValueError("keep_promoted_versions must be at least 1 (the active model)")
        for name in ("raw_retention_days", "classification_retention_days"):
            days = getattr(self, name)
            if days is not None and days < 0:
                raise ValueError(f"{name} must be >= 0 or None (keep forever)")

    def verdict(self, probability: float) -> str:
        """spam at or above spam_cutoff, ham at or below ham_cutoff, unsure between."""
        if probability >= self.spam_cutoff:
            return "spam"
        if probability <= self.ham_cutoff:
            return "ham"
        return "unsure"


def database_url_from_env(explicit: str | None) -> str:
    """``--db`` if given, else ``$SPAMTL_DATABASE_URL``, else the per-user default."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return env
    return default_database_url()


def default_database_url() -> str:
    """``sqlite:///`` URL of ``$XDG_DATA_HOME/spamtl/spamtl.sqlite3`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'spamtl' / 'spamtl.sqlite3'}"
