"""Settings: every tunable the services read, in one frozen dataclass."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from spamtl.features import FeatureConfig

ENV_DATABASE_URL = "SPAMTL_DATABASE_URL"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    """What a service needs to know; build one per command and pass it in.

    ``spam_cutoff`` and ``ham_cutoff`` bound the *unsure* band: probability
    >= spam_cutoff is spam, <= ham_cutoff is ham, anything between is unsure
    (as SpamBayes does).  The defaults are justified in the README.
    """

    database_url: str
    spam_cutoff: float = 0.90
    # Ham at or below 0.5: the model finds it more likely ham than spam (bogofilter's default is 0.45).
    # Between it and the user's spam cutoff, unsure: more likely spam, but not at the ham
    # false-positive target.  (0.20 made 17 % of ham unsure in the replay, README "Verdicts and cutoffs".)
    ham_cutoff: float = 0.5
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # Hyper-parameter grid searched at training time (see README, "Choosing mu").
    alphas: tuple[float, ...] = (0.01,)
    mus: tuple[float, ...] = (100.0, 10.0, 3.0, 1.0)
    task_weighting: str = "sample"
    idf: bool = True  # reweight rows by inverse document frequency (see README, "Features")
    tol: float = 1e-5
    max_iter: int = 500
    holdout_fraction: float = 0.15  # `spamtl evaluate --chronological` only; training holds nothing out
    holdout_min: int = 2
    # Nightly training (README, "Nightly training"): K folds, grouped by message, give every label an
    # out-of-sample score of the candidate configuration; 3 keeps the cost near 3 fits of 2/3 of the data.
    cv_folds: int = 3
    # Beyond this many users the mu grid is cross-fitted on a seeded sample of this many users, then the
    # chosen mu alone on everyone (README, "Scaling"): cost K+1 fits on all rows instead of K x grid + 1.
    # 500 users of ~100 labels is ~50k labels, 70 times the 6-user Enron benchmark's smallest setting: the
    # search then costs what it costs at 500 users however many there are (its one-SE rule uses the
    # standard error all users would give).  0 searches on all users always.
    mu_search_users: int = 500
    # Beyond mu_search_users users, the grid is searched at most every this many days: on the nights
    # between, the active model's alpha and mu (if still in the grid, on the same features) are reused and
    # only cross-fitted (folds fitted on the sample, each user's part refitted given them; README "Scaling").
    # The sampled search is a fixed cost (240 of 430 s a night at 1,000 users) for a choice that moves
    # slowly with a large store.  0 searches every night.  Smaller stores search every night whatever this
    # says.
    mu_search_days: int = 7
    # Worker processes for training's independent fits (cross-fitting folds beside the final fit, the
    # search's folds), and threads for each projected fit's chunks of users (fits of 16,384 labels or
    # more, the final one and the search's folds); one per core of this 2-core machine.  Each worker
    # holds one fold's arrays, each thread one chunk's: memory grows with it.
    train_workers: int = 2
    # The gate refuses a candidate only if its mean log loss (per user, then over users) on mail neither
    # model was fitted on exceeds the active model's by more than promote_tolerance (nats) plus
    # promote_margin_se standard errors of the paired difference: with a few dozen comparable messages,
    # noise alone must not block a night (ties promote).  3, not 2: the comparison leans against the
    # candidate (scored by fits on (K-1)/K of the labels, the active model by verdicts of a model refit on
    # every correction until then); at 2, 2 of 21 replay nights were refused by 7-8 % over the bar.
    promote_tolerance: float = 0.0
    promote_margin_se: float = 3.0
    # ... and a non-inferiority margin: the candidate may be worse by this share of the active model's
    # log loss.  The comparison is biased against the candidate on the mail users corrected (the active
    # model's logged score came after that day's feedback refits, which weigh corrections
    # feedback_weight times; the candidate's is a fit on (K-1)/K of the labels at weight 1): in the replay
    # benchmark its log loss there was up to 1.3-1.7 times the active one's on nights it promoted, and a
    # bias does not shrink with more mail while the standard error does.  A candidate trained on flipped
    # labels is refused (tests).
    promote_relative_margin: float = 0.5
    # Per-user spam cutoffs set at training for this ham false-positive rate (0 disables them: every
    # user keeps spam_cutoff/ham_cutoff).  0.1 %: bogofilter's ham FPR on real mail is 0.08-0.17 %; on
    # Enron-Spam it gave 0.061 % ham FPR at 90.6 % recall (0.2 %: 0.147 % / 94.5 %; bogofilter
    # 0.295 % / 72.6 %; one global 0.90: 0.518 % / 96.9 %), README "Verdicts and cutoffs"; with today's
    # cross-fitted training, 0.023 % at 89.2 % (bench_peer.py).
    target_ham_fpr: float = 0.001
    # A user's own cutoff is weighted n_ham / (n_ham + cutoff_shrinkage) against the shared one (in
    # log-odds): 100 ham count half, since a 0.1 % quantile of fewer ham is really their maximum.
    cutoff_shrinkage: float = 100.0
    # A trained spam cutoff goes below spam_cutoff only as far as the user's own ham shows it is safe
    # (a floor from spam_cutoff with no ham down to this with much ham), and never below this: it never
    # calls spam what the model finds more likely ham.
    min_spam_cutoff: float = 0.5
    # Per-user ham cutoffs set at training: the highest at which at most this share of the user's spam
    # (labels and uncorrected verdicts, scored out of sample) would be called ham, shrunk like the spam
    # cutoff, never below ham_cutoff and at least one log-odds under the user's spam cutoff (0 keeps
    # ham_cutoff for everyone).  Unsure then means "scored like this user's spam, but not surely spam".
    # In the replay benchmark the global 0.5 left 5.5 % of ham unsure (each one a message to look at)
    # while only 0.5 % of spam scored below it; at 5 % (with promote_relative_margin): corrections
    # 165 -> 133 per 1,000, ham FPR 0.120 -> 0.099 % (README, Benchmarks).
    target_spam_as_ham: float = 0.05
    # A feedback refit weighs the user's feedback labels this much more than imported ones (corrections
    # are the newest, hardest mail), and doubles the corrected message's weight (at most
    # feedback_max_doublings times) until the refit model puts it on the user's side of their cutoff.
    feedback_weight: float = 4.0
    # Nightly training also learns the spam and ham verdicts (never unsure) that nobody corrected
    # within autolearn_after_hours, from the last autolearn_days (SpamAssassin's bayes_auto_learn does
    # the same on by default). 12 hours: a user reads the day's mail the same day; a later correction
    # still wins, since any label of the user replaces the verdict.  30 days: the raw-mail retention.
    autolearn: bool = True
    autolearn_after_hours: float = 12.0
    autolearn_days: float = 30.0
    feedback_max_doublings: int = 8
    chunk_size: int = 1000
    seed: int = 0
    # Filter mode passes larger messages through unscanned (spamc's --max-size default is 500 KB).
    max_message_bytes: int = 512_000
    # classify registers a user it does not know (and logs their verdicts) only when this is set.
    auto_create_users: bool = False
    # spamtl serve: worker processes (scoring is CPU-bound under the GIL: one per core; this machine has 2).
    serve_workers: int = 2
    # spamtl serve: connections served at once over all workers (more get EX_TEMPFAIL and spamc passes
    # the mail through); 64 is 8 times spamd's default --max-children and far below the fd limit.
    serve_max_connections: int = 64
    # spamtl serve: seconds a client has to send a whole request (spamd's --timeout-tcp default).
    serve_read_timeout: float = 30.0
    # spamtl serve: seconds a client has to send the request line and headers (spamc sends them at once);
    # a client that trickles them (slowloris) is dropped after this, long before serve_read_timeout.
    serve_header_timeout: float = 5.0
    # spamtl serve: a worker whose event loop has not reported for this many seconds is stuck (a request
    # takes a fraction of a second, a refit runs in a thread): the supervisor kills and replaces it.
    serve_hung_timeout: float = 30.0
    # spamtl serve: connections one client may hold open at once (a client is a local account, known by
    # its uid, or a remote address).  Trusted clients (serve_trusted) are not limited: they carry everyone's mail.
    serve_max_per_client: int = 8
    # spamtl serve: answer TELL (spamc -L / -C) at all.  Off by default, as spamd's --allow-tell: a client
    # then teaches only users it may act for (itself, or everyone for a trusted account).
    serve_allow_tell: bool = False
    # spamtl serve: local accounts (names or uids) that act for every user: the mail system's own account
    # (Postfix's pipe user, Dovecot's mail user, vmail).  root and the daemon's own account always do.
    serve_trusted: tuple[str, ...] = ()
    # spamtl serve: client networks (CIDR) that act for every user over TCP (a remote MTA, with --allow-remote).
    serve_trusted_networks: tuple[str, ...] = ()
    # spamtl serve: the Unix socket's mode (octal) and group; clients need read and write to connect.
    serve_socket_mode: str = "0660"
    serve_socket_group: str | None = None
    # spamtl serve: seconds between two checks of the store generation; changes are seen within this.
    serve_refresh_interval: float = 0.25
    # spamtl serve: seconds a verdict may wait to be logged (group commit: one transaction per batch, in a
    # writer thread).  At a worker's full rate (~400 msg/s) 0.05 s batches ~20 verdicts, so the write
    # lock is taken 20 times a second instead of 400; a verdict is stored long before the next refresh
    # (0.25 s); a graceful stop writes every queued verdict, a killed worker loses at most this much.
    serve_log_interval: float = 0.05
    # Per-user cutoffs from the configuration: user -> (spam_cutoff, ham_cutoff).
    user_cutoffs: dict[str, tuple[float, float]] = field(default_factory=dict)
    # One line per verdict, feedback and training (spamtl.logs): "stderr", "syslog", "none" or a
    # file path.  Verdict lines are INFO, so at the default level WARNING filter mode's stderr stays
    # empty on success (an MTA mails a filter's stderr back or logs it as a failure).
    log_destination: str = "stderr"
    log_level: str = "warning"
    # Filter mode adds a one-line X-Spamtl-Report header (the explanation, <= 300 chars) when set.
    filter_report: bool = False
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
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not 0.0 <= self.target_ham_fpr < 1.0:
            raise ValueError("target_ham_fpr must be in [0, 1)")
        if not 0.0 <= self.target_spam_as_ham < 1.0:
            raise ValueError("target_spam_as_ham must be in [0, 1)")
        if self.promote_relative_margin < 0:
            raise ValueError("promote_relative_margin must be >= 0")
        if self.mu_search_users < 0:
            raise ValueError("mu_search_users must be >= 0 (0: search on all users)")
        if self.mu_search_days < 0:
            raise ValueError("mu_search_days must be >= 0 (0: search every night)")
        if self.train_workers < 1:
            raise ValueError("train_workers must be at least 1")
        if self.keep_promoted_versions < 1:
            raise ValueError("keep_promoted_versions must be at least 1 (the active model)")
        for name in ("raw_retention_days", "classification_retention_days"):
            days = getattr(self, name)
            if days is not None and days < 0:
                raise ValueError(f"{name} must be >= 0 or None (keep forever)")
        self._check_training_and_serving()

    def _check_training_and_serving(self) -> None:
        """Values a night's training or the daemon would otherwise reject minutes later, or misuse silently."""
        for name in ("alphas", "mus"):
            grid = getattr(self, name)
            if not grid or not all(isinstance(v, (int, float)) and 0.0 < v < math.inf for v in grid):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {list(grid)!r}")
        if self.task_weighting not in ("sample", "task"):
            raise ValueError(f"task_weighting must be 'sample' or 'task', got {self.task_weighting!r}")
        if self.cv_folds < 2:
            raise ValueError("cv_folds must be at least 2 (every label is scored by a model fitted without it)")
        if not 0.0 < self.min_spam_cutoff < 1.0:
            raise ValueError("min_spam_cutoff must be between 0 and 1 (exclusive)")
        if not 0.0 < self.holdout_fraction < 1.0 or self.holdout_min < 1:
            raise ValueError("holdout_fraction must be between 0 and 1 (exclusive) and holdout_min at least 1")
        at_least = {"tol": (0.0, False), "max_iter": (1, True), "feedback_weight": (0.0, False),
                    "feedback_max_doublings": (0, True), "cutoff_shrinkage": (0.0, True),
                    "promote_tolerance": (0.0, True), "promote_margin_se": (0.0, True),
                    "autolearn_after_hours": (0.0, True),
                    "autolearn_days": (0.0, True), "chunk_size": (1, True), "max_message_bytes": (1, True),
                    "serve_workers": (1, True), "serve_max_connections": (1, True),
                    "serve_read_timeout": (0.0, False), "serve_refresh_interval": (0.0, True),
                    "serve_header_timeout": (0.0, False), "serve_max_per_client": (1, True),
                    "serve_hung_timeout": (0.0, False),
                    "serve_log_interval": (0.0, True)}
        for name, (low, inclusive) in at_least.items():
            value = getattr(self, name)
            if not (value >= low if inclusive else value > low) or value != value:
                raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value!r}")
        if not re.fullmatch(r"0?[0-7]{3}", self.serve_socket_mode):
            raise ValueError(f"serve_socket_mode must be an octal mode such as 0660, got {self.serve_socket_mode!r}")
        for network in self.serve_trusted_networks:
            import ipaddress  # only when configured: the classify path starts without it

            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"serve_trusted_networks: {network!r} is not an address or network "
                                 "such as 192.0.2.10 or 192.0.2.0/24") from None
        for user, (spam, ham) in self.user_cutoffs.items():
            if not 0.0 <= ham <= spam <= 1.0:
                raise ValueError(f"users.{user}: cutoffs must satisfy 0 <= ham_cutoff <= spam_cutoff <= 1")

    def autolearn_window(self, now: datetime) -> tuple[datetime, datetime] | None:
        """When the verdicts learned as labels were logged (None: autolearn is off)."""
        if not self.autolearn:
            return None
        return now - timedelta(days=self.autolearn_days), now - timedelta(hours=self.autolearn_after_hours)

    def verdict(self, probability: float) -> str:
        """The verdict at the global cutoffs (see :func:`verdict_at`)."""
        return verdict_at(probability, self.spam_cutoff, self.ham_cutoff)


