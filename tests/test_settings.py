"""Configuration: TOML files, environment, options; precedence, sources, errors; spamtl config / --version."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl import __version__
from spamtl.cli.app import app
from spamtl.errors import redact
from spamtl.settings import ConfigError, Settings, load_settings

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no config anywhere (XDG_CONFIG_HOME points at an empty folder)."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "XDG_DATA_HOME": str(tmp_path / "data")}


def test_defaults_everywhere_without_sources(env: dict[str, str], tmp_path: Path) -> None:
    loaded = load_settings(env=env, system_path=tmp_path / "none.toml")
    assert loaded.settings.spam_cutoff == 0.90 and loaded.sources == {} and loaded.files == ()
    assert loaded.settings.database_url == f"sqlite:///{tmp_path / 'data' / 'spamtl' / 'spamtl.sqlite3'}"


def test_precedence_option_env_user_system_default(env: dict[str, str], tmp_path: Path) -> None:
    system = write(tmp_path / "etc.toml", "spam_cutoff = 0.91\nham_cutoff = 0.11\nmax_iter = 7\nseed = 3\n")
    user = write(tmp_path / "xdg" / "spamtl" / "config.toml", "spam_cutoff = 0.92\nham_cutoff = 0.12\nmax_iter = 8\n")
    env = {**env, "SPAMTL_SPAM_CUTOFF": "0.93", "SPAMTL_MAX_ITER": "9", "SPAMTL_DATABASE_URL": "sqlite:////env.db"}
    loaded = load_settings({"spam_cutoff": 0.94, "database_url": None}, env=env, system_path=system)
    s = loaded.settings
    assert (s.spam_cutoff, s.ham_cutoff, s.max_iter, s.seed, s.tol) == (0.94, 0.12, 9, 3, 1e-5)
    assert s.database_url == "sqlite:////env.db"
    assert loaded.sources == {"spam_cutoff": "option --spam-cutoff", "ham_cutoff": str(user),
                              "max_iter": "environment SPAMTL_MAX_ITER", "seed": str(system),
                              "database_url": "environment SPAMTL_DATABASE_URL"}
    assert loaded.files == (str(system), str(user))


def test_explicit_config_replaces_both_files(env: dict[str, str], tmp_path: Path) -> None:
    system = write(tmp_path / "etc.toml", "seed = 3\n")
    write(tmp_path / "xdg" / "spamtl" / "config.toml", "max_iter = 8\n")
    own = write(tmp_path / "own.toml", "tol = 0.001\n")
    for loaded in (load_settings(env={**env, "SPAMTL_CONFIG": str(own)}, system_path=system),
                   load_settings(config=own, env=env, system_path=system)):
        assert (loaded.settings.seed, loaded.settings.max_iter, loaded.settings.tol) == (0, 500, 0.001)
        assert loaded.files == (str(own),)


def test_every_settings_field_is_loadable_by_name(env: dict[str, str], tmp_path: Path) -> None:
    """Each field, set in a file to a non-default value of its type, comes back with that value."""
    toml = """
