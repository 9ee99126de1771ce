"""The one Settings object: every tunable, its default and range, and where its value came from.

Precedence, highest first::

    command-line option > environment (SPAMTL_<NAME>) > user config file > system config file > default

The user file is ``--config``/``$SPAMTL_CONFIG`` (which then replaces both files) or
``$XDG_CONFIG_HOME/spamtl/config.toml``; the system file is ``/etc/spamtl/config.toml``.  Every field of
:class:`Settings` is read from every source by its name (docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spamtl.errors import SpamtlError, UsageError, redact
from spamtl.features import FeatureConfig, authserv_ids
from spamtl.model import DEFAULT_MAX_ITER, DEFAULT_TOL

__all__ = ["Settings", "LoadedSettings", "ConfigError", "load_settings", "load_command_line", "verdict_at",
           "validate_name", "default_database_url", "user_config_path", "ENV_DATABASE_URL", "ENV_CONFIG",
           "ENV_PREFIX", "SYSTEM_CONFIG", "LOG_LEVELS", "NAME_MAX_CHARS", "check_listen_host"]

ENV_DATABASE_URL = "SPAMTL_DATABASE_URL"
ENV_CONFIG = "SPAMTL_CONFIG"
ENV_PREFIX = "SPAMTL_"
SYSTEM_CONFIG = Path("/etc/spamtl/config.toml")
USERS_TABLE = "users"
"""The TOML table holding per-user cutoffs (``[users.alice]``), the ``user_cutoffs`` field."""
LOG_LEVELS = ("debug", "info", "warning", "error")
NAME_MAX_CHARS = 255
"""Longest user or group name (the store's column width)."""


def _setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
             ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
             in_type: bool = False, check: Callable[[Any], bool] | None = None,
             message: str | Callable[[Any], str | None] | None = None) -> Any:
    """A Settings field with its range (per element for a list) and an optional extra ``check``.

    A value outside the range or failing ``check`` is refused with ``message``
    (``{name}`` and ``{value}`` filled in), by default ``NAME must be >= LOW, got VALUE``;
    a callable ``message`` is the whole check: it returns what is wrong, or None.
    ``in_type``: the range's closure is part of the type a file, environment or
    option value must have, so such a value outside it reads "must be a number
    between 0 and 1, got 2" (integers are otherwise >= 0, other numbers unbounded).
    """
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt, "in_type": in_type, "check": check, "message": message}
    return field(default=default, default_factory=factory, metadata=metadata)


_CUTOFFS = "cutoffs must satisfy 0 <= ham_cutoff <= spam_cutoff <= 1"
_GRID = "{name} must be a non-empty list of positive numbers, got {value!r}"
_HOLDOUT = "holdout_fraction must be between 0 and 1 (exclusive) and holdout_min at least 1"
_KEEP_FOREVER = "{name} must be >= 0 or None (keep forever)"


def _bad_network(networks: tuple[str, ...], name: str = "serve_trusted_networks") -> str | None:
    for network in networks:
        import ipaddress  # only when configured: the classify path starts without it

        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            return (f"{name}: {network!r} is not an address or network "
                    "such as 192.0.2.10 or 192.0.2.0/24")
    return None


def _bad_user(cutoffs: Mapping[str, tuple[float, float]]) -> str | None:
    for user, (spam, ham) in cutoffs.items():
        if not 0.0 <= ham <= spam <= 1.0:
            return f"users.{user}: {_CUTOFFS}"
    return None


def _bad_authserv_ids(ids: tuple[str, ...]) -> str | None:
    try:
        authserv_ids(ids)
    except ValueError as exc:
        return f"trusted_authserv_ids: {exc}"
    return None


def _is_host_port(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)


