"""Services with groups: what is saved is what is loaded, and scoring uses the group part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spamtl.services.classify import open_reader
from spamtl.services.importing import import_mail
from spamtl.services.models import load_weights
from spamtl.services.training import train
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import NOW, write_mbox


def test_groups_survive_save_and_load(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    groups = {"ann": "north", "bob": "north", "cat": "south"}
    for user, group in groups.items():
        spam = write_mbox(tmp_path / f"{user}-s.mbox", _mails(1, "spam", 12))
        ham = write_mbox(tmp_path / f"{user}-h.mbox", _mails(2, user, 12))
        import_mail(engine, user=user, paths=[str(spam)], label="spam", group=group, now=NOW)
        import_mail(engine, user=user, paths=[str(ham)], label="ham", group=group, now=NOW)
    settings = Settings(database_url=str(engine.url))
    result = train(engine, settings, now=NOW)
    _, _, weights = load_weights(engine, result.version)
    assert weights.task_groups == groups
    assert set(weights.groups) == {"north", "south"}
    reader = open_reader(make_engine(settings.database_url), settings)
    model = reader.user_model("bob")
    reader.store.close()
    assert model.group == "north" and set(model.weights.groups) == {"north"}
    # The group part contributes to bob's score.
    from spamtl.model.estimator import MultiTaskLogisticRegression

    est = MultiTaskLogisticRegression.from_weights(weights)
    assert list(est.task_groups_) == [0, 0, 1]
    assert np.abs(est.coef_groups_.toarray()).max() > 0


def _import_three_users(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for k, user in enumerate(("ann", "bob", "cat")):
        spam = write_mbox(tmp_path / f"{user}-s.mbox", _mails(1, "spam", 12))
        ham = write_mbox(tmp_path / f"{user}-h.mbox", _mails(2 + k, user, 12))
        import_mail(engine, user=user, paths=[str(spam)], label="spam", now=NOW)
        import_mail(engine, user=user, paths=[str(ham)], label="ham", now=NOW)


def _probabilities(engine, settings: Settings, raws: list[bytes]) -> list[float]:  # type: ignore[no-untyped-def]
    from spamtl.mail.sources import RawMail
    from spamtl.services.classify import classify_messages, open_reader

    reader = open_reader(make_engine(settings.database_url), settings)
    out = list(classify_messages(reader, user="bob", now=NOW, log=False,
                                 mails=[RawMail(f"m{i}", raw) for i, raw in enumerate(raws)]))
    reader.store.close()
    return [v.probability for v in out]  # type: ignore[union-attr]


def test_trained_model_stores_its_idf_and_scores_with_it(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from spamtl.features import FeatureConfig, featurize
    from spamtl.mail.parse import parse_message
    from spamtl.model.estimator import MultiTaskLogisticRegression

    _import_three_users(engine, tmp_path)
    settings = Settings(database_url=str(engine.url))
    result = train(engine, settings, now=NOW)
    _, key, weights = load_weights(engine, result.version)
    assert key == FeatureConfig().key and weights.idf is not None
    assert weights.idf.n_documents == result.metrics["train_messages"]
    est = MultiTaskLogisticRegression.from_weights(weights)
    raws = _mails(7, "bob", 3) + _mails(8, "spam", 3)
    rows = [featurize(parse_message(r), FeatureConfig()) for r in raws]
    from spamtl.features import rows_to_csr

    expected = est.predict_proba(rows_to_csr(rows), tasks=["bob"] * len(rows))[:, 1]
    np.testing.assert_allclose(_probabilities(engine, settings, raws), expected, rtol=1e-9)


def test_upgrade_from_the_first_schema_keeps_old_models_working(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from spamtl.features import FeatureConfig
    from spamtl.store.engine import downgrade, upgrade

    _import_three_users(engine, tmp_path)
    # What the first release trained: log term frequencies, no idf, schema 0001.
    old_settings = Settings(database_url=str(engine.url), features=FeatureConfig(tf="log"), idf=False)
    old = train(engine, old_settings, now=NOW)
    downgrade(engine, "0001")
    with engine.connect() as conn:
        with pytest.raises(IntegrityError):
            conn.execute(text("INSERT INTO model_parts VALUES (:v, 'idf', '', :d)"), {"v": old.version, "d": b"\0"})
        conn.rollback()
    upgrade(engine)
    raws = _mails(7, "bob", 2) + _mails(8, "spam", 2)
    settings = Settings(database_url=str(engine.url))
    before = _probabilities(engine, old_settings, raws)
    # After the upgrade the old model still scores as it did (its key says log tf, and it has no idf) ...
    assert _probabilities(engine, settings, raws) == before
    # ... until the next training replaces it: features changed, so the new model is promoted.
    new = train(engine, settings, now=NOW)
    assert new.promoted and "features changed" in new.reason
    _, _, weights = load_weights(engine, new.version)
    assert weights.idf is not None
    with engine.connect() as conn:
        kinds = {k for (k,) in conn.execute(text("SELECT DISTINCT kind FROM model_parts"))}
        assert kinds == {"shared", "user", "idf"}
        with pytest.raises(IntegrityError):
            conn.execute(text("INSERT INTO model_parts (model_version_id, kind, name, data) "
                              "VALUES (:v, 'bogus', '', :d)"), {"v": new.version, "d": b"\0"})
        conn.rollback()
    # Downgrading retires the models that need idf rather than leave one active that scores wrongly.
    downgrade(engine, "0001")
    with engine.connect() as conn:
        status = dict(conn.execute(text("SELECT id, status FROM model_versions")).all())
        assert status[new.version] == "retired"
        assert conn.execute(text("SELECT count(*) FROM model_parts WHERE kind = 'idf'")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM labels")).scalar() == 72
    upgrade(engine)
