"""A user is scored with the group part the model was *trained* with, until the next training.

Catches (a planted defect): ``spamtl/services/classify.py`` (``ModelReader.user_model``) taking the
group from the users table instead of the version's trained task groups: after ``spamtl import USER
... --group G --move-group`` the user was scored with G's part next to a personal part fitted beside
another group's.  The expected score is computed here from the stored parts (shared + the trained
group's + the user's, on the idf-weighted unit-norm row), not through the reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spamtl.features import featurize
from spamtl.mail.parse import parse_message
from spamtl.services.models import load_weights
from spamtl.store.engine import make_engine

from ..conftest import make_mail, run, write_mbox
from ..small_store import build_store

PROBE = make_mail("weekly newsletter digest 88", "this week in gardening news roses tulips lilies",
                  sender="news@garden.example", message_id="digest-88@garden.example")


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """north (ann, bob) calls the garden newsletter spam, south (cat, dan) wants it; trained; then bob is
    moved to south (with one more ham label) and nothing is retrained."""
    tmp = tmp_path_factory.mktemp("groups")
    settings = build_store(tmp, {"ann": ("north", True), "bob": ("north", True),
                                 "cat": ("south", False), "dan": ("south", False)})
    db = settings.database_url
    box = write_mbox(tmp / "more.mbox", [make_mail("project meeting 99 bob", "agenda budget", sender="c@bob.example")])
    refused = run(db, "import", "bob", str(box), "-l", "ham", "--group", "south")
    assert refused.exit_code == 1 and "--move-group" in refused.stderr
    assert run(db, "import", "bob", str(box), "-l", "ham", "--group", "south", "--move-group").exit_code == 0
    users = {u["user"]: u["group"] for u in json.loads(run(db, "users", "--format", "json").stdout)}
    assert users == {"ann": "north", "bob": "south", "cat": "south", "dan": "south"}
    yield {"db": db, "settings": settings}


def _z(weights, raw: bytes, kinds: list[tuple[str, str]]) -> float:  # type: ignore[no-untyped-def]
    """The logit of ``raw`` as the sum of the named parts, computed from the arrays (not the scorer)."""
    row = featurize(parse_message(raw))
    idf = weights.idf
    pos = np.searchsorted(idf.cols, row.indices)
    seen = (pos < len(idf.cols)) & (idf.cols[np.minimum(pos, len(idf.cols) - 1)] == row.indices)
    x = row.values.astype(np.float64) * np.where(seen, idf.values[np.minimum(pos, len(idf.cols) - 1)], idf.default)
    x /= np.linalg.norm(x)
    z = 0.0
    for kind, name in kinds:
        part = {"shared": weights.shared, "group": weights.groups.get(name), "user": weights.tasks.get(name)}[kind]
        assert part is not None, (kind, name)
        lookup = dict(zip(part.cols.tolist(), part.values.tolist()))
        z += part.intercept + sum(lookup.get(int(c), 0.0) * v for c, v in zip(row.indices, x))
    return z


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_a_moved_user_keeps_the_trained_group_part_until_retraining(moved: dict[str, object]) -> None:
    db = str(moved["db"])
    engine = make_engine(db)
    try:
        _, _, weights = load_weights(engine)
    finally:
        engine.dispose()
    assert weights.task_groups["bob"] == "north"  # what the version was trained with
    trained = _z(weights, PROBE, [("shared", ""), ("group", "north"), ("user", "bob")])
    wrong = _z(weights, PROBE, [("shared", ""), ("group", "south"), ("user", "bob")])
    assert abs(_sigmoid(trained) - _sigmoid(wrong)) > 0.05  # the two groups disagree on this mail
    verdict = json.loads(run(db, "classify", "bob", "-", "--format", "json", input=PROBE).stdout)
    assert abs(verdict["probability"] - _sigmoid(trained)) < 2e-6, (verdict, _sigmoid(trained), _sigmoid(wrong))
    explained = json.loads(run(db, "explain", "bob", "-", "--format", "json", input=PROBE).stdout)
    assert [(p["kind"], p["name"]) for p in explained["parts"]] == [("shared", ""), ("group", "north"),
                                                                    ("personal", "bob")]
    assert abs(explained["logit"] - trained) < 1e-9


def test_a_new_member_of_a_group_is_scored_with_its_part(moved: dict[str, object]) -> None:
    """eve joins south after training: no personal part, no trained group; the users table's group applies."""
    db = str(moved["db"])
    tmp = Path(str(moved["db"]).removeprefix("sqlite:///")).parent
    box = write_mbox(tmp / "eve.mbox", [make_mail("hello eve", "agenda budget", sender="c@eve.example")])
    assert run(db, "import", "eve", str(box), "-l", "ham", "--group", "south").exit_code == 0
    engine = make_engine(db)
    try:
        _, _, weights = load_weights(engine)
    finally:
        engine.dispose()
    expected = _sigmoid(_z(weights, PROBE, [("shared", ""), ("group", "south")]))
    verdict = json.loads(run(db, "classify", "eve", "-", "--format", "json", input=PROBE).stdout)
    assert abs(verdict["probability"] - expected) < 2e-6


def test_named_parts_a_known_task_keeps_its_trained_group() -> None:
    """The one assembly rule: shared, the group the task was trained in (the given group only for a task
    the model does not know), the task's own part; missing parts left out."""
    from spamtl.model.weights import ModelWeights, SparsePart

    part = SparsePart.empty
    weights = ModelWeights(8, part(), groups={"north": part(), "south": part()}, tasks={"bob": part()},
                           task_groups={"bob": "north"})
    assert [(k, n) for k, n, _ in weights.named_parts("bob", "south")] == [("shared", ""), ("group", "north"),
                                                                           ("personal", "bob")]
    assert [(k, n) for k, n, _ in weights.named_parts("eve", "south")] == [("shared", ""), ("group", "south")]
    assert [(k, n) for k, n, _ in weights.named_parts("eve", "west")] == [("shared", "")]
    assert [(k, n) for k, n, _ in weights.named_parts(None)] == [("shared", "")]