def check_listen_host(host: str, allow_remote: bool) -> None:
    """Refuse (UsageError) to listen on a non-loopback ``host`` unless ``allow_remote``: the daemon, the web
    pages and the metrics endpoints listen on loopback by default."""
    if allow_remote:
        return
    import ipaddress

    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise UsageError(f"refusing to listen on {host} (not a loopback address); "
                         "add --allow-remote to accept connections from other hosts")


def _is_delimiter_set(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 8 and all(
        c.isprintable() and not c.isalnum() and not c.isspace() and c != "@" for c in value)


def _is_octal_mode(mode: Any) -> bool:
    return isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3}", mode) is not None


@dataclass(frozen=True)
class Settings:
    """What a service needs to know; build one per command and pass it in.

    ``spam_cutoff`` and ``ham_cutoff`` bound the *unsure* band: probability
    >= spam_cutoff is spam, <= ham_cutoff is ham, anything between is unsure
    (as SpamBayes does).  docs/operations.md lists every setting.
    """

    database_url: str
    # The verdict band, in probability.  Ham at or below 0.5: more likely ham than spam.
    spam_cutoff: float = _setting(0.90, ge=0.0, le=1.0, in_type=True, message=_CUTOFFS)
    ham_cutoff: float = _setting(0.5, ge=0.0, le=1.0, in_type=True, message=_CUTOFFS)
    features: FeatureConfig = _setting(factory=FeatureConfig)
    # The authserv-ids of the site's own MTAs: their Authentication-Results fields, where the trust rule
    # accepts them, feed the features' auth family (docs/model.md).  None by default: nothing is trusted.
    trusted_authserv_ids: tuple[str, ...] = _setting((), message=_bad_authserv_ids)
    # Hyper-parameter grid searched at training time: overall strength and task relatedness.
    alphas: tuple[float, ...] = _setting((0.01,), gt=0.0, lt=math.inf, in_type=True, check=bool, message=_GRID)
    mus: tuple[float, ...] = _setting((100.0, 10.0, 3.0, 1.0), gt=0.0, lt=math.inf, in_type=True, check=bool,
                                      message=_GRID)
    # "sample": every message weighs alike in the loss; "task": every user alike.
    task_weighting: str = _setting("sample", check=lambda v: v in ("sample", "task"),
                                   message="{name} must be 'sample' or 'task', got {value!r}")
    idf: bool = True  # reweight rows by inverse document frequency
    # The solver's stopping tolerance and iteration limit: the estimator's defaults.
    tol: float = _setting(DEFAULT_TOL, gt=0.0, in_type=True)
    max_iter: int = _setting(DEFAULT_MAX_ITER, ge=1, in_type=True)
    # `spamtl evaluate --chronological` only: the newest share of each user's mail held out, and at
    # least this many messages per user and class; training holds nothing out.
    holdout_fraction: float = _setting(0.15, gt=0.0, lt=1.0, in_type=True, message=_HOLDOUT)
    holdout_min: int = _setting(2, ge=1, message=_HOLDOUT)
    # Cross-fitting folds of nightly training, grouped by message: every label gets an out-of-sample score.
    cv_folds: int = _setting(3, ge=2, message="cv_folds must be at least 2 (every label is scored by a model "
                                              "fitted without it)")
    # Beyond this many users the mu grid is searched on a seeded sample of this many, then the chosen
    # mu alone is fitted on everyone (0: always search on all users) ...
    mu_search_users: int = _setting(500, ge=0, message="mu_search_users must be >= 0 (0: search on all users)")
    # ... and at most every this many days; the nights between reuse the active alpha and mu (0: every night).
    mu_search_days: int = _setting(7, ge=0, message="mu_search_days must be >= 0 (0: search every night)")
    # Worker processes for training's independent fits, and threads for a projected fit's chunks of
    # users; each holds one fold's or chunk's arrays, so memory grows with it.
    train_workers: int = _setting(2, ge=1, message="train_workers must be at least 1")
    # The gate refuses a candidate whose mean log loss (per user, then over users) on mail neither model
    # was fitted on exceeds the active model's by more than promote_tolerance (nats) plus
    # promote_margin_se standard errors of the paired difference plus promote_relative_margin times the
    # active model's log loss (the comparison leans against the candidate, which is scored by fits on
    # (K-1)/K of the labels; docs/training.md).
    promote_tolerance: float = _setting(0.0, ge=0.0)
    promote_margin_se: float = _setting(3.0, ge=0.0)
    promote_relative_margin: float = _setting(0.5, ge=0, message="promote_relative_margin must be >= 0")
    # Trained spam cutoffs aim at this ham false-positive rate (0: every user keeps spam_cutoff and
    # ham_cutoff).
    target_ham_fpr: float = _setting(0.001, ge=0.0, lt=1.0, in_type=True, message="target_ham_fpr must be in [0, 1)")
    # A user's trained cutoffs move from the shared ones only as far as the user's own labels show at this
    # one-sided confidence (exact binomial bounds; docs/training.md).
    cutoff_confidence: float = _setting(0.9, ge=0.5, lt=1.0, message="cutoff_confidence must be in [0.5, 1)")
    # Trained spam cutoffs stay above this (and above ham_cutoff): never spam what is more likely ham.
    min_spam_cutoff: float = _setting(0.5, gt=0.0, lt=1.0, message="min_spam_cutoff must be between 0 and 1 "
                                                                   "(exclusive)")
    # Trained ham cutoffs aim at calling at most this share of spam (scored out of sample) ham, never
    # below ham_cutoff (0: ham_cutoff for everyone).
    target_spam_as_ham: float = _setting(0.05, ge=0.0, lt=1.0, message="target_spam_as_ham must be in [0, 1)")
    # A feedback refit weighs the user's feedback labels this many times an imported one, and doubles the
    # corrected message's weight (at most feedback_max_doublings times) until it lands on the user's side.
    feedback_weight: float = _setting(4.0, gt=0.0)
    # Nightly training also learns the spam and ham verdicts nobody corrected within autolearn_after_hours
    # (hours), from the last autolearn_days (days); a later correction still wins.
    autolearn: bool = True
    autolearn_after_hours: float = _setting(12.0, ge=0.0)
    autolearn_days: float = _setting(30.0, ge=0.0)
    feedback_max_doublings: int = _setting(8, ge=0)
    chunk_size: int = _setting(1000, ge=1, in_type=True)  # messages per import transaction and feedback chunk
    seed: int = 0  # of cross-fitting folds, evaluate's splits and the mu search's sample of users
    # Filter mode and the daemon pass larger messages (bytes) through unscanned (spamc's --max-size is 500 KB).
    max_message_bytes: int = _setting(512_000, ge=1, in_type=True)
    # classify registers a user it does not know (and logs their verdicts) only when this is set.
    auto_create_users: bool = False
    # Postfix's recipient_delimiter ("+", or several characters such as "+-"): filter mode and the daemon
    # take a recipient the store does not know, alice+lists@example.org, as alice@example.org
    # (address_without_extension).  Empty: every name as it comes.
    recipient_delimiter: str = _setting("", check=_is_delimiter_set,
                                        message="{name} must be at most 8 characters that are neither letters, "
                                                "digits, blanks nor '@' (Postfix's recipient_delimiter), "
                                                "got {value!r}")
    # spamtl serve: worker processes (scoring is CPU-bound under the GIL: one per core).
    serve_workers: int = _setting(2, ge=1)
    # spamtl serve: connections served at once over all workers; more get EX_TEMPFAIL and spamc passes
    # the mail through.
    serve_max_connections: int = _setting(64, ge=1)
    # spamtl serve: seconds a client has to send a whole request (spamd's --timeout-tcp default).
    serve_read_timeout: float = _setting(30.0, gt=0.0)
    # spamtl serve: seconds a client has to send the request line and headers (a slowloris client is
    # dropped after this).
    serve_header_timeout: float = _setting(5.0, gt=0.0)
    # spamtl serve: seconds without a report from a worker's event loop before it is killed and replaced.
    serve_hung_timeout: float = _setting(30.0, gt=0.0)
    # spamtl serve: connections one untrusted client (a local account or a remote address) may hold open.
    serve_max_per_client: int = _setting(8, ge=1)
    # spamtl serve: answer TELL (spamc -L / -C) at all, as spamd's --allow-tell.
    serve_allow_tell: bool = False
    # spamtl serve: local accounts (names or uids) that act for every user: the mail system's own.
    serve_trusted: tuple[str, ...] = ()
    # spamtl serve: client networks (CIDR) that act for every user over TCP.
    serve_trusted_networks: tuple[str, ...] = _setting((), message=_bad_network)
    # spamtl serve: the Unix socket's mode (octal) and group; clients need read and write to connect.
    serve_socket_mode: str = _setting("0660", check=_is_octal_mode,
                                      message="{name} must be an octal mode such as 0660, got {value!r}")
    serve_socket_group: str | None = None
    # spamtl serve: seconds between two checks of the store generation; changes are seen within this.
    serve_refresh_interval: float = _setting(0.25, ge=0.0)
    # spamtl serve: seconds a verdict may wait to be logged (one transaction per batch).
    serve_log_interval: float = _setting(0.05, ge=0.0)
    # spamtl serve: HOST:PORT of its Prometheus endpoint (GET /metrics); None serves none.
    serve_metrics: str | None = _setting(None, check=_is_host_port,
                                         message="{name} must be HOST:PORT such as 127.0.0.1:9783, got {value!r}")
    # spamtl web: HOST:PORT the pages (and /metrics) listen on; loopback unless a proxy is in front.
    web_listen: str = _setting("127.0.0.1:8783", check=_is_host_port,
                               message="{name} must be HOST:PORT such as 127.0.0.1:8783, got {value!r}")
    # spamtl web: the header a trusted reverse proxy puts the logged-in user's name in (e.g.
    # "X-Remote-User"); None (the default) accepts only tokens from `spamtl users token`.
    web_user_header: str | None = None
    # spamtl web: client addresses or networks whose web_user_header is believed (the proxy's).
    web_trusted_proxies: tuple[str, ...] = _setting(("127.0.0.1", "::1"),
                                                    message=lambda v: _bad_network(v, "web_trusted_proxies"))
    # spamtl web: names with the admin role when they log in through web_user_header.
    web_admins: tuple[str, ...] = ()
    # spamtl web: send the login cookie only over HTTPS (set it when the proxy in front speaks HTTPS).
    web_secure_cookie: bool = False
    # Per-user cutoffs from the configuration: user -> (spam_cutoff, ham_cutoff).
    user_cutoffs: dict[str, tuple[float, float]] = _setting(factory=dict, message=_bad_user)
    # One line per verdict, feedback and training (spamtl.logs): "stderr", "syslog", "none" or a file
    # path.  Verdicts are INFO, so at WARNING filter mode's stderr stays empty on success.
    log_destination: str = "stderr"
    log_level: str = _setting("warning", check=lambda v: str(v).lower() in LOG_LEVELS,
                              message="{name} must be one of " + ", ".join(LOG_LEVELS) + ", got {value!r}")
    # Filter mode adds a one-line X-Spamtl-Report header (the explanation, <= 300 characters).
    filter_report: bool = False
    # Retention (`spamtl prune`, also after every `spamtl train`), in days; None keeps forever.  Bodies of
    # mail nobody labelled, then the verdict log; labelled mail is never pruned.
    raw_retention_days: int | None = _setting(30, ge=0, message=_KEEP_FOREVER)
    classification_retention_days: int | None = _setting(180, ge=0, message=_KEEP_FOREVER)
    # Promoted model versions that keep their weights, the active one included (plus any pinned one).
    keep_promoted_versions: int = _setting(5, ge=1, message="keep_promoted_versions must be at least 1 "
                                                           "(the active model)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.ham_cutoff <= self.spam_cutoff <= 1.0:
            raise ValueError(_CUTOFFS)
        for f in dataclasses.fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem is not None:
                raise ValueError(problem)
        if self.features.authserv_ids != authserv_ids(self.trusted_authserv_ids):
            # The feature configuration carries them, so training, scoring and the feature cache all see them.
            object.__setattr__(self, "features",
                               dataclasses.replace(self.features, authserv_ids=self.trusted_authserv_ids))

    def autolearn_window(self, now: datetime) -> tuple[datetime, datetime] | None:
        """When the verdicts learned as labels were logged (None: autolearn is off)."""
        if not self.autolearn:
            return None
        return now - timedelta(days=self.autolearn_days), now - timedelta(hours=self.autolearn_after_hours)

    def verdict(self, probability: float) -> str:
        """The verdict at the global cutoffs (see :func:`verdict_at`)."""
        return verdict_at(probability, self.spam_cutoff, self.ham_cutoff)


def _in_range(meta: Mapping[str, Any], value: Any) -> bool:
    """``value`` is a number (not NaN) within the field's range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return False
    return ((meta["ge"] is None or value >= meta["ge"]) and (meta["gt"] is None or value > meta["gt"])
            and (meta["le"] is None or value <= meta["le"]) and (meta["lt"] is None or value < meta["lt"]))


def _problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    """Why ``value`` does not fit field ``f``'s range and check, or None."""
    meta, is_list = f.metadata, isinstance(f.default, tuple)
    if not meta or (value is None and "None" in str(f.type)):
        return None
    message = meta["message"]
    if callable(message):
        return message(value)  # type: ignore[no-any-return]
    ranged = any(meta[k] is not None for k in ("ge", "gt", "le", "lt"))
    items = value if is_list else (value,)
    if (meta["check"] is None or meta["check"](value)) and (not ranged or all(_in_range(meta, v) for v in items)):
        return None
    if message is None:
        op, bound = (">=", meta["ge"]) if meta["ge"] is not None else (">", meta["gt"])
        return f"{f.name} must be {op} {bound}, got {value!r}"
    return message.format(name=f.name, value=list(value) if is_list else value)


def verdict_at(probability: float, spam_cutoff: float, ham_cutoff: float) -> str:
    """spam at or above ``spam_cutoff``, ham at or below ``ham_cutoff``, unsure between (SpamBayes' band)."""
    if probability >= spam_cutoff:
        return "spam"
    if probability <= ham_cutoff:
        return "ham"
    return "unsure"


def validate_name(name: str, what: str = "user") -> str:
    """``name`` if it is a usable user or group name, else a UsageError saying why.

    Printable characters only (no control characters or newlines, which would
    forge log lines and headers), 1 to 255 of them, no surrounding spaces, and
    not starting with ``-`` (it would read as an option).
    """
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


def address_without_extension(name: str, delimiters: str) -> str:
    """``name`` without its address extension: what Postfix delivers ``user+ext@domain`` to.

    Postfix's rule (``recipient_delimiter``): the local part (before the last ``@``, or the whole name)
    ends at its first character in ``delimiters``, unless that is its first character; with ``-``
    among them, ``owner-*`` and ``*-request`` keep theirs (mailing-list addresses).  No delimiters:
    ``name`` unchanged.

    Examples
    --------
    >>> address_without_extension("alice+lists@example.org", "+")
    'alice@example.org'
    >>> address_without_extension("bob-news", "+-"), address_without_extension("+x@example.org", "+")
    ('bob', '+x@example.org')
    >>> address_without_extension("owner-list@example.org", "-"), address_without_extension("a+b", "")
    ('owner-list@example.org', 'a+b')
    """
    if not delimiters:
        return name
    local, at, domain = name.rpartition("@")
    if not at:
        local, domain = name, ""
    lowered = local.lower()
    if "-" in delimiters and (lowered.startswith("owner-") or (len(local) > 8 and lowered.endswith("-request"))):
        return name
    cut = next((i for i, c in enumerate(local) if c in delimiters), 0)
    return local[:cut] + at + domain if cut > 0 else name


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """``sqlite:///`` URL of ``$XDG_DATA_HOME/spamtl/spamtl.sqlite3`` (``~/.local/share`` by default)."""
    base = (os.environ if env is None else env).get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'spamtl' / 'spamtl.sqlite3'}"


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/spamtl/config.toml`` (``~/.config`` by default)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "spamtl" / "config.toml"


