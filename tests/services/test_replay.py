"""spamtl evaluate --replay: delivery order, the day loop's corrections, the real store left alone."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.services.replay import Item, _run_system, _split, delivery_order, plan_replay, replay, replay_metrics
from spamtl.settings import Settings

from ..conftest import NOW, make_mail, write_mbox

runner = CliRunner()
SPAM_WORDS = "viagra pills winner lottery cheap offer prize casino loan bitcoin".split()
HAM_WORDS = "meeting project report schedule budget review agenda invoice minutes draft".split()
SHARED = "the and please today thanks hello regards".split()


def _mail(rng: random.Random, user: str, i: int, spam: bool, when: datetime) -> bytes:
    words = SPAM_WORDS if spam else HAM_WORDS
    # Some messages borrow the other class's words, so the filter makes mistakes to correct.
    if rng.random() < 0.25:
        words = HAM_WORDS if spam else SPAM_WORDS
    body = " ".join(rng.choice(words + SHARED) for _ in range(30))
    date = when.strftime("%a, %d %b %Y %H:%M:%S +0000")
    return make_mail(f"{'offer' if spam else 'notes'} {i}", body, message_id=f"{user}-{i}-{int(spam)}@test",
                     extra_headers=f"Date: {date}\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with two users: ann's ham and spam interleave in time, bob's come from different years."""
    from spamtl.store.engine import make_engine, upgrade

    tmp = tmp_path_factory.mktemp("replay")
    db = f"sqlite:///{tmp / 'real.sqlite3'}"
    engine = make_engine(db, create_dir=True)
    upgrade(engine)
    engine.dispose()
    rng = random.Random(7)
    start = datetime(2024, 3, 1)
    boxes = {
        ("ann", "ham"): [_mail(rng, "ann", i, False, start + timedelta(hours=5 * i)) for i in range(24)],
        ("ann", "spam"): [_mail(rng, "ann", i, True, start + timedelta(hours=5 * i + 2)) for i in range(16)],
        ("bob", "ham"): [_mail(rng, "bob", i, False, datetime(2000, 1, 1) + timedelta(days=i)) for i in range(24)],
        ("bob", "spam"): [_mail(rng, "bob", i, True, datetime(2005, 1, 1) + timedelta(days=i)) for i in range(16)],
    }
    for (user, label), mails in boxes.items():
        path = write_mbox(tmp / f"{user}-{label}.mbox", mails)
        result = runner.invoke(app, ["import", user, str(path), "-l", label, "--db", db])
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["train", "--db", db]).exit_code == 0
    return {"db": db, "tmp": tmp}


def _snapshot(db: str) -> dict[str, list[tuple[Any, ...]]]:
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 - fixed names
                for table in ("users", "labels", "model_versions", "model_parts", "classifications",
                              "user_cutoffs", "store_state")}
    finally:
        con.close()


# ----------------------------------------------------------------- ordering
def test_overlapping_dates_are_merged_by_date_then_import_order() -> None:
    d = datetime(2024, 1, 1)
    items = [Item(1, False, d + timedelta(days=3)), Item(2, True, d + timedelta(days=1)),
             Item(3, False, d + timedelta(days=1)), Item(4, True, d + timedelta(days=5)),
             Item(5, False, d), Item(6, True, d + timedelta(days=2))]
    ordered, how, why = delivery_order(items)
    assert how == "date"
    assert why == "ham and spam dates overlap (ham 2024-01-01..2024-01-04, spam 2024-01-02..2024-01-06)"
    assert [it.pk for it in ordered] == [5, 2, 3, 6, 1, 4]


def test_disjoint_years_are_merged_by_relative_position() -> None:
    ham = [Item(10 + i, False, datetime(1999, 1, 1) + timedelta(days=i)) for i in range(4)]
    spam = [Item(20 + j, True, datetime(2004, 6, 1) + timedelta(days=j)) for j in range(2)]
    ordered, how, why = delivery_order(list(reversed(ham + spam)))
    assert how == "relative position"
    assert why.startswith("ham and spam dates do not overlap (ham 1999-01-01..")
    # ham at 1/8, 3/8, 5/8, 7/8; spam at 1/4, 3/4
    assert [it.pk for it in ordered] == [10, 20, 11, 12, 21, 13]


def test_missing_dates_take_the_previous_message_date_and_many_force_relative_position() -> None:
    d = datetime(2024, 1, 1)
    items = [Item(1, False, d + timedelta(days=2)), Item(2, False, None), Item(3, False, d),
             Item(4, True, d + timedelta(days=1)), Item(5, True, d + timedelta(days=3))]
    ordered, how, why = delivery_order(items)
    assert (how, why) == ("relative position", "33% of the ham has no Date header")
    # ham by date: 3 (d), 1 (d+2), 2 (undated: d+2 from message 1, then import order) at 1/6, 3/6, 5/6
    assert [it.pk for it in ordered] == [3, 4, 1, 5, 2]


