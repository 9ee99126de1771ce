"""Shared fixtures: temporary databases, the real corpora, small synthetic mail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
CORPORA = Path(os.environ.get("SPAMTL_CORPORA", REPO.parent / "shared" / "corpora"))
NOW = datetime(2026, 11, 23, 12, 0, 0)


def corpus(*parts: str) -> Path:
    """Path into ../shared/corpora; skips the test when the corpora are not beside the checkout."""
    path = CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"corpus not available: {path}")
    return path


def make_mail(subject: str, body: str, *, sender: str = "someone@example.org", message_id: str | None = None,
              extra_headers: str = "") -> bytes:
    mid = f"Message-ID: <{message_id}>\n" if message_id else ""
    return (f"From: {sender}\nTo: user@example.net\nSubject: {subject}\n{mid}{extra_headers}"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    with path.open("wb") as fh:
        for raw in messages:
            fh.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2004\n" + raw.rstrip(b"\n") + b"\n\n")
    return path


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file upgraded to the current schema by Alembic."""
    from spamtl.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'spamtl.sqlite3'}"
    engine = make_engine(url, create_dir=True)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[object]:
    from spamtl.store.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()
