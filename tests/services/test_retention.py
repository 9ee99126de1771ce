"""Retention (`spamtl prune`, also after `train`), pinned models, deleting and renaming users."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail.headers import message_identity
from spamtl.mail.sources import RawMail
from spamtl.services.classify import classify_messages, open_reader
from spamtl.services.importing import import_mail
from spamtl.services.retention import prune
from spamtl.services.training import train
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import NOW, count_rows, make_mail, run_sql, write_mbox

runner = CliRunner()
DAY = timedelta(days=1)


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


def _settings(url: str, **kw: object) -> Settings:
    return Settings(database_url=url, mus=(1.0,), **kw)  # type: ignore[arg-type]


@pytest.fixture
def office(engine, tmp_path: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """ann and bob labelled mail 100 days ago (sharing the spam), trained, then had 6 new messages classified
    60 days ago (the first 2 for both of them)."""
    start = NOW - 100 * DAY
    spam = write_mbox(tmp_path / "spam.mbox", _mails(1, "spam", 6))
    for k, user in enumerate(("ann", "bob")):
        import_mail(engine, user=user, paths=[str(spam)], label="spam", now=start)
        ham = write_mbox(tmp_path / f"{user}.mbox", _mails(5 + k, user, 6))
        import_mail(engine, user=user, paths=[str(ham)], label="ham", now=start)
    settings = _settings(str(engine.url), raw_retention_days=None, classification_retention_days=None)
    train(engine, settings, now=start)
    fresh = [make_mail(f"offer {i}", f"unlabelled news {i}", message_id=f"new-{i}@example") for i in range(6)]
    reader = open_reader(make_engine(settings.database_url), settings)
    for user, mails in (("ann", fresh), ("bob", fresh[:2])):
        list(classify_messages(reader, user=user, now=NOW - 60 * DAY,
                               mails=[RawMail(str(i), m) for i, m in enumerate(mails)]))
    reader.store.close()
    return {"fresh": fresh, "url": str(engine.url)}


def _bodies(url: str) -> int:
    return count_rows(url, "messages", "WHERE raw IS NOT NULL")


def test_prune_drops_old_unlabelled_bodies_then_old_verdicts_then_orphans(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    assert (count_rows(url, "messages"), _bodies(url), count_rows(url, "classifications")) == (24, 24, 8)
    dry = prune(engine, _settings(url), now=NOW, dry_run=True)
    assert (dry.bodies_dropped, dry.classifications_deleted, dry.messages_deleted, dry.dry_run) == (6, 0, 0, True)
    assert _bodies(url) == 24  # a dry run changes nothing
    result = prune(engine, _settings(url), now=NOW)
    assert (result.bodies_dropped, result.classifications_deleted, result.messages_deleted) == (6, 0, 0)
    assert (count_rows(url, "messages"), _bodies(url)) == (24, 18)  # rows stay: verdicts refer to them
    assert prune(engine, _settings(url), now=NOW).bodies_dropped == 0  # idempotent
    # Half a year later the verdicts go, and with them the messages nothing refers to any more.
    later = prune(engine, _settings(url), now=NOW + 130 * DAY)
    assert (later.classifications_deleted, later.messages_deleted) == (8, 6)
    assert (count_rows(url, "messages"), _bodies(url), count_rows(url, "labels")) == (18, 18, 24)


def test_labelled_mail_is_never_pruned(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    prune(engine, _settings(url, raw_retention_days=0, classification_retention_days=0), now=NOW + 9999 * DAY)
    assert (count_rows(url, "messages"), _bodies(url), count_rows(url, "labels")) == (18, 18, 24)


def test_feedback_by_id_after_the_body_is_gone(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    prune(engine, _settings(url), now=NOW)
    raw = office["fresh"][3]  # type: ignore[index]
    result = run(url, "feedback", "ann", "--spam", "--id", "new-3@example")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Recorded spam for ann: message {message_identity(raw)[1][:16]}...",
        "The message body is no longer stored; pass the message itself to learn from it."]
    assert count_rows(url, "labels", "WHERE source = 'feedback'") == 1
    # Training ignores the label it cannot featurise (and does not crash) ...
    assert train(engine, _settings(url), now=NOW).messages == 24
    # ... until the message itself is passed: its body is stored again and learnt from.
    again = json.loads(run(url, "feedback", "ann", "--spam", "-", "--format", "json", input=raw).stdout)
    assert again["body_missing"] is False and again["probability_after"] is not None
    assert _bodies(url) == 19
    assert train(engine, _settings(url), now=NOW).messages == 25


def _versions(url: str, statuses: str) -> None:
    """Model versions 1.. with the given statuses (a=active r=retired x=rejected), each with a shared part."""
    from sqlalchemy import create_engine

    eng = create_engine(url)
    with eng.begin() as conn:
        for status in statuses:
            vid = conn.execute(text(
                "INSERT INTO model_versions (created_at, status, params, metrics, feature_key, n_features, "
                "format_version, n_users, n_messages, pinned) VALUES (:t, :s, '{}', '{\"m\": 1}', 'k', 1, 1, 0, 0, "
                ":f) RETURNING id"), {"t": NOW, "s": {"a": "active", "r": "retired", "x": "rejected"}[status],
                                       "f": False}).scalar_one()
            conn.execute(text("INSERT INTO model_parts (model_version_id, kind, name, data) "
                              "VALUES (:v, 'shared', '', :d)"), {"v": vid, "d": b"w"})
    eng.dispose()


def test_model_retention_keeps_active_last_promoted_and_pinned(db_url: str) -> None:
    _versions(db_url, "rxrrxrra")  # v1 r, v2 x, v3 r, v4 r, v5 x, v6 r, v7 r, v8 a
    assert run(db_url, "models", "pin", "3").stdout.strip() == "Model v3 is pinned: retention keeps its weights."
    result = run(db_url, "prune", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    # Defaults keep the 5 last promoted (v8 active, v7 v6 v4 v3; v3 is pinned too); refused candidates never.
    assert json.loads(result.stdout) == {"bodies_dropped": 0, "classifications_deleted": 0, "messages_deleted": 0,
                                         "versions_stripped": [1, 2, 5], "dry_run": True}
    assert count_rows(db_url, "model_parts") == 8
    out = run(db_url, "prune")
    assert out.stdout.strip() == "Dropped 0 message bodies, 0 verdicts, 0 messages; weights of model versions: v1, v2, v5"
    assert count_rows(db_url, "model_versions") == 8  # rows and metrics stay
    assert run(db_url, "models", "activate", "1").stderr.strip() == (
        "Error: model version 1 has no weights any more (retention keeps the last promoted and the pinned "
        "versions); activate another one")
    assert run(db_url, "models", "pin", "2").stderr.strip() == (
        "Error: model version 2 has no weights any more; there is nothing to keep")
    assert run(db_url, "models", "unpin", "3").stdout.strip() == "Model v3 is unpinned."
    versions = json.loads(run(db_url, "models", "--format", "json").stdout)
    assert [v["pinned"] for v in versions] == [False] * 8


def test_keep_promoted_versions_setting(engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    _versions(db_url, "rrrar")  # v4 active, v5 retired after a roll-back to v4
    assert run(db_url, "models", "pin", "1").exit_code == 0
    result = prune(engine, _settings(db_url, keep_promoted_versions=1), now=NOW)
    assert result.versions_stripped == [2, 3]  # v5 is the last promoted, v4 active, v1 pinned


def test_delete_user_needs_yes_then_removes_everything_of_theirs(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    before = count_rows(url, "messages")
    refused = run(url, "users", "delete", "bob")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == ("Error: this would delete user 'bob' with 12 labels, 2 verdicts, personal weights "
                                      "in 1 model versions and 6 messages only they had; add --yes to do it")
    assert count_rows(url, "labels") == 24
    done = run(url, "users", "delete", "bob", "--yes")
    assert done.stdout.strip() == ("Deleted user 'bob' with 12 labels, 2 verdicts, personal weights in 1 model "
                                   "versions and 6 messages only they had.")
    assert [u["user"] for u in json.loads(run(url, "users", "--format", "json").stdout)] == ["ann"]
    assert count_rows(url, "messages") == before - 6  # bob's own ham; the spam and the news ann also has stay
    assert count_rows(url, "model_parts", "WHERE kind = 'user' AND name = 'bob'") == 0
    from spamtl.services.models import load_weights

    assert "bob" not in load_weights(engine)[2].task_groups
    assert run(url, "users", "delete", "bob", "--yes").stderr.strip() == "Error: no user 'bob' in the store; `spamtl users` lists them"


def test_rename_user_moves_labels_and_personal_weights(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    mail = office["fresh"][0]  # type: ignore[index]
    before = json.loads(run(url, "classify", "ann", "-", "--format", "json", input=mail).stdout)["probability"]
    assert run(url, "users", "rename", "ann", "bob").stderr.strip() == (
        "Error: user 'bob' already exists; delete or rename it first")
    result = run(url, "users", "rename", "ann", "anna")
    assert result.stdout.strip() == "Renamed 'ann' to 'anna' (personal weights in 1 model versions)."
    assert [u["user"] for u in json.loads(run(url, "users", "--format", "json").stdout)] == ["anna", "bob"]
    renamed = run(url, "classify", "anna", "-", "--format", "json", input=mail)
    assert renamed.stderr == ""  # a known user: no "no personal model yet" note
    assert json.loads(renamed.stdout)["probability"] == before
    from spamtl.services.models import load_weights

    assert set(load_weights(engine)[2].task_groups) == {"anna", "bob"}


def test_train_applies_retention(engine, office) -> None:  # type: ignore[no-untyped-def]
    url = str(office["url"])
    result = train(engine, _settings(url), now=NOW)
    assert result.pruned["bodies_dropped"] == 6 and result.pruned["versions_stripped"] == []
    assert _bodies(url) == 18


# ------------------------------------------------------------------ deleting a user leaves nothing of theirs
GONE = "quentin"  # a name no test mail has by chance, so that finding it anywhere means it was left behind


@pytest.fixture
def pair(engine, tmp_path: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """ann and quentin share the spam and each have their own ham; trained (per-user cutoffs on); then
    quentin had mail classified, corrected a message (a refit of their part) and got an administrator's cutoffs."""
    url = str(engine.url)
    spam = write_mbox(tmp_path / "spam.mbox", _mails(1, "spam", 12))
    for k, user in enumerate(("ann", GONE)):
        import_mail(engine, user=user, paths=[str(spam)], label="spam", now=NOW - 10 * DAY)
        ham = write_mbox(tmp_path / f"ham-{k}.mbox", _mails(5 + k, user, 12))
        import_mail(engine, user=user, paths=[str(ham)], label="ham", now=NOW - 10 * DAY)
    train(engine, _settings(url), now=NOW - 9 * DAY)
    theirs = make_mail(f"project meeting 99 {GONE}", "agenda minutes budget review golf hotel",
                       sender=f"colleague@{GONE}.example")
    assert run(url, "classify", GONE, "-", input=theirs).exit_code == 0
    assert run(url, "feedback", GONE, "--spam", "-", input=make_mail("cheap offer 7", "claim your prize")).exit_code == 0
    assert run(url, "cutoffs", "set", GONE, "--spam", "0.95").exit_code == 0
    user_id = run_sql(url, "SELECT id FROM users WHERE name = :n", {"n": GONE})[0][0]
    return {"url": url, "theirs": theirs, "user_id": user_id}


