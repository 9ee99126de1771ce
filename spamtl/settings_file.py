"""Build :class:`~spamtl.config.Settings` from defaults, config files, environment and options.

Precedence, highest first::

    command-line option > environment (SPAMTL_<FIELD>) > user config file > system config file > default

- The user config file is ``$SPAMTL_CONFIG`` (or the global ``--config PATH``)
  if set, which must exist, else ``$XDG_CONFIG_HOME/spamtl/config.toml``
  (``~/.config/spamtl/config.toml``) if it exists.
- The system config file is ``/etc/spamtl/config.toml`` if it exists; it is
  skipped when ``$SPAMTL_CONFIG``/``--config`` names a file, so that one file
  says everything (tests and one-off runs are not affected by /etc).
- Every field of the ``Settings`` dataclass is a key, by its name, with its
  type: numbers, booleans, strings, arrays of numbers, ``[features]`` (the
  FeatureConfig fields) and ``[users.NAME]`` tables with ``spam_cutoff`` /
  ``ham_cutoff`` for ``user_cutoffs``.  Its environment variable is
  ``SPAMTL_`` + the upper-case name (``SPAMTL_SPAM_CUTOFF=0.95``); a
  structured value is written as a TOML value (``SPAMTL_MUS="[10, 1]"``).

A field added to Settings is picked up without changes here.  Ranges come
from a field's ``metadata`` (``field(default=3, metadata={"min": 1})``),
from :data:`RANGES` by name, or, for integers, ``>= 0``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spamtl.config import Settings, default_database_url
from spamtl.errors import SpamtlError

__all__ = ["ConfigError", "LoadedSettings", "SYSTEM_CONFIG", "ENV_CONFIG", "ENV_PREFIX", "RANGES",
           "load_settings", "user_config_path", "mask_url"]

ENV_CONFIG = "SPAMTL_CONFIG"
ENV_PREFIX = "SPAMTL_"
SYSTEM_CONFIG = Path("/etc/spamtl/config.toml")
USERS_TABLE = "users"
"""The TOML table holding per-user cutoffs (``[users.alice]``), the ``user_cutoffs`` field."""

RANGES: dict[str, tuple[float | None, float | None]] = {
    "spam_cutoff": (0.0, 1.0),
    "ham_cutoff": (0.0, 1.0),
    "target_ham_fpr": (0.0, 1.0),
    "holdout_fraction": (0.0, 1.0),
    "alphas": (0.0, None),
    "mus": (0.0, None),
    "tol": (0.0, None),
    "max_iter": (1, None),
    "chunk_size": (1, None),
    "max_message_bytes": (1, None),
}
"""Allowed [min, max] of fields whose type does not say it (both ends inclusive; None = open)."""


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
        for f in dataclasses.fields(Settings):
            value = _plain(getattr(self.settings, f.name))
            if f.name == "database_url" and isinstance(value, str):
                value = mask_url(value)
            out.append((f.name, value, self.sources.get(f.name, "default")))
        return out


def mask_url(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host`` replaced by ``***``."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url)


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "spamtl" / "config.toml"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------ conversion
def _range(name: str) -> tuple[float | None, float | None]:
    """A field's [min, max]: its ``metadata`` if it has one, else :data:`RANGES`."""
    for f in dataclasses.fields(Settings):
        if f.name == name and ("min" in f.metadata or "max" in f.metadata):
            return f.metadata.get("min"), f.metadata.get("max")
    return RANGES.get(name, (None, None))


class _Bad(Exception):
    """A value that does not fit its field; the message completes 'NAME must be ...'."""


def _describe(tp: Any, name: str) -> str:
    lo, hi = _range(name)
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        what = "an integer" if tp is int else "a number"
        if tp is int and lo is None:
            lo = 0
        if lo is not None and hi is not None:
            return f"{what} between {_num(lo)} and {_num(hi)}"
        if lo is not None:
            return f"{what} >= {_num(lo)}"
        return what
    if tp is str:
        return "a string"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0], name).replace('a number', 'numbers')}"
    if _is_optional(tp):
        return _describe(_optional_inner(tp), name) + ' (or "none")'
    return f"a {getattr(tp, '__name__', str(tp))}"


