"""Training rows in files, mapped (spamtl.rowfiles): the same matrix as in memory, read-only, pages handed back."""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import spamtl.rowfiles as rowfiles
from spamtl.features import IdfWeights
from spamtl.model.estimator import MultiTaskLogisticRegression
from spamtl.rowfiles import RowWriter, _mapping, column_counts, map_rows, release_pages, row_batches
from spamtl.services import dataset, training
from spamtl.services.training import fit_candidate, load_labels, min_df_mask, prepare_features, train

from .conftest import NOW
from .services.test_training import _build, _settings


def is_mapped(X: object) -> bool:
    """Whether ``X``'s values are a map of a RowWriter file."""
    return sp.issparse(X) and _mapping(X.data) is not None


def _written(X: sp.csr_matrix, directory: Path, batch: int = 70, name: str = "rows") -> sp.csr_matrix:
    writer = RowWriter(str(directory), X.shape[1], name)
    for r0, r1 in row_batches(X.shape[0], batch):
        writer.append(X[r0:r1])
    return writer.finish()


def _matrix(n: int = 333, d: int = 40, seed: int = 0) -> sp.csr_matrix:
    return sp.random(n, d, density=0.15, format="csr", random_state=seed)


def test_written_rows_are_the_matrix_mapped_read_only(tmp_path: Path) -> None:
    X = _matrix()
    M = _written(X, tmp_path)
    assert is_mapped(M) and not is_mapped(X)
    assert M.shape == X.shape and M.nnz == X.nnz
    np.testing.assert_array_equal(M.indptr, X.indptr)
    np.testing.assert_array_equal(M.indices, X.indices)
    np.testing.assert_array_equal(M.data, X.data)
    assert M.has_canonical_format
    with pytest.raises(ValueError, match="read-only"):
        M.data[0] = 1.0
    rows = np.array([5, 0, 332, 5])
    np.testing.assert_array_equal(M[rows].toarray(), X[rows].toarray())
    w = np.random.default_rng(1).normal(size=X.shape[1])
    np.testing.assert_allclose(M @ w, X @ w)
    np.testing.assert_allclose(M.T @ (X @ w), X.T @ (X @ w))
    assert os.path.getsize(tmp_path / "rows.values") == 8 * X.nnz
    assert os.path.getsize(tmp_path / "rows.columns") == 4 * X.nnz


def test_batches_are_made_canonical_before_they_are_written(tmp_path: Path) -> None:
    """Unsorted columns and a repeated one (summed): the mapped matrix could not be fixed in place later."""
    batch = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0]), np.array([3, 1, 3, 0]), np.array([0, 3, 4])),
                          shape=(2, 5))
    writer = RowWriter(str(tmp_path), 5)
    writer.append(batch)
    M = writer.finish()
    np.testing.assert_array_equal(M.toarray(), [[0, 2, 0, 4, 0], [4, 0, 0, 0, 0]])
    np.testing.assert_array_equal(M.indices, [1, 3, 0])


def test_no_rows_and_empty_rows(tmp_path: Path) -> None:
    empty = RowWriter(str(tmp_path), 7, "none").finish()
    assert empty.shape == (0, 7) and empty.nnz == 0
    writer = RowWriter(str(tmp_path), 7, "blank")
    writer.append(sp.csr_matrix((3, 7)))
    writer.append(sp.csr_matrix(np.array([[0, 0, 2.0, 0, 0, 0, 0]])))
    M = writer.finish()
    assert M.shape == (4, 7)
    np.testing.assert_array_equal(M.toarray()[3], [0, 0, 2, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="columns"):
        RowWriter(str(tmp_path), 7, "wrong").append(sp.csr_matrix((1, 8)))


def _resident_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"),
                    reason="resident memory from /proc; madvise")
def test_release_hands_back_the_pages_read(tmp_path: Path) -> None:
    """40 MB of values read through the map are resident; after release_pages they are not, and still read."""
    n = 5_000_000
    X = sp.csr_matrix((np.arange(n, dtype=np.float64) + 1.0, np.zeros(n, np.int32), np.arange(n + 1)),
                      shape=(n, 1))
    writer = RowWriter(str(tmp_path), 1)
    writer.append(X)
    M = writer.finish()
    del X, writer
    before = _resident_kb()
    total = float(M.data.sum())  # every page read
    read = _resident_kb()
    release_pages(M)
    after = _resident_kb()
    assert read - before > 30_000
    assert read - after > 30_000
    assert float(M.data.sum()) == total == n * (n + 1) / 2
    release_pages(sp.csr_matrix((2, 2)))  # a matrix in memory: nothing to do


