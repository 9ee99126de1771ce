"""The store: migrations match the ORM, round trips, SQLite settings, latest label wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from spamtl.errors import DatabaseError
from spamtl.store import queries
from spamtl.store.engine import SCHEMA_REVISION, _alembic_config, check_schema, downgrade, make_engine, upgrade
from spamtl.store.schema import Base
from spamtl.store.statements import store_messages

from ..conftest import NOW


def test_schema_revision_constant_is_alembic_head(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        head = ScriptDirectory.from_config(_alembic_config(conn)).get_current_head()
    assert head == SCHEMA_REVISION


def test_migrated_database_matches_orm_metadata(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_then_upgrade_round_trip(engine) -> None:  # type: ignore[no-untyped-def]
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    with pytest.raises(DatabaseError, match="run `spamtl init`"):
        check_schema(engine)
    upgrade(engine)
    check_schema(engine)
    assert {"users", "messages", "labels", "classifications", "model_versions", "model_parts"} <= set(
        inspect(engine).get_table_names())


@pytest.mark.sqlite_only(reason="PRAGMAs are SQLite's connection settings")
def test_sqlite_pragmas(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


@pytest.mark.sqlite_only(reason="a missing or garbage database file exists only for SQLite")
def test_missing_database_and_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no database at .*run `spamtl init` first"):
        make_engine(f"sqlite:///{tmp_path / 'nope.sqlite3'}")
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="not a database"):
        check_schema(make_engine(f"sqlite:///{bad}"))
    with pytest.raises(DatabaseError, match="invalid database URL"):
        make_engine("::not a url::")


def test_latest_label_wins_and_history_is_kept(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session, session.begin():
        user_id = queries.get_or_create_user(session=session, name="ann", group="g", now=NOW).id
        pk = store_messages(session, [("a" * 64, b"", None)], now=NOW)["a" * 64]
        for label in ("spam", "ham", "spam", "ham"):
            queries.add_labels(session=session, rows=[{"user_id": user_id, "message_id": pk, "label": label,
                                                       "source": "feedback", "created_at": NOW}])
    with Session(engine) as session:
        assert queries.latest_labels(session=session, user_id=user_id, message_ids=[pk]) == {pk: "ham"}
        assert session.execute(text("SELECT count(*) FROM labels")).scalar() == 4
        [counts] = queries.user_counts(session=session)
        assert (counts.user, counts.group, counts.ham, counts.spam) == ("ann", "g", 1, 0)


def test_only_one_active_model(engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError

    from spamtl.store.schema import ModelVersion

    def version(status: str) -> ModelVersion:
        return ModelVersion(created_at=NOW, status=status, params={}, metrics={}, feature_key="k", n_features=1,
                            format_version=1, n_users=0, n_messages=0)

    with Session(engine) as session, session.begin():
        session.add_all([version("active"), version("retired"), version("retired")])
    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(version("active"))


def test_label_check_constraint(engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        user = queries.get_or_create_user(session=session, name="bob", group=None, now=NOW)
        pk = store_messages(session, [("b" * 64, b"", None)], now=NOW)["b" * 64]
        queries.add_labels(session=session, rows=[{"user_id": user.id, "message_id": pk, "label": "eggs",
                                                   "source": "import", "created_at": NOW}])


def test_upgrade_to_0005_keeps_every_row(engine) -> None:  # type: ignore[no-untyped-def]
    """0005 rebuilds ``messages`` on SQLite (batch mode): no cascade may delete labels or classifications."""
    downgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, created_at) VALUES ('ann', :t)"), {"t": NOW})
        conn.execute(text("INSERT INTO messages (sha256, raw, size, received_at) VALUES (:s, :r, 1, :t)"),
                     {"s": "c" * 64, "r": queries.compress(b"x"), "t": NOW})
        conn.execute(text("INSERT INTO model_versions (created_at, status, params, metrics, feature_key, n_features, "
                          "format_version, n_users, n_messages) VALUES (:t, 'active', '{}', '{}', 'k', 1, 1, 1, 1)"),
                     {"t": NOW})
        ids = {"u": conn.execute(text("SELECT id FROM users")).scalar_one(),
               "m": conn.execute(text("SELECT id FROM messages")).scalar_one(),
               "v": conn.execute(text("SELECT id FROM model_versions")).scalar_one(), "t": NOW}
        conn.execute(text("INSERT INTO labels (user_id, message_id, label, source, created_at) "
                          "VALUES (:u, :m, 'spam', 'import', :t)"), ids)
        conn.execute(text("INSERT INTO classifications (user_id, message_id, probability, verdict, model_version_id, "
                          "created_at) VALUES (:u, :m, 0.5, 'unsure', :v, :t)"), ids)
        conn.execute(text("INSERT INTO model_parts (model_version_id, kind, name, data) VALUES (:v, 'shared', '', :d)"), {**ids, "d": b"w"})
        conn.execute(text("INSERT INTO message_features VALUES (:m, 'k', :d)"), {**ids, "d": b"f"})
    tables = ["users", "messages", "labels", "classifications", "model_versions", "model_parts", "message_features"]
    for revision in ("head", "0002", "head"):
        (upgrade if revision == "head" else downgrade)(engine, revision)
        with engine.connect() as conn:
            assert {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables} == dict.fromkeys(
                tables, 1), revision
            assert conn.execute(text("SELECT model_version_id FROM classifications")).scalar() == ids["v"]
    check_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pinned FROM model_versions")).scalar() in (False, 0)
