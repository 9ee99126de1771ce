"""A small trained store for the tests of planted defects: a few users, a few dozen messages each, one mu.

Not a test module: the factory the behaviour tests (``test_corrections_stick``, ``test_group_parts``,
``test_explain_order``, ``test_retention_days``, ``test_size_limits``, ...) build their stores with;
and :func:`imported_store`, two users' mail imported through the CLI (``test_small_things``,
``test_bounded_work``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from spamtl.services.importing import import_mail
from spamtl.services.training import train
from spamtl.settings import Settings
from spamtl.store.engine import make_engine, upgrade

from .cli.test_loop import _mails
from .conftest import NOW, run, write_mbox


def build_store(tmp: Path, users: dict[str, tuple[str | None, bool]], *, n: int = 15,
                now: datetime = NOW, **settings: object) -> Settings:
    """A SQLite store in ``tmp`` where each user has ``n`` spam and ``n`` ham, trained once (v1, promoted).

    ``users`` maps a name to (group, whether they call the garden newsletter spam); everyone gets the
    same spam, each user their own colleagues' ham.  One mu (10) instead of the grid: four times fewer fits.
    """
    url = f"sqlite:///{tmp / 'store.sqlite3'}"
    engine = make_engine(url, create_dir=True)
    try:
        upgrade(engine)
        for k, (user, (group, news_is_spam)) in enumerate(users.items()):
            news = _mails(2, "newsletter", n // 2)
            spam = _mails(1, "spam", n) + (news if news_is_spam else [])
            ham = _mails(3 + k, user, n) + ([] if news_is_spam else news)
            for label, mails in (("spam", spam), ("ham", ham)):
                box = write_mbox(tmp / f"{user}-{label}.mbox", mails)
                import_mail(engine, user=user, paths=[str(box)], label=label, group=group, now=now)
        result_settings = Settings(database_url=url, **{"mus": (10.0,), **settings})  # type: ignore[arg-type]
        result = train(engine, result_settings, now=now)
        assert result.version == 1 and result.promoted, result.reason
    finally:
        engine.dispose()
    return result_settings


def imported_store(tmp: Path, *, train: bool) -> str:
    """URL of a SQLite store in ``tmp`` built with the CLI: ``spamtl init``, then ann and bob each import
    20 spam (the same) and 20 ham (their own colleagues'); trained once (``spamtl train``) when ``train``."""
    db = f"sqlite:///{tmp / 'store.sqlite3'}"
    assert run(db, "init").exit_code == 0
    for user in ("ann", "bob"):
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-s.mbox", _mails(1, "spam", 20))), "-l",
                   "spam").exit_code == 0
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-h.mbox", _mails(3, user, 20))), "-l",
                   "ham").exit_code == 0
    if train:
        assert run(db, "train").exit_code == 0
    return db
