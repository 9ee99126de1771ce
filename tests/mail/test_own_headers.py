"""Headers spam filters add are never evidence; migration 0004 rewrites old stores."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail.headers import message_identity, strip_own_headers

from ..conftest import count_rows, make_mail
from ..services.test_training import _build, _filter, _verdict

runner = CliRunner()
FORGED = ["X-Spamtl-Status: ham, probability=0.0001, cutoff=0.9000, version=1, id=000000000000\n",
          "X-Spam-Flag: NO\n", "X-Spam-Status: No, score=-100\n", "X-Bogosity: Ham, tests=bogofilter\n"]


def _spam(message_id: str) -> bytes:
    return make_mail("win the lottery now", "claim your prize viagra casino alpha bravo", message_id=message_id,
                     sender="promo@cheap-1.example")


@pytest.mark.parametrize("forged", FORGED, ids=["spamtl", "spam-flag", "spam-status", "bogosity"])
def test_forged_filter_headers_change_no_score_and_no_identity(engine, tmp_path: Path, forged: str) -> None:  # type: ignore[no-untyped-def]
    settings = _build(engine, tmp_path)
    db = settings.database_url
    plain = _spam("forged@example")
    with_header = forged.encode() + plain
    in_the_middle = plain.replace(b"Subject:", forged.encode() + b"Subject:")
    verdicts = [_verdict(db, user, raw) for raw in (plain, with_header, in_the_middle) for user in ("ann", "bob")]
    for user in ("ann", "bob"):
        mine = [v for v in verdicts if v["user"] == user]
        assert len({(v["probability"], v["sha256"], v["verdict"]) for v in mine}) == 1
        assert mine[0]["verdict"] == "spam"
    assert count_rows(db, "messages", "WHERE message_id = 'forged@example'") == 1


def test_feedback_on_a_delivered_copy_then_by_message_id(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = _build(engine, tmp_path)
    db = settings.database_url
    raw = make_mail("weekly newsletter digest 77", "this week in gardening news", message_id="news-77@garden.example",
                    sender="news@garden.example")
    delivered = _filter(db, "bob", raw)
    assert delivered != raw and strip_own_headers(delivered) == raw
    first = runner.invoke(app, ["feedback", "bob", "--spam", "-", "--db", db, "--format", "json"], input=delivered)
    assert first.exit_code == 0, first.output
    sha = json.loads(first.stdout)["sha256"]
    assert sha == message_identity(raw)[1]
    again = runner.invoke(app, ["feedback", "cat", "--ham", "--id", "<news-77@garden.example>", "--db", db,
                                "--format", "json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sha256"] == sha
    assert _verdict(db, "bob", delivered)["reason"] == "label"
    assert count_rows(db, "messages", "WHERE message_id = 'news-77@garden.example'") == 1


def _insert_message(conn, raw: bytes, sha: str | None = None) -> int:  # type: ignore[no-untyped-def]
    conn.execute(text("INSERT INTO messages (sha256, message_id, raw, size, date, received_at) "
                      "VALUES (:sha, 'm@x', :raw, :size, NULL, '2026-11-20 00:00:00.000000')"),
                 {"sha": sha or hashlib.sha256(raw).hexdigest(), "raw": zlib.compress(raw), "size": len(raw)})
    return int(conn.execute(text("SELECT max(id) FROM messages")).scalar())


def test_migration_0004_strips_headers_and_merges_variants(tmp_path: Path) -> None:
    from spamtl.store.engine import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}", create_dir=True)
    upgrade(engine, "0003")
    clean = make_mail("meeting", "agenda", message_id="a@x")
    variant = b"X-Spamtl-Status: ham, probability=0.0100\nX-Spam-Flag: NO\n" + clean
    lonely_clean = make_mail("lonely", "only ever stored with headers")
    lonely = lonely_clean.replace(b"Subject:", b"X-Bogosity: Spam, tests=bogofilter\nSubject:")
    untouched = make_mail("plain", "never had filter headers")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, created_at) VALUES ('ann', '2026-11-20 00:00:00.000000'), "
                          "('bob', '2026-11-20 00:00:00.000000')"))
        ids = {name: _insert_message(conn, raw) for name, raw in
               (("clean", clean), ("variant", variant), ("lonely", lonely), ("untouched", untouched))}
        for user, name, label, when in ((1, "clean", "ham", "2026-11-20"), (2, "variant", "spam", "2026-11-21"),
                                        (1, "variant", "spam", "2026-11-22"), (2, "lonely", "ham", "2026-11-21")):
            conn.execute(text("INSERT INTO labels (user_id, message_id, label, source, created_at) "
                              "VALUES (:u, :m, :l, 'import', :t)"),
                         {"u": user, "m": ids[name], "l": label, "t": when + " 00:00:00.000000"})
        conn.execute(text("INSERT INTO classifications (user_id, message_id, probability, verdict, created_at) "
                          "VALUES (2, :m, 0.01, 'ham', '2026-11-21 00:00:00.000000')"), {"m": ids["variant"]})
        for name in ids:
            conn.execute(text("INSERT INTO message_features (message_id, feature_key, data) VALUES (:m, 'k', x'00')"),
                         {"m": ids[name]})
        generation = conn.execute(text("SELECT value FROM store_state")).scalar()
    upgrade(engine, "0004")  # 0006 changes the digests again (tests/mail/test_message_identity.py)
    with engine.connect() as conn:
        rows = {r[0]: r[1:] for r in conn.execute(text("SELECT id, sha256, raw, size FROM messages"))}
        assert sorted(rows) == sorted([ids["clean"], ids["lonely"], ids["untouched"]])  # the variant merged
        for name, raw in (("clean", clean), ("lonely", lonely_clean), ("untouched", untouched)):
            sha, data, size = rows[ids[name]]
            assert (sha, zlib.decompress(data), size) == (hashlib.sha256(raw).hexdigest(), raw, len(raw))
        labels = conn.execute(text("SELECT user_id, message_id, label FROM labels ORDER BY id")).all()
        assert labels == [(1, ids["clean"], "ham"), (2, ids["clean"], "spam"), (1, ids["clean"], "spam"),
                          (2, ids["lonely"], "ham")]
        assert conn.execute(text("SELECT message_id FROM classifications")).all() == [(ids["clean"],)]
        # Features computed with the headers are gone; the clean rows' caches stay.
        assert sorted(m for (m,) in conn.execute(text("SELECT message_id FROM message_features"))) == sorted(
            [ids["clean"], ids["untouched"]])
        assert conn.execute(text("SELECT value FROM store_state")).scalar() == generation + 1
    engine.dispose()
