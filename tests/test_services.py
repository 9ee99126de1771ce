"""Services with groups: what is saved is what is loaded, and scoring uses the group part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from spamtl.config import Settings
from spamtl.services.classify import load_user_model
from spamtl.services.importing import import_mail
from spamtl.services.models import load_weights
from spamtl.services.training import train

from .conftest import NOW, write_mbox
from .test_cli_loop import _mails


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
    with Session(engine) as session:
        model = load_user_model(session, "bob")
    assert model.group == "north" and set(model.weights.groups) == {"north"}
    # The group part contributes to bob's score.
    from spamtl.model import MultiTaskLogisticRegression

    est = MultiTaskLogisticRegression.from_weights(weights)
    assert list(est.task_groups_) == [0, 0, 1]
    assert np.abs(est.coef_groups_.toarray()).max() > 0