def test_bootstrap_gets_both_classes_and_days_split_the_rest() -> None:
    stream = [Item(i, False) for i in range(6)] + [Item(6 + j, True) for j in range(4)]
    boot, days = _split(stream, 3, 2)
    assert [it.pk for it in boot] == [0, 1, 2, 6, 7]
    assert [[it.pk for it in day] for day in days] == [[3, 4], [5, 8, 9]]


def test_a_small_user_keeps_half_of_their_mail_to_replay() -> None:
    stream = [Item(0, False), Item(1, True), Item(2, False), Item(3, True), Item(4, False), Item(5, True)]
    boot, days = _split(stream, 20, 2)
    assert [it.pk for it in boot] == [0, 1, 2]
    assert [[it.pk for it in day] for day in days] == [[3, 4], [5]]


def test_plan_reports_each_users_ordering(source: dict[str, Any]) -> None:
    from spamtl.store.engine import make_engine

    engine = make_engine(source["db"])
    plans = plan_replay(engine, days=4, bootstrap=6)
    engine.dispose()
    assert {u: p.ordering for u, p in plans.items()} == {"ann": "date", "bob": "relative position"}
    assert all(len(p.bootstrap) == 6 and p.n_messages == 34 and len(p.days) == 4 for p in plans.values())


# ------------------------------------------------------------------ metrics
def test_replay_metrics_by_hand() -> None:
    m = replay_metrics([False, False, False, False, True, True],
                       [0.1, 0.95, 0.5, 0.2, 0.99, 0.15],
                       ["ham", "spam", "unsure", "ham", "spam", "ham"],
                       [False, True, True, False, False, True])
    assert m["ham_fpr"] == pytest.approx(1 / 4)
    assert m["spam_miss"] == pytest.approx(1 / 2)
    assert m["unsure_rate"] == pytest.approx(1 / 6)
    assert m["corrections"] == 3
    assert m["corrections_per_1000"] == pytest.approx(500.0)
    # pairs (spam, ham): 0.99 beats all 4; 0.15 beats 0.1 only -> 5 of 8
    assert m["auc_error_pct"] == pytest.approx(100 * (1 - 5 / 8))


# --------------------------------------------------------------- day loop
def test_every_wrong_or_unsure_verdict_reaches_the_store_as_feedback(source: dict[str, Any], tmp_path: Path) -> None:
    from spamtl.store.engine import make_engine

    engine = make_engine(source["db"])
    plans = plan_replay(engine, days=3, bootstrap=6)
    settings = Settings(database_url=source["db"], mus=(1.0,))
    records, nights = _run_system(engine, plans, settings, days=3, label_all=False, start=datetime(2026, 1, 1),
                                  workdir=tmp_path)
    engine.dispose()
    assert len(records) == sum(p.n_messages for p in plans.values())
    assert len(nights) == 4 and nights[0]["promoted"]
    truth = {r.user: [] for r in records}  # type: dict[str, list[tuple[str, str]]]
    for r in records:
        wrong = r.verdict != ("spam" if r.is_spam else "ham")
        assert r.corrected == wrong
        if wrong:
            truth[r.user].append(("spam" if r.is_spam else "ham", r.verdict))
    assert sum(len(v) for v in truth.values()) > 0, "the fixture should make the filter err sometimes"
    con = sqlite3.connect(tmp_path / "replay.sqlite3")
    rows = con.execute("SELECT u.name, l.label FROM labels l JOIN users u ON u.id = l.user_id "
                       "WHERE l.source = 'feedback' ORDER BY l.id").fetchall()
    logged = con.execute("SELECT count(*) FROM classifications").fetchone()[0]
    con.close()
    for user, corrections in truth.items():
        assert [label for name, label in rows if name == user] == [t for t, _ in corrections]
    assert logged == len(records)


def test_replay_leaves_the_real_store_alone(source: dict[str, Any]) -> None:
    from spamtl.store.engine import make_engine

    before = _snapshot(source["db"])
    engine = make_engine(source["db"])
    result = replay(engine, Settings(database_url=source["db"], mus=(1.0,)), now=NOW, days=2, bootstrap=6,
                    systems=["mtl", "pooled"])
    engine.dispose()
    assert _snapshot(source["db"]) == before
    assert set(result.nights) == {"mtl", "pooled"}
    assert result.users["ann"]["mtl"]["messages"] == 34


