"""Training rows in files, mapped rather than held, so that training's memory is that of the model.

:class:`RowWriter` gives back a CSR matrix whose values and columns are read-only maps of scratch files;
steps that walk every row call :func:`release_pages` after each batch to hand the read pages back.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["BATCH_ROWS", "RowWriter", "release_pages", "row_batches", "column_counts", "stack_rows",
           "map_rows", "remove_rows", "scratch_parent", "scratch_directory", "new_scratch_directory", "ArrayStore"]

BATCH_ROWS = 100_000
"""Rows a whole-matrix pass reads at a time (~110 MB of a batch's values and columns at 140 per row)."""

_VALUES, _COLUMNS = np.dtype(np.float64), np.dtype(np.int32)


class RowWriter:
    """A CSR matrix written batch by batch to ``{directory}/{name}.values`` and ``.columns``.

    :meth:`append` takes batches of rows in order; :meth:`finish` gives the whole matrix, mapped.  Column
    indices are kept as int32 (the feature space has 2^18 columns); past 2^31 non-zeros (about 15 million
    labels) scipy needs int64 ones and copies them into memory.
    """

    def __init__(self, directory: str, n_features: int, name: str = "rows") -> None:
        self.n_features = int(n_features)
        self.paths = (os.path.join(directory, f"{name}.values"), os.path.join(directory, f"{name}.columns"))
        self._files = [open(path, "xb") for path in self.paths]
        self._ends: list[np.ndarray] = [np.zeros(1, np.int64)]
        self._nnz = 0

    def append(self, X: Any) -> None:
        X = sp.csr_matrix(X)
        if X.shape[1] != self.n_features:
            raise ValueError(f"rows have {X.shape[1]} columns, expected {self.n_features}")
        X.sum_duplicates()  # canonical (sorted, no repeats): the mapped matrix cannot be sorted in place later
        try:
            np.ascontiguousarray(X.data, dtype=_VALUES).tofile(self._files[0])
            np.ascontiguousarray(X.indices, dtype=_COLUMNS).tofile(self._files[1])
        except OSError as exc:
            self._close()
            raise OSError(exc.errno, f"cannot write the training rows in {os.path.dirname(self.paths[0])} "
                                     f"({exc.strerror}); set TMPDIR to a directory with more room") from exc
        self._ends.append(X.indptr[1:].astype(np.int64) + self._nnz)
        self._nnz += X.nnz

    def finish(self) -> sp.csr_matrix:
        """The rows appended so far as one matrix (values and columns mapped read-only)."""
        self._close()
        indptr = np.concatenate(self._ends)
        X = sp.csr_matrix((_map(self.paths[0], _VALUES), _map(self.paths[1], _COLUMNS), indptr),
                          shape=(len(indptr) - 1, self.n_features), copy=False)
        X.has_canonical_format = True  # as every batch was
        return X

    def _close(self) -> None:
        for f in self._files:
            f.close()


def remove_rows(directory: str, name: str = "rows") -> None:
    """Delete the files of ``{directory}/{name}``: a matrix mapping them still reads them, and their disk
    space is freed when it is gone."""
    for suffix in (".values", ".columns"):
        os.remove(os.path.join(directory, name + suffix))


def _map(path: str, dtype: np.dtype) -> np.ndarray:
    size = os.path.getsize(path)
    if size == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    return np.frombuffer(mapping, dtype=dtype)


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    base: Any = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return None


def release_pages(X: Any) -> None:
    """Hand back the pages of ``X``'s mapped values and columns that this process has read (nothing for a
    matrix in memory).  They stay in the page cache; the next read maps them again."""
    if not sp.issparse(X) or not hasattr(X, "indices") or not hasattr(mmap, "MADV_DONTNEED"):
        return  # (no madvise on Windows: the pages are then the system's to drop)
    for array in (X.data, X.indices):
        mapping = _mapping(array)
        if mapping is not None:
            mapping.madvise(mmap.MADV_DONTNEED)


def row_batches(n_rows: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """(r0, r1) ranges of at most ``size`` (default ``BATCH_ROWS``) rows covering 0..n_rows-1."""
    size = size or BATCH_ROWS
    for r0 in range(0, n_rows, size):
        yield r0, min(r0 + size, n_rows)


def column_counts(X: sp.csr_matrix, nonzero: bool = False, batch_rows: int | None = None) -> np.ndarray:
    """How many rows store each column (``nonzero``: with a value other than 0), ``batch_rows`` rows (default
    ``BATCH_ROWS``) at a time."""
    counts = np.zeros(X.shape[1], np.int64)
    for r0, r1 in row_batches(X.shape[0], batch_rows):
        part = X[r0:r1]  # a copy in memory (scipy copies row slices)
        columns = part.indices[part.data != 0] if nonzero else part.indices
        counts += np.bincount(columns, minlength=X.shape[1])
        release_pages(X)
    return counts


def stack_rows(batches: Iterable[Any], n_features: int, directory: str | None = None,
               name: str = "rows") -> sp.csr_matrix:
    """Batches of rows, in order, as one matrix: written to ``{directory}/{name}`` and mapped
    (:class:`RowWriter`), or in memory without a directory."""
    if directory is not None:
        writer = RowWriter(directory, n_features, name)
        for part in batches:
            writer.append(part)
        return writer.finish()
    parts = [sp.csr_matrix(part) for part in batches]
    if len(parts) == 1:
        return parts[0]
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, n_features))


