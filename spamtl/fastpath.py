"""The mail-pipeline hot path: classify one message on SQLite without SQLAlchemy or Typer.

A delivery pipeline starts ``spamtl classify USER`` once per message.  On a
small server, importing SQLAlchemy and Typer costs several times more than
scoring the message, so for the common case (one message, an SQLite store,
text/JSON/filter output) this module does the same work with the standard
library's ``sqlite3``, numpy and the parser only, and writes exactly what the
full command writes.  Anything else (other options, several messages,
another database, any error) returns ``None`` and the full command runs,
which also owns every error message.  ``tests/test_fastpath.py`` checks that
both paths print the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["run"]

_SCHEMA_REVISION = "0005"  # = spamtl.store.db.SCHEMA_REVISION (a test keeps them equal)
_EXIT_OK = 0


def _parse_args(argv: list[str]) -> dict[str, object] | None:
    if len(argv) < 2 or argv[0] != "classify":
        return None
    opts: dict[str, object] = {"user": None, "path": None, "filter": False, "format": "text", "db": None}
    args = iter(argv[1:])
    for arg in args:
        if arg == "--filter":
            opts["filter"] = True
        elif arg in ("--format", "--db"):
            value = next(args, None)
            if value is None:
                return None
            opts[arg[2:]] = value
        elif arg.startswith(("--format=", "--db=")):
            key, value = arg[2:].split("=", 1)
            opts[key] = value
        elif arg.startswith("-") and arg != "-":
            return None  # --help and anything unusual: the full command
        elif opts["user"] is None:
            opts["user"] = arg
        elif opts["path"] is None:
            opts["path"] = arg
        else:
            return None  # several messages: the full command streams them
    if opts["user"] is None or opts["format"] not in ("text", "json"):
        return None
    if opts["filter"] and opts["path"] not in (None, "-"):
        return None
    return opts


def _sqlite_file(url: str | None) -> str | None:
    from spamtl.config import database_url_from_env

    url = database_url_from_env(url)
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or len(url) == len(prefix):
        return None
    return url[len(prefix):]


def _timestamp(moment: datetime) -> str:
    # SQLAlchemy's SQLite DateTime storage format, so both paths write the same rows.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _score(con: sqlite3.Connection, user: str, raw: bytes) -> dict[str, object]:
    from spamtl.config import Settings
    from spamtl.features import FeatureConfig, IdfWeights, featurize
    from spamtl.mail import parse_envelope, parse_message
    from spamtl.scoring import SparsePart, score_rows, sigmoid

    (revision,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    if revision != _SCHEMA_REVISION:
        raise LookupError("schema")
    row = con.execute("SELECT id, feature_key, params FROM model_versions WHERE status = 'active'").fetchone()
    if row is None:
        raise LookupError("no model")
    version, feature_key, params = row
    user_row = con.execute("SELECT id, group_name FROM users WHERE name = ?", (user,)).fetchone()
    task_groups = (json.loads(params) if params else {}).get("task_groups") or {}
    group = task_groups.get(user, user_row[1] if user_row else None)

    def blob(kind: str, name: str) -> bytes | None:
        found = con.execute("SELECT data FROM model_parts WHERE model_version_id = ? AND kind = ? AND name = ?",
                            (version, kind, name)).fetchone()
        return found[0] if found else None

    def part(kind: str, name: str) -> SparsePart | None:
        data = blob(kind, name)
        return SparsePart.from_bytes(data) if data is not None else None

    # Only this user's slice of the model: shared, their group's and their own part.
    parts = [p for p in (part("shared", ""), part("group", group) if group else None, part("user", user)) if p]
    is_known = con.execute("SELECT 1 FROM model_parts WHERE model_version_id = ? AND kind = 'user' AND name = ?",
                           (version, user)).fetchone() is not None
    parsed = parse_message(raw)
    row_features = featurize(parsed, FeatureConfig.from_key(feature_key))
    idf = blob("idf", "")
    if idf is not None:
        row_features = IdfWeights.from_bytes(idf).apply(row_features)
    probability = sigmoid(float(score_rows([row_features], parts)[0]))
    verdict = Settings(database_url="").verdict(probability)
    sha = hashlib.sha256(raw).hexdigest()
    now = datetime.now(UTC).replace(tzinfo=None)
    with con:  # one transaction: the message (if new), the user (if new) and the verdict
        con.execute("BEGIN IMMEDIATE")
        user_id = user_row[0] if user_row else con.execute(
            "INSERT INTO users (name, group_name, created_at) VALUES (?, NULL, ?)", (user, _timestamp(now))).lastrowid
        found = con.execute("SELECT id FROM messages WHERE sha256 = ?", (sha,)).fetchone()
        if found:
            message_pk = found[0]
        else:
            message_id, date = parse_envelope(raw)
            stored_date = None
            if date is not None:
                try:
                    stored_date = _timestamp(date.astimezone(UTC).replace(tzinfo=None))
                except (OverflowError, ValueError, OSError):
                    stored_date = None
            message_pk = con.execute(
                "INSERT INTO messages (sha256, message_id, raw, size, date, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sha, message_id or None, zlib.compress(raw, 6), len(raw), stored_date, _timestamp(now))).lastrowid
        con.execute("INSERT INTO classifications (user_id, message_id, probability, verdict, model_version_id, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, message_pk, probability, verdict, version, _timestamp(now)))
    return {"user": user, "message_id": parsed.message_id, "sha256": sha, "verdict": verdict,
            "probability": probability, "model_version": version, "is_known_user": is_known,
            "warnings": ["; ".join(parsed.defects)] if parsed.is_damaged else []}


def run(argv: list[str]) -> int | None:
    """Handle ``argv`` if it is the hot case; ``None`` means "run the full command"."""
    opts = _parse_args(argv)
    if opts is None:
        return None
    path = _sqlite_file(opts["db"])  # type: ignore[arg-type]
    if path is None or not os.path.isfile(path):
        return None
    source = opts["path"]
    if source in (None, "-"):
        raw = sys.stdin.buffer.read()
        origin = "<stdin>"
    else:
        p = Path(str(source))
        if not p.is_file() or p.stat().st_size > 8 * 2**20:
            return None
        raw = p.read_bytes()
        origin = str(source)
        if raw.startswith((b"From ", b"\x1f\x8b")):
            return None  # an mbox or gzip file: the full command streams it
    try:
        con = sqlite3.connect(path, timeout=float(os.environ.get("SPAMTL_BUSY_TIMEOUT", 30)), isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys = ON")
            result = _score(con, str(opts["user"]), raw)
        finally:
            con.close()
    except Exception:  # noqa: BLE001 - any problem: the full command reports it properly
        sys.stdin = io.TextIOWrapper(io.BytesIO(raw))
        return None
    if opts["filter"]:
        from spamtl.mail import add_headers

        headers = [("X-Spamtl-Status", f"{result['verdict']}, probability={result['probability']:.4f}, "
                                       f"version={result['model_version']}")]
        if result["verdict"] == "spam":
            headers.append(("X-Spam-Flag", "YES"))
        sys.stdout.buffer.write(add_headers(raw, headers))
        sys.stdout.flush()
        return _EXIT_OK
    if not result["is_known_user"]:
        print(f"note: {result['user']!r} has no personal model yet; scored by the shared model", file=sys.stderr)
    if opts["format"] == "json":
        print(json.dumps({k: (round(v, 6) if k == "probability" else v) for k, v in result.items()
                          if k in ("user", "message_id", "sha256", "verdict", "probability", "model_version")}))
    else:
        mid = f" <{result['message_id']}>" if result["message_id"] else ""
        print(f"{origin}{mid}: {result['verdict']} (probability {result['probability']:.4f}, "
              f"model v{result['model_version']})")
    for warning in result["warnings"]:  # type: ignore[attr-defined]
        print(f"warning: {origin}: {warning} (scored from the text recovered)", file=sys.stderr)
    return _EXIT_OK