# ------------------------------------------------------------------ sources
class ConfigError(SpamtlError):
    """A configuration file, environment variable or option has a bad key or value."""


@dataclass(frozen=True)
class LoadedSettings:
    """The effective settings and, per field, where its value came from."""

    settings: Settings
    sources: dict[str, str]
    files: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, Any, str]]:
        """(name, printable value, source) per field, database passwords masked."""
        out = []
        for f in dataclasses.fields(self.settings):
            value = _plain(getattr(self.settings, f.name))
            if f.name == "database_url" and isinstance(value, str):
                value = redact(value)
            out.append((f.name, value, self.sources.get(f.name, "default")))
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_settings(options: Mapping[str, Any] | None = None, *, config: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None, system_path: Path | None = SYSTEM_CONFIG,
                  option_names: Mapping[str, str] | None = None) -> LoadedSettings:
    """Settings from every source, with where each value came from (see the module docstring).

    Parameters
    ----------
    options : mapping of field name -> value
        Values given on the command line (None = not given).
    config : path, optional
        ``--config``: the user configuration file (overrides ``$SPAMTL_CONFIG``).
    env : mapping, optional
        The environment (``os.environ`` by default).
    system_path : Path or None
        The system-wide file (``/etc/spamtl/config.toml``); None to skip it.
    option_names : mapping of field name -> option spelling, for ``sources`` (``{"database_url": "--db"}``).

    Raises
    ------
    ConfigError
        One line naming the file or variable, the key and what is wrong.
    """
    env = os.environ if env is None else env
    fields = _fields()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    files = _config_files(config, env, system_path)
    for path in files:
        for key, value in _read_file(path, fields).items():
            values[key], sources[key] = value, str(path)
    for name, tp in fields.items():
        var = ENV_PREFIX + name.upper()
        text = env.get(var)
        if text is None or (text == "" and name == "database_url"):
            continue
        values[name], sources[name] = _converted(tp, name, text, var, from_text=True), f"environment {var}"
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        spelled = (option_names or {}).get(name, "--" + name.replace("_", "-"))
        values[name] = _converted(fields[name], name, value, spelled, from_text=isinstance(value, str))
        sources[name] = f"option {spelled}"
    values.setdefault("database_url", default_database_url(env))
    try:
        settings = Settings(**values)
    except (TypeError, ValueError) as exc:
        named = [k for k in values if re.search(rf"\b{k}\b", str(exc))]
        where = ", ".join(sorted({sources[k] for k in named if k in sources})) or "default"
        raise ConfigError(f"{where}: {exc}") from None
    return LoadedSettings(settings=settings, sources=sources, files=tuple(str(p) for p in files))