def map_rows(X: sp.csr_matrix, change: Any, directory: str | None = None, name: str = "rows",
             batch_rows: int | None = None) -> sp.csr_matrix:
    """``change`` applied to ``X`` ``batch_rows`` rows (default ``BATCH_ROWS``) at a time (each batch a CSR
    copy it may modify), into a new mapped matrix in ``directory``, or in memory without one."""

    def changed() -> Iterator[sp.csr_matrix]:
        for r0, r1 in row_batches(X.shape[0], batch_rows):
            part = change(X[r0:r1])
            release_pages(X)
            yield part

    return stack_rows(changed(), X.shape[1], directory, name)


def _on_memory_filesystem(path: str, mounts: str | None = None) -> bool:
    """Whether ``path`` is on a tmpfs or ramfs (per ``/proc/self/mounts``, or ``mounts`` in its format)."""
    if mounts is None:
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
                mounts = f.read()
        except OSError:
            return False
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind in ("tmpfs", "ramfs")


def scratch_parent(mounts: str | None = None) -> str:
    """Where training keeps its rows and a fit its chunks: ``$TMPDIR`` if set, else the system's temporary
    directory, unless that is a tmpfs (memory: data kept there would leave none free) and ``/var/tmp`` is a
    writable disk."""
    default = tempfile.gettempdir()
    if os.environ.get("TMPDIR") or not _on_memory_filesystem(default, mounts):
        return default
    disk = "/var/tmp"
    if os.path.isdir(disk) and os.access(disk, os.W_OK) and not _on_memory_filesystem(disk, mounts):
        return disk
    return default


def new_scratch_directory(prefix: str) -> str:
    """A new directory in :func:`scratch_parent` named for this host and process, after removing those this
    host's processes of the same ``prefix`` left behind and no longer run: a training killed (the
    out-of-memory killer, SIGKILL) cannot remove its own, and they hold gigabytes on a large store."""
    parent = scratch_parent()
    mine = f"{prefix}{socket.gethostname()}-"
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            pid = entry.name[len(mine):].split("-", 1)[0]
            if (entry.name.startswith(mine) and pid.isdigit() and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid() and not _running(int(pid))):
                shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-", dir=parent)


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[str]:
    """:func:`new_scratch_directory`, removed when the block ends, however it ends."""
    path = new_scratch_directory(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_directory(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not from a process forked meanwhile (a fold worker)
        shutil.rmtree(path, ignore_errors=True)


class ArrayStore:
    """Arrays put away and got back by handle: kept as they are, or (``spill=True``) written to a scratch
    directory and mapped again on each :meth:`get`, so that only the arrays in use are in memory.

    The directory (``spamtl-fit-*`` in :func:`scratch_parent`) is removed by :meth:`close`, or
    when the store is collected, by the process that made it.
    """

    def __init__(self, spill: bool) -> None:
        self._kept: dict[int, np.ndarray] = {}
        self._count = 0
        self._lock = threading.Lock()  # chunks are built by several threads
        self.directory: str | None = None
        if spill:
            self.directory = new_scratch_directory("spamtl-fit-")
            self._finalizer = weakref.finalize(self, _remove_directory, self.directory, os.getpid())

    def put(self, array: np.ndarray) -> int:
        with self._lock:
            handle = self._count
            self._count += 1
        if self.directory is None or array.nbytes == 0:  # an empty array cannot be mapped
            self._kept[handle] = array
            return handle
        path = os.path.join(self.directory, f"{handle}.npy")
        try:
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the fit's scratch data in {self.directory} ({exc.strerror}); "
                                     "set TMPDIR to a directory with more room") from exc
        return handle

    def get(self, handle: int) -> np.ndarray:
        """The array (read-only where it is on disk: mapped, not read, so that the pages come from the page
        cache without a copy and leave memory when the array is dropped)."""
        if handle in self._kept:
            return self._kept[handle]
        return np.load(os.path.join(self.directory, f"{handle}.npy"), mmap_mode="r", allow_pickle=False)

    def put_csr(self, X: sp.csr_matrix) -> tuple[int, int, int, tuple[int, int]]:
        return self.put(X.data), self.put(X.indices), self.put(X.indptr), X.shape

    def get_csr(self, handles: tuple[int, int, int, tuple[int, int]]) -> sp.csr_matrix:
        data, indices, indptr, shape = handles
        return sp.csr_matrix((self.get(data), self.get(indices), self.get(indptr)), shape=shape, copy=False)

    def close(self) -> None:
        self._kept.clear()
        if self.directory is not None:
            self._finalizer()
