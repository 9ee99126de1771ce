"""A damaged model part in the store is one ``Error:`` line saying what to do, in every way mail is scored.

The parts are ``.npz`` bytes (``spamtl.model.weights``); damage here is what a bad disk, a bad copy or a
hand-edited row leaves: bytes cut short, garbage, an archive of pickled object arrays (which must never
be loaded), an archive without the expected arrays, columns outside the model.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ..cli.test_loop import (
    _build_store,
    run,
    store,  # noqa: F401 - the trained module-scoped store fixture
)
from ..conftest import blank_database, run_sql

ADVICE = "activate a good version (`spamtl models activate N`) or retrain (`spamtl train`)"
MAIL = b"From: news@garden.example\nSubject: weekly newsletter digest 99\n\nthis week in gardening news\n"
PARTS = {"user": ("ann", "user 'ann'"), "shared": ("", "shared part"), "idf": ("", "idf weights")}


def _npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _scalars(kind: str) -> dict[str, object]:
    return {"default": np.float64(2.0), "n_documents": np.int64(9)} if kind == "idf" else {"intercept": np.float64(0)}


# name -> (what it does to the part's bytes, given the part's kind and the model's n_features; the reason shown)
DAMAGE: dict[str, tuple[Callable[[bytes, str, int], bytes], str]] = {
    "truncated": (lambda data, kind, n: data[:len(data) // 2], "cut short, or not .npz data"),
    "garbage": (lambda data, kind, n: bytes(range(256)) * 4, "not .npz data"),
    "empty": (lambda data, kind, n: b"", "empty or cut short"),
    "object-arrays": (lambda data, kind, n: _npz(cols=np.array([1, "rm -rf"], dtype=object),
                                                 values=np.array([0.5, 0.5]), **_scalars(kind)),
                      "pickled object arrays, never loaded"),
    "missing-array": (lambda data, kind, n: _npz(cols=np.array([1, 2]), **_scalars(kind)), "no 'values' array"),
    "outside-the-model": (lambda data, kind, n: _npz(cols=np.array([1, n]), values=np.array([0.5, 0.5]),
                                                     **_scalars(kind)), "columns beyond the model's {n} features"),
}


@contextlib.contextmanager
def damaged(db: str, kind: str, how: str) -> Iterator[str]:
    """The active version's ``kind`` part damaged ``how`` (restored afterwards); yields the expected error line."""
    name, label = PARTS[kind]
    [(version, n_features)] = run_sql(db, "SELECT id, n_features FROM model_versions WHERE status = 'active'")
    where = "model_version_id = :v AND kind = :k AND name = :n"
    key = {"v": version, "k": kind, "n": name}
    [(original,)] = run_sql(db, f"SELECT data FROM model_parts WHERE {where}", key)
    change, reason = DAMAGE[how]
    run_sql(db, f"UPDATE model_parts SET data = :d WHERE {where}",
            {**key, "d": change(bytes(original), kind, int(n_features))})  # type: ignore[arg-type]
    try:
        yield f"Error: model version {version} is damaged ({label}: {reason.format(n=n_features)}); {ADVICE}"
    finally:
        run_sql(db, f"UPDATE model_parts SET data = :d WHERE {where}", {**key, "d": original})


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("kind", list(PARTS))
def test_classify_and_explain_say_one_line_and_exit_1(store, kind: str, how: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    with damaged(db, kind, how) as error:
        for command in (["classify", "ann", "-"], ["classify", "ann", "-", "--format", "json"], ["explain", "ann", "-"]):
            result = run(db, *command, input=MAIL)
            assert (result.exit_code, result.stderr, result.stdout) == (1, error + "\n", ""), command
    assert run(db, "classify", "ann", "-", input=MAIL).exit_code == 0  # restored


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("kind", list(PARTS))
def test_filter_mode_passes_the_mail_through_marked_error(store, kind: str, how: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    db = str(store["db"])
    with damaged(db, kind, how) as error:
        for extra in ([], ["--report"]):
            result = run(db, "classify", "ann", "--filter", *extra, input=MAIL)
            assert result.exit_code == 1
            assert result.stdout_bytes == b"X-Spamtl-Status: error\n" + MAIL
            assert result.stderr == error + " (message passed through unfiltered)\n"


def test_the_daemon_answers_spamc_with_the_error_and_serves_other_users(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from ..serve.test_daemon import Daemon

    db = str(store["db"])
    with damaged(db, "user", "object-arrays") as error:
        daemon = Daemon(db, tmp_path, "--workers", "1")
        try:
            ann = daemon.request("CHECK", MAIL, user="ann")
            bob = daemon.request("CHECK", MAIL, user="bob")
        finally:
            code, err = daemon.stop()
    assert ann == f"SPAMD/1.5 75 {error.removeprefix('Error: ')}\r\n\r\n".encode()
    assert bob.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: ")
    assert code == 0 and "Traceback" not in err


def test_training_gets_past_a_damaged_active_model(tmp_path: Path) -> None:
    """`spamtl train` is one way out the error names: it fits from scratch instead of warm-starting."""
    with blank_database(tmp_path, "damaged") as db:
        _build_store(tmp_path, db)
        with damaged(db, "shared", "truncated") as error:
            assert run(db, "classify", "ann", "-", input=MAIL).stderr == error + "\n"
            result = run(db, "train")
            assert result.exit_code == 0, result.output
            assert "Model v2 promoted" in result.stdout
            assert run(db, "classify", "ann", "-", input=MAIL).exit_code == 0