def load_command_line(db: str | None, options: Mapping[str, tuple[str, Any]] | None = None, *,
                      config: str | None = None) -> LoadedSettings:
    """:func:`load_settings` for one command line: its ``--db`` and ``--config`` and other ``options``.

    ``options`` maps a field to (the option's spelling, its value or None when not given).  A ``--db``
    equal to ``$SPAMTL_DATABASE_URL`` counts as the environment's (the parser fills the option from it).
    """
    if db is not None and db == os.environ.get(ENV_DATABASE_URL):
        db = None
    given = {"database_url": ("--db", db), **(options or {})}
    return load_settings({name: value for name, (_, value) in given.items()}, config=config,
                         option_names={name: spelling for name, (spelling, _) in given.items()})


def _fields() -> dict[str, Any]:
    """Each Settings field's name -> its type."""
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings) if f.init}


def _config_files(config: str | os.PathLike[str] | None, env: Mapping[str, str],
                  system_path: Path | None) -> list[Path]:
    """The files read, lowest precedence first: ``--config``/``$SPAMTL_CONFIG`` alone, else system then user."""
    explicit = str(config) if config else env.get(ENV_CONFIG) or None
    if explicit:
        return [Path(explicit).expanduser()]
    found = [system_path] if system_path is not None and system_path.is_file() else []
    return found + [p for p in (user_config_path(env),) if p.is_file()]