def test_cli_json_shape(source: dict[str, Any]) -> None:
    result = runner.invoke(app, ["evaluate", "--replay", "--days", "3", "--bootstrap", "6", "--system", "mtl",
                                 "--format", "json", "--db", source["db"]])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"protocol", "users", "macro", "nights", "seconds"}
    assert report["protocol"]["orderings"] == {"ann": "date", "bob": "relative position"}
    assert report["protocol"]["feedback"] == "errors-only"
    for entry in report["users"].values():
        m = entry["mtl"]
        assert {"ham_fpr", "spam_miss", "unsure_rate", "corrections_per_1000", "auc_error_pct"} <= set(m)
        assert set(m["first_third"]) == set(m["last_third"])
        assert m["messages"] == 34
        assert m["corrections_per_1000"] == pytest.approx(1000 * m["corrections"] / 34)
    assert report["macro"]["mtl"]["nights_promoted"] + report["macro"]["mtl"]["nights_refused"] == 4
    assert [n["night"] for n in report["nights"]["mtl"]] == [0, 1, 2, 3]


def test_cli_table_and_label_all(source: dict[str, Any]) -> None:
    result = runner.invoke(app, ["evaluate", "--replay", "--days", "2", "--bootstrap", "6", "--system", "per_user",
                                 "--label-all", "--users", "bob", "--db", source["db"]])
    assert result.exit_code == 0, result.output
    assert "all feedback" in result.stdout
    assert "merged by relative position: bob" in result.stdout
    assert "ann" not in result.stdout.split("ordering:")[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--system", "bogus"], "Error: unknown system 'bogus'; use one of: mtl, pooled, per_user"),
    (["--days", "0"], "Error: --days must be at least 1"),
    (["--bootstrap", "1"], "Error: --bootstrap must be at least 2"),
    (["--users", "zed"], "Error: no labelled mail for user 'zed'; see `spamtl users`"),
])
def test_cli_errors(source: dict[str, Any], args: list[str], message: str) -> None:
    result = runner.invoke(app, ["evaluate", "--replay", *args, "--db", source["db"]])
    assert result.exit_code == 1
    assert result.stderr.strip() == message


# ---------------------------------------------------------------- progress and speed
class _Recorder:
    """A Progress that keeps every stage with what was advanced in it, call by call."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []

    def stage(self, name: str, total: int | None = None, *, unit: str = "", **fields: object) -> None:
        self.stages.append({"name": name, "total": total, "unit": unit, **fields, "advances": []})

    def set_total(self, total: int) -> None:
        self.stages[-1]["total"] = total

    def advance(self, n: int = 1) -> None:
        self.stages[-1]["advances"].append(n)

    def done(self) -> None:
        pass


def test_progress_has_a_stage_per_day_and_system_counting_each_message(source: dict[str, Any]) -> None:
    from spamtl.store.engine import make_engine

    engine = make_engine(source["db"])
    plans = plan_replay(engine, days=3, bootstrap=6)
    recorder = _Recorder()
    replay(engine, Settings(database_url=source["db"], mus=(1.0,)), now=NOW, days=3, bootstrap=6,
           systems=["mtl", "pooled"], progress=recorder)
    engine.dispose()
    per_day = [sum(len(p.days[d]) for p in plans.values()) for d in range(3)]
    assert per_day == [22, 24, 22]  # 34 per user, split at round(34 / 3) = 11 and round(68 / 3) = 23
    expected = []
    for system in ("mtl", "pooled"):
        expected.append(("bootstrap", None, system, None))
        expected += [("day", per_day[d], system, f"{d + 1}/3") for d in range(3)]
    assert [(s["name"], s["total"], s["system"], s.get("day")) for s in recorder.stages] == expected
    for s in recorder.stages:
        # every message is counted as it is done (a bar moves within a day), and the counts add up
        assert s["advances"] == ([1] * s["total"] if s["name"] == "day" else [])


def test_nightly_training_runs_blas_on_one_thread(source: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    import spamtl.services.training as training
    from spamtl.store.engine import make_engine

    seen: list[list[int]] = []
    real_train = training.train

    def train(*args: Any, **kwargs: Any) -> Any:
        seen.append([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", train)
    engine = make_engine(source["db"])
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        replay(engine, Settings(database_url=source["db"], mus=(1.0,)), now=NOW, days=2, bootstrap=6,
               systems=["mtl"])
        after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    engine.dispose()
    assert len(seen) == 3  # night 0 (bootstrap) and one per day
    assert all(threads and set(threads) == {1} for threads in seen), seen
    assert set(after) == {2}  # the caller's setting is back afterwards


def test_the_baselines_replay_under_the_same_feedback_protocol() -> None:
    from spamtl.services.replay import system_settings

    settings = Settings(database_url="sqlite:///unused.sqlite3", feedback_max_doublings=5, mus=(10.0, 1.0),
                        alphas=(0.01,))
    pooled, mtl, per_user = (system_settings(settings, s) for s in ("pooled", "mtl", "per_user"))
    assert pooled.mus == (1e6,)
    assert mtl.feedback_max_doublings == pooled.feedback_max_doublings == per_user.feedback_max_doublings == 5
    assert (per_user.mus, per_user.alphas) == ((1e-3,), (10.0,))