database_url = "sqlite:////x.db"
spam_cutoff = 0.95
ham_cutoff = 0.05
alphas = [0.1, 1]
mus = [5.0]
task_weighting = "task"
idf = false
tol = 0.01
max_iter = 9
holdout_fraction = 0.5
holdout_min = 3
promote_tolerance = 0.25
chunk_size = 10
seed = 42
max_message_bytes = 1000
auto_create_users = true
recipient_delimiter = "+-"
target_ham_fpr = 0.01
target_spam_as_ham = 0.1
promote_relative_margin = 0.25
log_destination = "none"
log_level = "info"
filter_report = true
cv_folds = 5
promote_margin_se = 1.0
cutoff_confidence = 0.95
min_spam_cutoff = 0.6
feedback_weight = 2.0
feedback_max_doublings = 3
autolearn = false
autolearn_after_hours = 6.0
autolearn_days = 10.0
serve_workers = 4
serve_max_connections = 8
serve_read_timeout = 5.0
serve_refresh_interval = 0.5
serve_log_interval = 0.2
serve_header_timeout = 2.5
serve_max_per_client = 3
serve_allow_tell = true
serve_trusted = ["mail", "1234"]
serve_trusted_networks = ["192.0.2.0/24"]
serve_socket_mode = "0600"
serve_socket_group = "mail"
serve_hung_timeout = 12.0
raw_retention_days = 7
classification_retention_days = 30
keep_promoted_versions = 2
mu_search_users = 50
mu_search_days = 3
train_workers = 1
trusted_authserv_ids = ["MX.example.org"]
serve_metrics = "127.0.0.1:9783"
web_listen = "[::1]:8080"
web_user_header = "X-Remote-User"
web_trusted_proxies = ["10.0.0.0/8"]
web_admins = ["root"]
web_secure_cookie = true
[features]
n_features = 1024
bigrams = true
tf = "log"
[users.alice]
spam_cutoff = 0.8
ham_cutoff = 0.3
"""
    loaded = load_settings(config=write(tmp_path / "all.toml", toml), env=env, system_path=None)
    s = loaded.settings
    default = Settings(database_url="")
    for f in dataclasses.fields(Settings):
        assert getattr(s, f.name) != getattr(default, f.name), f"{f.name} not loaded"
        assert loaded.sources[f.name] == str(tmp_path / "all.toml")
    assert s.alphas == (0.1, 1.0) and s.features.n_features == 1024 and s.features.tf == "log"
    assert s.user_cutoffs == {"alice": (0.8, 0.3)}
    assert s.features.authserv_ids == ("mx.example.org",)  # the features carry the site's trusted ids


def test_a_new_field_is_picked_up_without_code_changes(env: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import spamtl.settings as sf

    @dataclasses.dataclass(frozen=True)
    class Extended(Settings):
        retention_days: int = 365
        dropped: float | None = None

    monkeypatch.setattr(sf, "Settings", Extended)
    path = write(tmp_path / "c.toml", "retention_days = 30\n")
    loaded = load_settings(config=path, env={**env, "SPAMTL_DROPPED": "0.5"}, system_path=None)
    assert loaded.settings.retention_days == 30 and loaded.settings.dropped == 0.5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as err:
        load_settings(config=write(tmp_path / "d.toml", "retention_days = -1\n"), env=env, system_path=None)
    assert str(err.value) == f"{tmp_path / 'd.toml'}: retention_days must be an integer >= 0, got -1"


def test_a_retired_setting_in_a_file_is_a_warning_not_an_error(env: dict[str, str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An upgrade must not stop the filter over a setting the new version no longer has."""
    path = write(tmp_path / "old.toml", "cutoff_shrinkage = 100.0\nseed = 3\n")
    loaded = load_settings(config=path, env=env, system_path=None)
    assert loaded.settings.seed == 3
    assert capsys.readouterr().err == (f"spamtl: {path}: setting 'cutoff_shrinkage' is no longer used (trained "
                                       "cutoffs follow cutoff_confidence, docs/training.md); ignored\n")
    with pytest.raises(ConfigError):  # any other unknown name is still an error
        load_settings(config=write(tmp_path / "typo.toml", "cutof_confidence = 0.9\n"), env=env, system_path=None)


def test_environment_values_are_parsed_by_type(env: dict[str, str]) -> None:
    loaded = load_settings(env={**env, "SPAMTL_IDF": "no", "SPAMTL_MUS": "10, 1", "SPAMTL_ALPHAS": "[0.5]",
                                "SPAMTL_MAX_ITER": "1_000", "SPAMTL_FEATURES": "{n_features = 2048}",
                                "SPAMTL_USER_CUTOFFS": '{bob = [0.7, 0.1]}', "SPAMTL_BUSY_TIMEOUT": "3"},
                           system_path=None)
    s = loaded.settings
    assert (s.idf, s.mus, s.alphas, s.max_iter, s.features.n_features) == (False, (10.0, 1.0), (0.5,), 1000, 2048)
    assert s.user_cutoffs == {"bob": (0.7, 0.1)}
    assert loaded.sources["idf"] == "environment SPAMTL_IDF"


@pytest.mark.parametrize(("text", "message"), [
    ('spam_cutoff = "high"', 'spam_cutoff must be a number between 0 and 1, got "high"'),
    ("spam_cutoff = 1.5", "spam_cutoff must be a number between 0 and 1, got 1.5"),
    ("spam_cutof = 0.5", "unknown setting 'spam_cutof'; did you mean 'spam_cutoff'?"),
    ("zzz = 1", "unknown setting 'zzz'; `spamtl config` lists every setting"),
    ("max_iter = 2.5", "max_iter must be an integer >= 1, got 2.5"),
    ("idf = 1", "idf must be true or false, got 1"),
    ('mus = ["a"]', "mus must be a list of numbers >= 0, got ['a']"),
    ("spam_cutoff = 0.1\nham_cutoff = 0.5", "cutoffs must satisfy 0 <= ham_cutoff <= spam_cutoff <= 1"),
    ('log_level = "loud"', "log_level must be one of debug, info, warning, error, got 'loud'"),
    ("[users.bob]\nspam_cutoff = 0.5", "users.bob needs ham_cutoff"),
    ("[users.bob]\nspam_cutoff = 2\nham_cutoff = 0.1", "users.bob.spam_cutoff must be a number between 0 and 1, "
                                                      "got 2"),
    ("[features]\nn_features = 1000", "features must be valid (n_features must be a power of two in "
                                      "[2**10, 2**24], got 1000), got {'n_features': 1000}"),
    ("spam_cutoff = ", None),
], ids=["word", "range", "typo", "unknown", "int", "bool", "list", "order", "level", "user-missing",
        "user-range", "features", "syntax"])