def _num(v: float) -> str:
    return f"{v:g}"


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
    origin = typing.get_origin(tp)
    if tp is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise _Bad(_describe(tp, name))
    if tp in (int, float):
        number: Any = value
        if from_text and isinstance(value, str):
            try:
                number = int(value.strip().replace("_", "")) if tp is int else float(value)
            except ValueError:
                raise _Bad(_describe(tp, name)) from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _Bad(_describe(tp, name))
        if tp is int and (isinstance(number, float) and not number.is_integer()):
            raise _Bad(_describe(tp, name))
        number = tp(number)
        if tp is float and number != number:
            raise _Bad(_describe(tp, name))
        lo, hi = _range(name)
        if tp is int and lo is None:
            lo = 0
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise _Bad(_describe(tp, name))
        return number
    if tp is str:
        if not isinstance(value, str):
            raise _Bad(_describe(tp, name))
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if from_text and isinstance(value, str):
            text = value.strip()
            value = _toml_value(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Bad(_describe(tp, name))
        try:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(args[0], name, v, from_text=from_text) for v in value)
            if len(value) != len(args):
                raise _Bad(_describe(tp, name))
            return tuple(_convert(a, name, v, from_text=from_text) for a, v in zip(args, value))
        except _Bad:
            raise _Bad(_describe(tp, name)) from None
    if dataclasses.is_dataclass(tp):
        if from_text and isinstance(value, str):
            value = _toml_value(value)
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
            return tp(**kwargs)  # type: ignore[operator]
        except (TypeError, ValueError) as exc:
            raise _Bad(f"valid ({exc})") from None
    if origin is dict:
        if from_text and isinstance(value, str):
            value = _toml_value(value)
        if not isinstance(value, dict):
            raise _Bad("a table")
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(key_tp, name, k, from_text=False): _convert(value_tp, name, v, from_text=from_text)
                for k, v in value.items()}
    raise _Bad(_describe(tp, name))


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise _Bad("a TOML value") from None


def _user_cutoffs(where: str, table: Any) -> dict[str, tuple[float, float]]:
    """``[users.NAME]`` tables -> user_cutoffs (a missing ham_cutoff defaults to the global one later)."""
    from spamtl.config import validate_name

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
        if values[1] > values[0]:
            raise ConfigError(f"{where}: users.{user}: ham_cutoff must not be above spam_cutoff")
        out[user] = (values[0], values[1])
    return out


# ------------------------------------------------------------------ loading
def _fields() -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(Settings)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(Settings) if f.init}




def _read_file(path: Path, fields: dict[str, tuple[dataclasses.Field[Any], Any]]) -> dict[str, Any]:
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
            continue
        if key not in fields or key == "user_cutoffs":
            import difflib

            close = difflib.get_close_matches(key, [*fields, USERS_TABLE], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; `spamtl config` lists every setting"
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        f, tp = fields[key]
        try:
            values[key] = _convert(tp, key, value, from_text=False)
        except _Bad as exc:
            raise ConfigError(f"{where}: {key} must be {exc}, got {_shown(value)}") from None
    return values


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
    files: list[str] = []

    explicit = str(config) if config else env.get(ENV_CONFIG) or None
    layers: list[Path] = []
    if explicit:
        layers.append(Path(explicit).expanduser())
    else:
        if system_path is not None and system_path.is_file():
            layers.append(system_path)
        user_path = user_config_path(env)
        if user_path.is_file():
            layers.append(user_path)
    for path in layers:
        for key, value in _read_file(path, fields).items():
            values[key] = value
            sources[key] = str(path)
        files.append(str(path))

    for name, (_, tp) in fields.items():
        var = ENV_PREFIX + name.upper()
        text = env.get(var)
        if text is None or (text == "" and name == "database_url"):
            continue
        try:
            values[name] = _convert(tp, name, text, from_text=True)
        except _Bad as exc:
            raise ConfigError(f"{var}: {name} must be {exc}, got {_shown(text)}") from None
        sources[name] = f"environment {var}"

    for name, value in (options or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        spelled = (option_names or {}).get(name, "--" + name.replace("_", "-"))
        try:
            values[name] = _convert(fields[name][1], name, value, from_text=isinstance(value, str))
        except _Bad as exc:
            raise ConfigError(f"{spelled}: {name} must be {exc}, got {_shown(value)}") from None
        sources[name] = f"option {spelled}"

    if "database_url" not in values:
        values["database_url"] = default_database_url(env)
    try:
        settings = Settings(**values)
    except (TypeError, ValueError) as exc:
        named = [k for k in values if re.search(rf"\b{k}\b", str(exc))]
        where = ", ".join(sorted({sources[k] for k in named if k in sources})) or "default"
        raise ConfigError(f"{where}: {exc}") from None
    return LoadedSettings(settings=settings, sources=sources, files=tuple(files))