def test_column_counts_and_document_frequencies_by_batches(tmp_path: Path) -> None:
    X = _matrix(seed=2)
    X.data[::7] = 0.0  # stored zeros: present for min_df, absent for IDF
    for batch_rows in (None, 50):
        np.testing.assert_array_equal(column_counts(X, batch_rows=batch_rows),
                                      np.bincount(X.indices, minlength=X.shape[1]))
        np.testing.assert_array_equal(column_counts(X, nonzero=True, batch_rows=batch_rows),
                                      np.bincount(X.indices[X.data != 0], minlength=X.shape[1]))
    M = _written(X, tmp_path)
    idf = IdfWeights.fit(M)
    from sklearn.feature_extraction.text import TfidfTransformer

    reference = TfidfTransformer(smooth_idf=True).fit((X != 0).astype(float))
    np.testing.assert_allclose(idf.dense(X.shape[1])[idf.cols], reference.idf_[idf.cols])


def test_min_df_mask_in_files_equals_in_memory_and_leaves_its_input(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    X = _matrix(n=120, d=400, seed=3)  # many columns seen once
    copy = X.copy()
    df = np.bincount(X.indices, minlength=X.shape[1])
    expected = X.multiply((df >= 2)[None, :]).tocsr()
    in_memory = min_df_mask(X)
    written = _written(X, tmp_path)
    batches: list[tuple[int, int]] = []
    real = rowfiles.row_batches
    monkeypatch.setattr(rowfiles, "row_batches", lambda n, size=None: batches.extend(real(n, size)) or real(n, size))  # spy
    on_disk = min_df_mask(written, directory=str(tmp_path), batch_rows=40)
    assert batches == [(0, 40), (40, 80), (80, 120)] * 2  # counting the columns, then masking
    assert is_mapped(on_disk) and not is_mapped(in_memory)
    for got in (in_memory, on_disk):
        np.testing.assert_array_equal(got.toarray(), expected.toarray())
        assert got.nnz == expected.nnz  # zeroed, and removed
    np.testing.assert_array_equal(X.toarray(), copy.toarray())
    assert map_rows(sp.csr_matrix((0, 4)), lambda p: p).shape == (0, 4)


@pytest.mark.parametrize("solver", ["joint", "projected"])
def test_training_rows_in_files_give_the_model_fitted_in_memory(engine, tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                solver: str) -> None:
    settings = _build(engine, tmp_path)
    params = {**training.base_params(settings), "alpha": 0.01, "mu": 10.0, "solver": solver}
    in_memory = prepare_features(load_labels(engine, settings))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Several batches when reading and when masking.
    read: list[int] = []
    masked: list[int | None] = []
    real, real_batches = dataset.feature_rows, rowfiles.row_batches
    monkeypatch.setattr(dataset, "feature_rows", lambda e, pks, *a: read.append(len(pks)) or real(e, pks, *a))  # spy
    monkeypatch.setattr(rowfiles, "row_batches", lambda n, size=None: masked.append(size) or real_batches(n, size))
    on_disk = prepare_features(load_labels(engine, settings, directory=str(scratch), batch_rows=37), str(scratch),
                               batch_rows=37)
    assert len(read) > 1 and max(read) <= 37, read
    assert masked == [37, 37], masked  # counting the columns, then masking
    assert is_mapped(on_disk.X) and not is_mapped(in_memory.X)
    np.testing.assert_array_equal(on_disk.X.toarray(), in_memory.X.toarray())
    np.testing.assert_array_equal(on_disk.users, in_memory.users)
    np.testing.assert_array_equal(on_disk.message_pks, in_memory.message_pks)
    a = fit_candidate(in_memory, in_memory.y, params)
    b = fit_candidate(on_disk, on_disk.y, params)
    assert a.solver_ == b.solver_ == solver
    np.testing.assert_array_equal(a.coef_shared_, b.coef_shared_)
    np.testing.assert_array_equal(a.coef_tasks_.toarray(), b.coef_tasks_.toarray())
    assert isinstance(a, MultiTaskLogisticRegression)


def test_nightly_training_reads_mapped_rows_and_removes_them(engine, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = _build(engine, tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    seen = []
    real = training.choose_and_fit

    def spy(data, *args, **kwargs):  # type: ignore[no-untyped-def]
        scratch = sorted((tmp_path / "tmp").iterdir())
        seen.append((is_mapped(data.X), [p.name for p in scratch], sorted(p.name for p in scratch[0].iterdir())))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(training, "choose_and_fit", spy)
    train(engine, settings, now=NOW)
    assert seen[0][0] and len(seen[0][1]) == 1 and seen[0][1][0].startswith("spamtl-train-")
    assert seen[0][2] == ["prepared.columns", "prepared.values"]  # the rows as read are gone once prepared
    assert list((tmp_path / "tmp").iterdir()) == []

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise MemoryError("planted")

    monkeypatch.setattr(training, "choose_and_fit", broken)
    with pytest.raises(MemoryError, match="planted"):
        train(engine, _settings(engine), now=NOW)
    assert list((tmp_path / "tmp").iterdir()) == []


def _resident_of(path: Path) -> int:
    """kB of ``path``'s mapping resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def _forty_users(tmp_path: Path) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, Path]:
    """20,000 rows of 40 users, 8 MB of values, in a file."""
    rng = np.random.default_rng(4)
    n, d, per_row = 20_000, 2_000, 50
    cols = np.sort(rng.choice(d, size=(n, per_row)), axis=1)
    X = sp.csr_matrix((rng.random(n * per_row), cols.ravel(), np.arange(0, n * per_row + 1, per_row)), shape=(n, d))
    X.sum_duplicates()
    y = np.where(X @ rng.normal(size=d) + rng.normal(size=n) > 0, 1.0, -1.0)
    return _written(X, tmp_path, batch=5_000), y, np.repeat(np.arange(40), n // 40), tmp_path / "rows.values"


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="per-mapping memory from /proc")
def test_the_projected_fit_holds_about_one_chunk_of_mapped_rows_at_a_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """20,000 rows in chunks of 2,000: while each chunk is built, the rows' file is resident for about one
    chunk, not for every chunk read so far (the fit then reads them again from the chunks)."""
    import spamtl.model.projected as projected

    M, y, tasks, values = _forty_users(tmp_path)
    n = len(y)
    size_kb = os.path.getsize(values) // 1024
    resident = []
    real = projected.UserChunk.__init__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        resident.append(_resident_of(values))
        real(self, *args, **kwargs)

    monkeypatch.setattr(projected.UserChunk, "__init__", spy)
    loss = projected.ProjectedLoss(M, y, np.ones(n), tasks, np.full(40, -1), alpha=1.0, mu=1.0, mu_group=1.0,
                                   tol=1e-4, chunk_rows=2_000)
    loss.close()
    assert len(resident) == 10
    assert max(resident) <= size_kb / 10 + 64, (resident, size_kb)  # one chunk (plus partly read pages)
    assert _resident_of(values) <= 64


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="per-mapping memory from /proc")
def test_the_cross_fitting_refits_hold_about_one_chunk_of_mapped_rows_at_a_time(tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                  monkeypatch) -> None:
    import spamtl.model.refit as model

    M, y, tasks, values = _forty_users(tmp_path)
    size_kb = os.path.getsize(values) // 1024
    train_rows = np.flatnonzero(np.arange(len(y)) % 3 != 0)
    test_rows = np.flatnonzero(np.arange(len(y)) % 3 == 0)
    est = MultiTaskLogisticRegression(alpha=1.0, mu=1.0, idf=True).fit(M[:2_000], y[:2_000], tasks=tasks[:2_000])
    release_pages(M)
    resident = []
    real = model._personal_parts

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        resident.append(_resident_of(values))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "_personal_parts", spy)
    scores = model.score_refitted_tasks((M, y, tasks, None), est, train_rows, test_rows, chunk_rows=1_400)
    assert len(resident) >= 9 and np.isfinite(scores).all()
    assert max(resident) <= size_kb / 3, (resident, size_kb)  # a chunk is 1/7 of the rows: its pages and neighbours


def test_a_new_scratch_directory_removes_those_killed_trainings_left(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A training killed by SIGKILL (the out-of-memory killer) cannot remove its rows; the next one does, and
    only those of this host's processes that no longer run."""
    import socket
    import subprocess

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f"spamtl-train-{host}-{gone.pid}-abc"
    alive = tmp_path / f"spamtl-train-{host}-{os.getppid()}-def"  # pytest's parent: running
    elsewhere = tmp_path / f"spamtl-train-otherhost-{gone.pid}-ghi"
    other_kind = tmp_path / f"spamtl-fit-{host}-{gone.pid}-jkl"
    for d in (dead, alive, elsewhere, other_kind):
        d.mkdir()
        (d / "prepared.values").write_bytes(b"x" * 10)
    with rowfiles.scratch_directory("spamtl-train-") as made:
        assert Path(made).name.startswith(f"spamtl-train-{host}-{os.getpid()}-") and Path(made).is_dir()
    assert not Path(made).exists()
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists() and other_kind.exists()