def verdict_at(probability: float, spam_cutoff: float, ham_cutoff: float) -> str:
    """spam at or above ``spam_cutoff``, ham at or below ``ham_cutoff``, unsure between (SpamBayes' band)."""
    if probability >= spam_cutoff:
        return "spam"
    if probability <= ham_cutoff:
        return "ham"
    return "unsure"


NAME_MAX_CHARS = 255
"""Longest user or group name (the store's column width)."""


def validate_name(name: str, what: str = "user") -> str:
    """``name`` if it is a usable user or group name, else a UsageError saying why.

    Printable characters only (no control characters or newlines, which would
    forge log lines and headers), 1 to 255 of them, no surrounding spaces, and
    not starting with ``-`` (it would read as an option).
    """
    from spamtl.errors import UsageError

    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    if not name:
        raise UsageError(f"the {what} name must not be empty")
    if len(name) > NAME_MAX_CHARS:
        raise UsageError(f"the {what} name {shown} is longer than {NAME_MAX_CHARS} characters")
    if not name.isprintable():
        raise UsageError(f"the {what} name {shown} has control characters; use printable characters only")
    if name != name.strip():
        raise UsageError(f"the {what} name {shown} starts or ends with a space")
    if name.startswith("-"):
        raise UsageError(f"the {what} name {shown} starts with '-'; names must not look like options")
    return name


def database_url_from_env(explicit: str | None) -> str:
    """``--db`` if given, else ``$SPAMTL_DATABASE_URL``, else the per-user default."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return env
    return default_database_url()


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """``sqlite:///`` URL of ``$XDG_DATA_HOME/spamtl/spamtl.sqlite3`` (``~/.local/share`` by default)."""
    base = (os.environ if env is None else env).get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'spamtl' / 'spamtl.sqlite3'}"