def _converted(tp: Any, name: str, value: Any, where: str, *, from_text: bool) -> Any:
    try:
        return _convert(tp, name, value, from_text=from_text)
    except _Bad as exc:
        raise ConfigError(f"{where}: {name} must be {exc}, got {_shown(value)}") from None


RETIRED = {"cutoff_shrinkage": "trained cutoffs follow cutoff_confidence, docs/training.md"}
"""Settings of earlier versions that a configuration file may still name: a warning, not an error, so an
upgrade never stops the filter."""


def _read_file(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    import tomllib

    where = str(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid TOML (not UTF-8)") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == USERS_TABLE and "user_cutoffs" in fields:
            values["user_cutoffs"] = _user_cutoffs(where, value)
        elif key in RETIRED:
            sys.stderr.write(f"spamtl: {where}: setting {key!r} is no longer used ({RETIRED[key]}); ignored\n")
        elif key not in fields or key == "user_cutoffs":
            import difflib

            close = difflib.get_close_matches(key, [*fields, USERS_TABLE], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; `spamtl config` lists every setting"
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        else:
            values[key] = _converted(fields[key], key, value, where, from_text=False)
    return values


def _user_cutoffs(where: str, table: Any) -> dict[str, tuple[float, float]]:
    """``[users.NAME]`` tables -> user_cutoffs."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [users] must be a table of [users.NAME] tables")
    out: dict[str, tuple[float, float]] = {}
    for user, entry in table.items():
        try:
            validate_name(user)
        except SpamtlError as exc:
            raise ConfigError(f"{where}: users.{user}: {exc}") from None
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: users.{user} must be a table with spam_cutoff and ham_cutoff")
        unknown = set(entry) - {"spam_cutoff", "ham_cutoff"}
        if unknown:
            raise ConfigError(f"{where}: users.{user}: unknown setting {sorted(unknown)[0]!r} "
                              "(use spam_cutoff and ham_cutoff)")
        values = []
        for key in ("spam_cutoff", "ham_cutoff"):
            if key not in entry:
                raise ConfigError(f"{where}: users.{user} needs {key}")
            try:
                values.append(_convert(float, key, entry[key], from_text=False))
            except _Bad as exc:
                raise ConfigError(f"{where}: users.{user}.{key} must be {exc}, got {_shown(entry[key])}") from None
        spam, ham = values
        if ham > spam:
            raise ConfigError(f"{where}: users.{user}: ham_cutoff must not be above spam_cutoff")
        out[user] = (spam, ham)
    return out


# ------------------------------------------------------------------ type conversion
class _Bad(Exception):
    """A value that does not fit its field; the message completes 'NAME must be ...'."""


def _type_range(name: str, tp: Any) -> tuple[float | None, float | None]:
    """The [low, high] (inclusive, None = open) a file/environment/option number must be in."""
    f = Settings.__dataclass_fields__.get(name)
    meta = f.metadata if f is not None else {}
    if meta and meta["in_type"]:
        low = meta["ge"] if meta["ge"] is not None else meta["gt"]
        high = meta["le"] if meta["le"] is not None else meta["lt"]
        return low, high if high is None or math.isfinite(high) else None
    return (0 if tp is int else None), None


def _describe(tp: Any, name: str) -> str:
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        low, high = _type_range(name, tp)
        what = "an integer" if tp is int else "a number"
        if low is not None and high is not None:
            return f"{what} between {low:g} and {high:g}"
        return f"{what} >= {low:g}" if low is not None else what
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0], name).replace('a number', 'numbers')}"
    if _is_optional(tp):
        return _describe(_optional_inner(tp), name) + ' (or "none")'
    return f"a {getattr(tp, '__name__', str(tp))}"


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _optional_inner(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def _shown(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(tp: Any, name: str, value: Any, *, from_text: bool) -> Any:
    """``value`` as field type ``tp``; raises _Bad.  ``from_text``: value is an environment/option string."""
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        return _convert(_optional_inner(tp), name, value, from_text=from_text)
    if tp is bool:
        return _to_bool(value, from_text=from_text)
    if tp in (int, float):
        return _to_number(tp, name, value, from_text=from_text)
    if tp is str:
        if not isinstance(value, str):
            raise _Bad(_describe(tp, name))
        return value
    if from_text and isinstance(value, str):
        text = value.strip()
        if typing.get_origin(tp) is not tuple:
            value = _toml_value(value)
        else:
            value = _toml_value(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
    if typing.get_origin(tp) is tuple:
        return _to_tuple(tp, name, value, from_text=from_text)
    if dataclasses.is_dataclass(tp):
        return _to_dataclass(tp, value, from_text=from_text)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise _Bad("a table")
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(key_tp, name, k, from_text=False): _convert(value_tp, name, v, from_text=from_text)
                for k, v in value.items()}
    raise _Bad(_describe(tp, name))


def _to_bool(value: Any, *, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    if isinstance(value, bool):
        return value
    raise _Bad(_describe(bool, ""))


def _to_number(tp: type, name: str, value: Any, *, from_text: bool) -> Any:
    number: Any = value
    if from_text and isinstance(value, str):
        try:
            number = int(value.strip().replace("_", "")) if tp is int else float(value)
        except ValueError:
            raise _Bad(_describe(tp, name)) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _Bad(_describe(tp, name))
    if tp is int and isinstance(number, float) and not number.is_integer():
        raise _Bad(_describe(tp, name))
    number = tp(number)
    low, high = _type_range(name, tp)
    if number != number or (low is not None and number < low) or (high is not None and number > high):
        raise _Bad(_describe(tp, name))
    return number


def _to_tuple(tp: Any, name: str, value: Any, *, from_text: bool) -> tuple[Any, ...]:
    args = typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise _Bad(_describe(tp, name))
    if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
        raise _Bad(_describe(tp, name))
    kinds = [args[0]] * len(value) if args[1:] == (Ellipsis,) else list(args)
    try:
        return tuple(_convert(kind, name, v, from_text=from_text) for kind, v in zip(kinds, value))
    except _Bad:
        raise _Bad(_describe(tp, name)) from None


def _to_dataclass(tp: Any, value: Any, *, from_text: bool) -> Any:
    if not isinstance(value, dict):
        raise _Bad(f"a table of {', '.join(f.name for f in dataclasses.fields(tp))}")
    hints = typing.get_type_hints(tp)
    known = {f.name for f in dataclasses.fields(tp) if f.init}
    kwargs = {}
    for key, item in value.items():
        if key not in known:
            raise _Bad(f"a table of {', '.join(sorted(known))} (unknown key {key!r})")
        kwargs[key] = _convert(hints[key], key, item, from_text=from_text)
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _Bad(f"valid ({exc})") from None


def _toml_value(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise _Bad("a TOML value") from None