def test_file_errors_are_one_line_naming_file_and_key(env: dict[str, str], tmp_path: Path, text: str,
                                                      message: str | None) -> None:
    path = write(tmp_path / "bad.toml", text + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config=path, env=env, system_path=None)
    if message is None:
        assert str(err.value).startswith(f"{path}: not valid TOML (")
    else:
        assert str(err.value) == f"{path}: {message}"
    assert "\n" not in str(err.value)


def test_env_and_option_errors_name_their_source(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={**env, "SPAMTL_SPAM_CUTOFF": "high"}, system_path=None)
    assert str(err.value) == 'SPAMTL_SPAM_CUTOFF: spam_cutoff must be a number between 0 and 1, got "high"'
    with pytest.raises(ConfigError) as err:
        load_settings(env={**env, "SPAMTL_CONFIG": str(tmp_path / "missing.toml")}, system_path=None)
    assert str(err.value) == f"{tmp_path / 'missing.toml'}: no such configuration file"


def test_the_database_password_is_masked() -> None:
    assert redact("postgresql+psycopg://spam:s3cr:et@db.example/spamtl") == \
        "postgresql+psycopg://spam:***@db.example/spamtl"
    assert redact("sqlite:////var/lib/spamtl.db") == "sqlite:////var/lib/spamtl.db"


def test_cli_version_config_and_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPAMTL_CONFIG", raising=False)
    monkeypatch.setenv("SPAMTL_DATABASE_URL", "postgresql://u:pw@h/db")
    monkeypatch.setenv("SPAMTL_HAM_CUTOFF", "0.15")
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"spamtl {__version__}\n"
    cfg = write(tmp_path / "c.toml", "spam_cutoff = 0.97\n")
    result = runner.invoke(app, ["--config", str(cfg), "config", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["files"] == [str(cfg)]
    assert data["settings"]["spam_cutoff"] == {"value": 0.97, "source": str(cfg)}
    assert data["settings"]["ham_cutoff"] == {"value": 0.15, "source": "environment SPAMTL_HAM_CUTOFF"}
    assert data["settings"]["database_url"] == {"value": "postgresql://u:***@h/db",
                                                "source": "environment SPAMTL_DATABASE_URL"}
    assert data["settings"]["seed"] == {"value": 0, "source": "default"}
    assert set(data["settings"]) == {f.name for f in dataclasses.fields(Settings)}
    result = runner.invoke(app, ["config", "--db", "sqlite:////o.db"])
    assert result.exit_code == 0
    assert [line.split() for line in result.stdout.splitlines() if line.startswith("database_url")] == \
        [["database_url", "sqlite:////o.db", "option", "--db"]]
    assert "pw" not in runner.invoke(app, ["config"]).stdout
    # the next invocation without --config does not see the previous one's file
    result = runner.invoke(app, ["config", "--format", "json"])
    assert json.loads(result.stdout)["settings"]["spam_cutoff"]["source"] == "default"


def test_cli_bad_config_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", 'spam_cutoff = "high"\n')
    monkeypatch.setenv("SPAMTL_CONFIG", str(cfg))
    result = runner.invoke(app, ["users"])
    assert result.exit_code == 1
    assert result.stderr == f'Error: {cfg}: spam_cutoff must be a number between 0 and 1, got "high"\n'


def test_package_version_matches_pyproject() -> None:
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["version"] == __version__


def test_trusted_authserv_ids_reach_the_features_and_bad_ones_are_one_line(env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    loaded = load_settings(env={**env, "SPAMTL_TRUSTED_AUTHSERV_IDS": "mx2.example.org, MX.example.org"},
                           system_path=None)
    assert loaded.settings.features.authserv_ids == ("mx.example.org", "mx2.example.org")
    assert Settings(database_url="").features.authserv_ids == ()  # none by default: nothing is trusted
    path = write(tmp_path / "bad.toml", 'trusted_authserv_ids = ["mx example.org"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config=path, env=env, system_path=None)
    assert str(err.value) == (f"{path}: trusted_authserv_ids: authserv-id 'mx example.org' is not a host or "
                              "domain name such as mx.example.org")
    with pytest.raises(ConfigError) as err:
        load_settings(config=write(tmp_path / "worse.toml", "trusted_authserv_ids = 5\n"), env=env, system_path=None)
    assert str(err.value).startswith(f"{tmp_path / 'worse.toml'}: trusted_authserv_ids must be a list of ")
    assert str(err.value).endswith("got 5")