def _text(value: object) -> str:
    """A column value as text to search for a name: JSON as JSON, bytes also zlib-inflated (stored mail)."""
    import zlib

    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bytes | memoryview):
        data = bytes(value)
        try:
            data += zlib.decompress(data)
        except zlib.error:
            pass
        return data.decode("latin-1")
    return ""


def _columns_naming(url: str, name: str, user_id: int) -> list[str]:
    """Every table.column of the schema that still refers to the user: by id (a foreign key to users, or
    users' own key) or by name (in any text, JSON or binary value)."""
    from sqlalchemy import create_engine, select

    from spamtl.store.schema import Base

    found = set()
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            for table in Base.metadata.sorted_tables:
                by_id = {c.name for c in table.columns
                         if any(fk.column.table.name == "users" for fk in c.foreign_keys)
                         or (table.name == "users" and c.primary_key)}
                for row in conn.execute(select(table)).mappings():
                    for column in table.columns:
                        value = row[column.name]
                        if (value == user_id) if column.name in by_id else (name in _text(value)):
                            found.add(f"{table.name}.{column.name}")
    finally:
        eng.dispose()
    return sorted(found)


def test_delete_user_leaves_no_row_of_any_table_naming_them(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, user_id = str(pair["url"]), int(pair["user_id"])  # type: ignore[call-overload]
    # Where a user lives: the scan sees every one of these before the deletion.
    assert _columns_naming(url, GONE, user_id) == [
        "classifications.user_id", "labels.user_id", "messages.raw", "messages.subject", "model_parts.name",
        "model_versions.metrics", "model_versions.params", "user_cutoffs.user_name", "users.id", "users.name"]
    assert run(url, "users", "delete", GONE, "--yes").exit_code == 0
    assert _columns_naming(url, GONE, user_id) == []
    assert count_rows(url, "user_cutoffs") > 0  # ann's stay
    # A new user of the same name starts from nothing: no personal part, no trained or administrator's cutoffs.
    (tmp_path / "new.eml").write_bytes(make_mail("hello", "a new colleague"))
    assert run(url, "import", GONE, str(tmp_path / "new.eml"), "-l", "ham").exit_code == 0
    reader = open_reader(make_engine(url), _settings(url))
    try:
        model = reader.user_model(GONE)
        assert not model.is_known_user
        assert reader.cutoffs(GONE)[2] == "global setting"
    finally:
        reader.store.close()


def _trained_cutoffs(url: str, name: str) -> list[tuple[object, ...]]:
    return run_sql(url, "SELECT model_version_id, spam_cutoff, ham_cutoff, source FROM user_cutoffs "
                        "WHERE user_name = :n", {"n": name})


def test_rename_keeps_trained_cutoffs_the_administrators_and_the_weights(engine, pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = str(pair["url"])
    trained = _trained_cutoffs(url, GONE)
    assert trained
    from spamtl.services.models import load_weights

    weight = load_weights(engine)[2].params["task_weights"][GONE]
    cutoffs = json.loads(run(url, "models", "--format", "json").stdout)[-1]["metrics"]["cutoffs"][GONE]
    before = json.loads(run(url, "classify", GONE, "-", "--format", "json", input=pair["theirs"]).stdout)
    assert run(url, "users", "rename", GONE, "quinn").exit_code == 0
    assert _trained_cutoffs(url, "quinn") == trained and _trained_cutoffs(url, GONE) == []
    assert load_weights(engine)[2].params["task_weights"] == {"ann": pytest.approx(1.0), "quinn": weight}
    assert json.loads(run(url, "models", "--format", "json").stdout)[-1]["metrics"]["cutoffs"]["quinn"] == cutoffs
    after = json.loads(run(url, "classify", "quinn", "-", "--format", "json", input=pair["theirs"]).stdout)
    assert (after["probability"], after["spam_cutoff"]) == (before["probability"], 0.95)  # the administrator's
    shown = {row["user"]: row for row in json.loads(run(url, "cutoffs", "--format", "json").stdout)}
    assert shown["quinn"]["source"] == "set by administrator"
    assert run(url, "cutoffs", "unset", "quinn").exit_code == 0
    shown = {row["user"]: row for row in json.loads(run(url, "cutoffs", "--format", "json").stdout)}
    assert (shown["quinn"]["spam_cutoff"], shown["quinn"]["source"]) == (trained[0][1], f"model v1: {trained[0][3]}")
    # The old name is free, and a new user of that name inherits nothing.
    (tmp_path / "new.eml").write_bytes(make_mail("hello", "a new colleague"))
    assert run(url, "import", GONE, str(tmp_path / "new.eml"), "-l", "ham").exit_code == 0
    shown = {row["user"]: row for row in json.loads(run(url, "cutoffs", "--format", "json").stdout)}
    assert shown[GONE]["source"] == "global setting"


def test_a_reader_forgets_a_deleted_user_when_other_parts_changed_too(engine, pair) -> None:  # type: ignore[no-untyped-def]
    """A daemon's reader: between two refreshes ann's part was refitted (a changed row it reloads) and quentin
    deleted (no row left to see); it must drop quentin's slice all the same."""
    from spamtl.services.classify import VerdictLogger, prepare

    url = str(pair["url"])
    reader = open_reader(make_engine(url), _settings(url))
    try:
        stale = reader.user_model(GONE)
        assert stale.is_known_user and stale.user_id == pair["user_id"]
        assert reader.user_model("ann").is_known_user
        assert run(url, "feedback", "ann", "--spam", "-", input=make_mail("cheap offer 8", "claim it")).exit_code == 0
        assert run(url, "users", "delete", GONE, "--yes").exit_code == 0
        reader.refresh()
        model = reader.user_model(GONE)
        assert (model.user_id, model.is_known_user) == (None, False)  # the shared part alone, as for any stranger
        # A verdict scored with the slice read before the deletion (a daemon's request in flight) is not stored,
        # and storing it is no error.
        message = prepare(pair["theirs"])  # type: ignore[arg-type]
        verdict = reader.classify(stale, message, "in flight")
        assert VerdictLogger(reader.store, create_users=True).log(stale, [(message, verdict)], NOW) is False
    finally:
        reader.store.close()
    assert count_rows(url, "classifications", f"WHERE user_id = {int(pair['user_id'])}") == 0  # type: ignore[call-overload]
    assert count_rows(url, "users", f"WHERE name = '{GONE}'") == 0


def test_a_running_daemon_forgets_a_deleted_user_within_a_second(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import time

    from ..serve.test_daemon import Daemon, status

    url = str(pair["url"])
    daemon = Daemon(url, tmp_path, "--workers", "2", "--timeout", "5")
    try:
        def probability(user: str) -> str:
            return status(daemon.request("PROCESS", pair["theirs"], user=user))["probability"]  # type: ignore[arg-type]

        stranger = probability("nobody-known")  # the shared part alone
        known = {probability(GONE) for _ in range(8)}  # both workers hold quentin's slice now
        assert len(known) == 1 and known != {stranger}
        time.sleep(0.2)  # the verdicts queued so far are written (group commit) before the deletion
        assert run(url, "users", "delete", GONE, "--yes").exit_code == 0
        deadline = time.monotonic() + 1.0
        seen = [probability(GONE)]
        while seen[-1] != stranger and time.monotonic() < deadline + 0.5:  # 0.5 s more for a slow CI machine
            time.sleep(0.05)
            seen.append(probability(GONE))
        assert seen[-1] == stranger, seen
        # The other worker checks the generation at most serve_refresh_interval (0.25 s) after its last check.
        time.sleep(0.3)
        assert {probability(GONE) for _ in range(8)} == {stranger}
        time.sleep(0.2)
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert "event=error" not in err, err  # no verdict failed to be stored, no request failed
    assert count_rows(url, "users", f"WHERE name = '{GONE}'") == 0  # nor was quentin stored again
    assert count_rows(url, "classifications", f"WHERE user_id = {int(pair['user_id'])}") == 0  # type: ignore[call-overload]
