"""Variable projection: the solver of fits with many users (numpy/scipy only).

Notes
-----
The joint objective J(theta_s, theta_p) of :mod:`spamtl.model.loss` splits its parameters into the
shared ones, ``theta_s = (w0, u, b0, cg)``, and the personal ones, ``theta_p = (v_t, c_t)`` for each task t.
Given theta_s, the personal parts are independent, one small problem per user::

    min over beta_t:  sum_{i in t} s_i log(1 + exp(-y_i (xt_i . beta_t + o_i))) + lam/2 ||beta_t||^2

with ``xt_i = (x_i, 1)`` on the user's keys and a constant column (``beta_t = (v_t, c_t)``),
``lam = alpha * mu`` and ``o_i`` the shared and group parts' score of row i.  Variable projection
minimises ``F(theta_s) = min over theta_p of J`` by L-BFGS over theta_s alone.  F is convex and smooth, and
by the envelope theorem its gradient is the joint gradient's shared rows at the personal optimum: the same
backward product X^T r as a joint evaluation, with r = dJ/dz at the users' solutions.  The optimum is
the joint one.

What this buys at 10,000 users: the joint L-BFGS carries about ten vectors of every parameter (~80M, 640 MB
each) plus its history; here the optimiser's vectors have the size of the shared part (the vocabulary),
and the personal parts exist once.

The per-user problems are solved in their dual coordinates.  At the optimum ``lam beta_t = -Xt^T r_t``, so
``beta_t = Xt^T a_t`` for an ``a_t`` with one entry per row of the user, the scores are
``z_t = K_t a_t + o_t`` with the Gram matrix ``K_t = Xt Xt^T`` (m x m: a user's rows, not their
vocabulary) and ``||beta_t||^2 = a_t^T K_t a_t``.  Newton's step in beta maps to
``a <- a - (D K + lam I)^{-1} (r + lam a)`` in a (D the logistic curvature s p (1 - p)), computed as
``(res - S M^{-1} S K res) / lam`` with ``S = D^{1/2}`` and the symmetric positive definite
``M = lam I + S K S``; a step is halved until the primal objective decreases.  Users of similar row counts
are padded to one size (rows of zero weight stay at a = 0) and solved together, batch by batch.  Users with
more than ``DUAL_MAX_ROWS`` rows (a dense m x m system per Newton step costs m^3) are solved in the primal
by their own L-BFGS, as a feedback refit is.  Each evaluation starts every user from their previous solution.

The rows are held a chunk of users at a time (:class:`UserChunk`, ``CHUNK_ROWS`` rows): each chunk has its own
key layout, Gram matrices and by-column data, and an evaluation is a map over the chunks (the shared parts'
score of the chunk's rows, its users' solutions, its partial gradient: a vocabulary-sized sum) and a reduction
(the sums added).  A fit of more than one chunk keeps the chunks' data in a scratch directory
(:class:`ArrayStore`, under ``$TMPDIR``, or ``/var/tmp`` where ``/tmp`` is a tmpfs) and reads one chunk at a time, so
its memory is the model's (the optimiser's vectors of the shared parts, the personal parts it returns, a few
numbers per row) plus one chunk's, not every row's: at 10,000 users of 100 labels the rows' by-column,
by-key and by-group-key data and the Gram matrices were ~4.5 GB in memory, and are ~3.7 GB on disk instead.
The operating system keeps the files in its page cache while it has the memory, so the reads cost little.
The map runs on ``threads`` threads (numpy's and scipy's loops release the GIL): 1.85x on 2 cores for 10
chunks, and the same sums, since each chunk is evaluated by one thread at a time and the reduction adds the
chunks' parts in chunk order.
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from spamtl.model.loss import (
    MultiTaskLogisticLoss,
    TaskLayout,
    _one_blas_thread,
    _ranges,
    minimize_lbfgs,
    parameter_blocks,
    task_ranges,
)
from spamtl.parallel import return_free_memory
from spamtl.rowfiles import column_counts, new_scratch_directory, release_pages

__all__ = ["ProjectedLoss", "PersonalParts", "UserChunk", "ArrayStore", "DUAL_MAX_ROWS", "CHUNK_ROWS", "dual_newton"]

_T = TypeVar("_T")
_R = TypeVar("_R")

CHUNK_ROWS = 100_000
"""Rows (labels) per chunk of users; a fit of more rows keeps its chunks in a scratch directory (module Notes).
A chunk's data in memory is ~250 MB at 140 features per row (its by-column and by-group-key indices and
values), plus one batch of Gram matrices (``BATCH_BYTES``)."""
SPLIT_ROWS = 8_192
"""A fit of at least twice this many rows is cut into at least two chunks of at least this many rows (in memory
up to ``CHUNK_ROWS``), so that two threads have work: the nightly search's fold fits on the sampled users
(~33,000 rows at 500 users).  Smaller chunks hold too few users of each padded size to batch their Newton
steps well."""

DUAL_MAX_ROWS = 512
"""Users with more rows than this are solved in the primal (a Newton step in the dual costs m^3)."""
LOOSEST = 1e3
"""The users' problems are solved at most this much looser than INNER_TOL of the outer tolerance (above)."""
GRAM_USERS = 128
"""Users whose Gram matrices are computed in one sparse product."""
BATCH_BYTES = 64e6
"""Gram matrices of at most this many bytes are solved together (the Newton temporaries are of their size)."""
INNER_TOL = 1e-3
"""The users' problems are solved to this fraction of the outer tolerance (module Notes: the outer
gradient is exact only at the users' optima)."""


def _gather(values: np.ndarray, index: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """``values[index]`` as int32 where it fits, gathered a chunk at a time (no int64 copy of ``index``'s
    size: 1.1 GB at 142M non-zeros)."""
    out_type = np.int32 if len(values) and values.max() < np.iinfo(np.int32).max else np.int64
    out = np.empty(len(index), out_type)
    for k in range(0, len(index), chunk):
        out[k:k + chunk] = values[index[k:k + chunk]]
    return out


def _remove_directory(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not from a process forked meanwhile (a fold worker)
        shutil.rmtree(path, ignore_errors=True)


class ArrayStore:
    """Arrays put away and got back by handle: kept as they are, or (``spill=True``) written to a scratch
    directory and mapped again on each :meth:`get`, so that only the arrays in use are in memory.

    The directory (``spamtl-fit-*`` in :func:`spamtl.rowfiles.scratch_parent`) is removed by :meth:`close`, or
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


def _padded(m: int) -> int:
    """Row count a user of ``m`` rows is padded to: within 1/8 of m (at least 8)."""
    step = max(8, (1 << max(int(m - 1).bit_length(), 0)) // 8)
    return -(-m // step) * step


def _matvec(K: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.matmul(K, a[..., None])[..., 0]


def _primal(y: np.ndarray, s: np.ndarray, z: np.ndarray, a: np.ndarray, o: np.ndarray, lam: float) -> np.ndarray:
    """Each user's (row's) objective: sum_i s_i log(1 + exp(-y_i z_i)) + lam/2 a^T K a, with K a = z - o."""
    return (s * np.logaddexp(0.0, -y * z)).sum(axis=1) + 0.5 * lam * (a * (z - o)).sum(axis=1)


def dual_newton(K: np.ndarray, o: np.ndarray, y: np.ndarray, s: np.ndarray, a: np.ndarray, lam: float, *,
                tol: float, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """Solve a batch of users' personal problems in dual coordinates (module Notes), ``a`` in place.

    Parameters
    ----------
    K : ndarray, shape (B, P, P)
        Each user's Gram matrix ``Xt Xt^T`` (the constant column included), zero on padded rows.
    o, y, s : ndarray, shape (B, P)
        Offsets (the shared parts' scores), labels in {-1, +1} and sample weights (0 on padded rows).
    a : ndarray, shape (B, P)
        Start, replaced by the solution.
    lam : float
        alpha * mu.
    tol : float
        Stop when ``max |r + lam a| <= tol`` for every user (r = dJ/dz).

    Returns
    -------
    objective : ndarray, shape (B,)
        Each user's data loss plus ``lam/2 ||beta||^2`` at the solution.
    r : ndarray, shape (B, P)
        dJ/dz of every row at the solution.
    iterations : int
    """
    z = _matvec(K, a) + o
    it = 0
    for it in range(max_iter):
        r = -y * s * expit(-y * z)
        res = r + lam * a
        todo = np.flatnonzero(np.abs(res).max(axis=1) > tol)
        if not len(todo):
            break
        if len(todo) == len(a):  # views, not copies (a batch's Gram matrices are BATCH_BYTES)
            Kt, at, zt, ot, yt, st, rest = K, a, z, o, y, s, res
        else:
            Kt, at, zt, ot, yt, st, rest = K[todo], a[todo], z[todo], o[todo], y[todo], s[todo], res[todo]
        p = expit(yt * zt)
        S = np.sqrt(st * p * (1.0 - p))
        M = Kt * S[:, :, None]
        M *= S[:, None, :]
        diag = np.arange(M.shape[1])
        M[:, diag, diag] += lam
        w = np.linalg.solve(M, (S * _matvec(Kt, rest))[..., None])[..., 0]
        del M
        delta = (rest - S * w) / lam
        Kd = _matvec(Kt, delta)
        before = _primal(yt, st, zt, at, ot, lam)
        step = np.ones(len(todo))
        for _ in range(40):  # halve the step of every user whose objective did not decrease
            a_new = at - step[:, None] * delta
            z_new = zt - step[:, None] * Kd
            after = _primal(yt, st, z_new, a_new, ot, lam)
            worse = after > before + 1e-12 * np.abs(before)
            if not worse.any():
                break
            step[worse] *= 0.5
        a[todo] = a_new
        z[todo] = z_new
    z = _matvec(K, a) + o  # not the sum of many small steps
    r = -y * s * expit(-y * z)
    return _primal(y, s, z, a, o, lam), r, it


class _Batch:
    """Users solved together: their rows padded to one size, their Gram matrices and dual coefficients."""

    def __init__(self, rows: np.ndarray, valid: np.ndarray, K: int, y: np.ndarray, s: np.ndarray) -> None:
        self.rows = rows  # (B, P) row indices, 0 where padded
        self.valid = valid  # (B, P) bool
        self.K = K  # the (B, P, P) Gram matrices' handle in the ArrayStore
        self.y = y
        self.s = s
        self.a = np.zeros(rows.shape)


class _HeavyUser:
    """A user with more than DUAL_MAX_ROWS rows, solved in the primal by their own L-BFGS."""

    def __init__(self, t: int, rows: np.ndarray, keys: tuple[int, int], Xk: sp.csr_matrix, y: np.ndarray,
                 s: np.ndarray, alpha: float, mu: float) -> None:
        self.t = t
        self.rows = rows
        self.key_start, self.key_stop = keys
        sub = Xk[rows]
        m = len(rows)
        local = sp.csr_matrix((sub.data, sub.indices - self.key_start, sub.indptr),
                              shape=(m, self.key_stop - self.key_start))
        self.layout = TaskLayout.build(local, np.zeros(m, np.int64), 1, np.full(1, -1, np.int64), 0)
        self.objective = MultiTaskLogisticLoss(self.layout, y[rows], s[rows], np.zeros(m, np.int64),
                                               np.full(1, -1, np.int64), alpha=alpha, mu=mu, mu_group=1.0,
                                               fixed_shared=np.zeros(self.layout.n_keys),
                                               fixed_intercept=np.zeros(m))
        self.theta = np.zeros(self.objective.n_params)

    def solve(self, offset_rows: np.ndarray, tol: float, max_iter: int) -> tuple[float, np.ndarray]:
        """(objective, dJ/dz of the user's rows) with the rows' offsets (the shared and group parts' scores)
        fixed, warm from the previous solution."""
        obj = self.objective
        obj.fixed_intercept = offset_rows
        # Its gradient norm is checked where it counts: the outer fit's.
        self.theta, _, _ = minimize_lbfgs(obj, self.theta, tol=tol, max_iter=max_iter, warn=False)
        z = obj.decision(self.theta)
        r = -obj.y * obj.s * expit(-obj.y * z)
        loss, _ = obj.loss_gradient(self.theta)
        return loss, r


class PersonalParts:
    """Every task's personal part (v_t, c_t) given fixed per-row offsets: the inner step of the projected
    fit, and on its own the users' refits of cross-fitting (:func:`spamtl.model.estimator.score_refitted_tasks`).

    Tasks of at most ``dual_max_rows`` rows are solved in the dual, batch by batch (:func:`dual_newton`),
    the others by their own L-BFGS; each :meth:`solve` starts every task from its previous solution.

    Parameters
    ----------
    Xk : csr_matrix, shape (n_samples, n_keys)
        The data indexed by (task, column) key (:class:`~spamtl.model.loss.TaskLayout`).
    task_offsets : ndarray, shape (n_tasks + 1,)
        Keys of task t are ``task_offsets[t]:task_offsets[t + 1]``.
    y, sample_weight, task_index : ndarray, shape (n_samples,)
    alpha, mu : float
        The personal parts' penalty is ``alpha * mu / 2 (||v_t||^2 + c_t^2)``.
    store : ArrayStore, optional
        Where the Gram matrices are kept (in memory if not given).  With a store, ``Xk`` is not kept either:
        :meth:`parts` is then given it again.
    """

    def __init__(self, Xk: sp.csr_matrix, task_offsets: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
                 task_index: np.ndarray, *, alpha: float, mu: float, dual_max_rows: int | None = None,
                 store: ArrayStore | None = None) -> None:
        self.store = ArrayStore(spill=False) if store is None else store
        self.Xk: sp.csr_matrix | None = Xk
        self.task_offsets = task_offsets
        self.y = y
        self.s = sample_weight
        self.ti = task_index
        self.n_tasks = len(task_offsets) - 1
        self.alpha = alpha
        self.mu = mu
        self.lam = alpha * mu
        self._build_users(DUAL_MAX_ROWS if dual_max_rows is None else dual_max_rows)
        if store is not None:
            self.Xk = None

    def _build_users(self, dual_max_rows: int) -> None:
        counts = np.bincount(self.ti, minlength=self.n_tasks)
        order = np.argsort(self.ti, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        Xk = self.Xk
        keys = self.task_offsets
        self.heavy = [_HeavyUser(int(t), order[starts[t]:starts[t + 1]], (int(keys[t]), int(keys[t + 1])), Xk,
                                 self.y, self.s, self.alpha, self.mu)
                      for t in np.flatnonzero(counts > dual_max_rows)]
        light = np.flatnonzero((counts > 0) & (counts <= dual_max_rows))
        padded = np.array([_padded(int(m)) for m in counts[light]], dtype=np.int64)
        self.batches: list[_Batch] = []
        for P in np.unique(padded):
            tasks = light[padded == P]
            per_batch = max(1, int(BATCH_BYTES // (8 * P * P)))
            for b0 in range(0, len(tasks), per_batch):
                self.batches.append(self._batch(tasks[b0:b0 + per_batch], int(P), counts, order, starts, Xk))
        return_free_memory()  # the products' temporaries

    def _batch(self, tasks: np.ndarray, P: int, counts: np.ndarray, order: np.ndarray, starts: np.ndarray,
               Xk: sp.csr_matrix) -> _Batch:
        B = len(tasks)
        m = counts[tasks]
        rows = np.zeros((B, P), np.int64)
        valid = np.arange(P)[None, :] < m[:, None]
        rows[valid] = np.concatenate([order[starts[t]:starts[t + 1]] for t in tasks])
        K = np.zeros((B, P, P))
        for b0 in range(0, B, GRAM_USERS):  # the Gram matrices a few users at a time (the product's temporaries)
            b1 = min(b0 + GRAM_USERS, B)
            sub = Xk[rows[b0:b1][valid[b0:b1]]]
            # Different users share no key, so their Gram matrix is block diagonal: one product gives all.
            gram = (sub @ sub.T).tocoo()
            user_of = np.repeat(np.arange(b0, b1), m[b0:b1])
            pos_of = np.concatenate([np.arange(k) for k in m[b0:b1]])
            K[user_of[gram.row], pos_of[gram.row], pos_of[gram.col]] = gram.data
            del sub, gram
        K += valid[:, :, None] & valid[:, None, :]  # the constant column (c_t)
        flat = rows[valid]
        y = np.zeros((B, P))
        s = np.zeros((B, P))
        y[valid] = self.y[flat]
        s[valid] = self.s[flat]
        return _Batch(rows, valid, self.store.put(K), y, s)

    def solve(self, offsets: np.ndarray, tol: float, heavy_tol: float, max_iter: int) -> tuple[float, np.ndarray]:
        """Solve every task given each row's offset; returns the tasks' objectives (data loss plus personal
        penalty) summed and dJ/dz of every row.  ``tol``: the dual residual's max-norm (dJ/dz units);
        ``heavy_tol``: the primal L-BFGS's, per unit of weight."""
        r = np.zeros(len(self.y))
        loss = 0.0
        for batch in self.batches:
            ob = np.where(batch.valid, offsets[batch.rows], 0.0)
            objective, rb, _ = dual_newton(self.store.get(batch.K), ob, batch.y, batch.s, batch.a, self.lam, tol=tol)
            loss += float(objective.sum())
            r[batch.rows[batch.valid]] = rb[batch.valid]
        for user in self.heavy:
            part, r[user.rows] = user.solve(offsets[user.rows], heavy_tol, max_iter)
            loss += part
        return loss, r

    def parts(self, Xk: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """v on every key (layout order) and c per task, at the last :meth:`solve`; ``Xk`` as given to the
        constructor (needed if it was not kept)."""
        Xk = self.Xk if Xk is None else Xk
        if Xk is None:
            raise ValueError("parts() needs the data by key: it was not kept")
        a = np.zeros(len(self.y))
        for batch in self.batches:
            a[batch.rows[batch.valid]] = batch.a[batch.valid]
        v = np.asarray(Xk.T @ a)  # v_t = Xt^T a_t: different users share no key
        c = np.bincount(self.ti, weights=a, minlength=self.n_tasks)
        for user in self.heavy:
            q = user.objective.unpack(user.theta)
            v[user.key_start + user.layout.key_cols] = q["v"]
            c[user.t] = q["c"][0]
        return v, c


def _group_keys(X: sp.csr_matrix, row_group: np.ndarray, n_groups: int, chunk_rows: int = 1 << 16) -> np.ndarray:
    """The sorted distinct ``group * d + column`` codes of the grouped rows' non-zeros (``row_group`` -1 for a
    row without group): the group keys of the whole data.

    One group at a time: a group of few non-zeros by sorting its columns, a larger one by marking its
    columns in a table of the d columns, a chunk of its rows at a time (a sort of every code took a minute at
    10,000 users); memory of one group's table, not of the codes of every non-zero.
    """
    d = X.shape[1]
    lengths = np.diff(X.indptr)
    order = np.argsort(row_group, kind="stable")
    starts = np.searchsorted(row_group[order], np.arange(n_groups + 1))
    parts = []
    for g in range(n_groups):
        rows = order[starts[g]:starts[g + 1]]
        if int(lengths[rows].sum()) * 16 < d:
            cols = np.unique(X.indices[_ranges(X.indptr[rows], lengths[rows])])
        else:
            present = np.zeros(d, dtype=bool)
            for r0 in range(0, len(rows), chunk_rows):
                sub = rows[r0:r0 + chunk_rows]
                present[X.indices[_ranges(X.indptr[sub], lengths[sub])]] = True
            cols = np.flatnonzero(present)
        parts.append(cols.astype(np.int64) + g * d)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class UserChunk:
    """A range of tasks (users) and their rows: one term of the projected objective, self-contained given the
    shared parts (the map step, README "Scaling").

    The chunk has its own key layout (its tasks' keys, numbered from 0) and keeps its rows by column (for
    ``X @ w0`` and ``X^T r``), by group key (global group-key positions) and by key, and its users'
    :class:`PersonalParts`, all in ``store``.

    Parameters
    ----------
    X : csr_matrix, shape (n_rows, n_features)
        The chunk's rows (weighted as the fit uses them), sorted by task.
    task_index : ndarray, shape (n_rows,)
        Each row's task, 0..n_tasks-1 within the chunk.
    task_group : ndarray, shape (n_tasks,)
        Each task's group, 0..n_groups-1 or -1.
    y, sample_weight : ndarray, shape (n_rows,)
    group_keys : ndarray of int64
        All group keys of the fit as sorted ``group * n_features + column`` codes.
    """

    def __init__(self, X: sp.csr_matrix, task_index: np.ndarray, task_group: np.ndarray, y: np.ndarray,
                 sample_weight: np.ndarray, group_keys: np.ndarray, n_groups: int, *, alpha: float, mu: float,
                 dual_max_rows: int | None, store: ArrayStore) -> None:
        n, d = X.shape
        layout = TaskLayout.build(X, task_index, len(task_group), task_group, n_groups)
        self.n_rows = n
        self.store = store
        self.task_offsets = layout.task_offsets
        self.key_cols = layout.key_cols
        row_group = task_group[task_index]
        self.gi = np.where(row_group >= 0, row_group, n_groups)
        Xk = layout.Xk  # X is canonical now (the layout's build sorted it in place): Xk has its values
        self._x = store.put_csr(X)
        self._key_indices = store.put(Xk.indices)
        self._grouped: np.ndarray | None = None  # the grouped rows, if not all
        self._xg: tuple[int, int, int, tuple[int, int]] | None = None
        grouped = np.flatnonzero(row_group >= 0)
        if len(grouped):
            gkey_group = np.repeat(np.arange(n_groups, dtype=np.int64), np.diff(layout.group_offsets))
            global_position = np.searchsorted(group_keys, gkey_group * d + layout.group_cols)
            if len(grouped) == n:  # every row grouped: X's own values and row pointers (the same files)
                gidx = _gather(global_position, layout.key_group[Xk.indices])
                self._xg = (self._x[0], store.put(gidx), self._x[2], (n, len(group_keys)))
            else:
                sub = Xk[grouped]
                self._grouped = grouped
                gidx = _gather(global_position, layout.key_group[sub.indices])
                self._xg = store.put_csr(sp.csr_matrix((sub.data, gidx, sub.indptr),
                                                       shape=(sub.shape[0], len(group_keys))))
                del sub
            del gidx
        del layout
        self.users = PersonalParts(Xk, self.task_offsets, y, sample_weight, task_index, alpha=alpha, mu=mu,
                                   dual_max_rows=dual_max_rows, store=store)

    def evaluate(self, w0: np.ndarray, u: np.ndarray, intercepts: np.ndarray, tol: float, heavy_tol: float,
                 max_iter: int) -> tuple[float, np.ndarray, np.ndarray | None, np.ndarray]:
        """Solve the chunk's users given the shared parts: ``w0`` on every column, ``u`` on every group key,
        ``intercepts`` b0 + cg per group (and b0 last, for rows without group).  Returns the users'
        objectives summed, and the chunk's part of the gradient: X^T r (per column), Xg^T r (per group key,
        None without grouped rows) and the sum of r per group (the last: rows without group)."""
        X = self.store.get_csr(self._x)
        o = X @ w0
        Xg = None
        if self._xg is not None:
            Xg = self.store.get_csr(self._xg)
            if self._grouped is None:
                o += Xg @ u
            else:
                o[self._grouped] += Xg @ u
        o += intercepts[self.gi]
        loss, r = self.users.solve(o, tol, heavy_tol, max_iter)
        del o
        gw = X.T @ r
        del X
        gu = None
        if Xg is not None:
            gu = Xg.T @ (r if self._grouped is None else r[self._grouped])
        return loss, gw, gu, np.bincount(self.gi, weights=r, minlength=len(intercepts))

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's users' parts at the last evaluation: v on the chunk's keys, c per task."""
        x = self.store.get_csr(self._x)
        Xk = sp.csr_matrix((x.data, self.store.get(self._key_indices), x.indptr),
                           shape=(self.n_rows, len(self.key_cols)), copy=False)
        return self.users.parts(Xk)


class ProjectedLoss:
    """F(theta_s) = min over the personal parts of J, and its gradient (module Notes).

    Duck-types what :func:`spamtl.model.loss.minimize_lbfgs` needs of an objective (``scale``,
    ``total_weight``, ``loss_gradient``); ``personal`` gives the users' parts at the last point evaluated.
    Also has the index attributes of a :class:`~spamtl.model.loss.TaskLayout` that a fit needs to place
    them (``n_features``, ``shared_cols``, ``group_cols``, ``group_offsets``, ``task_offsets``,
    ``key_cols``); there is no layout of all rows.

    Parameter vector theta_s, in order: ``w0 (K0) | u (Kg) | b0 (1) | cg (G)``.

    Parameters
    ----------
    X : csr_matrix, shape (n_samples, n_features)
        The data, as given (``transform`` is applied a chunk of rows at a time).
    y : ndarray, shape (n_samples,)
        Labels in {-1, +1}.
    sample_weight, task_index : ndarray, shape (n_samples,)
    task_group : ndarray, shape (n_tasks,)
        Each task's group or -1.
    n_groups : int, optional
        G (groups 0..G-1; by default one more than the largest in ``task_group``).
    transform : callable, optional
        Applied to each chunk's rows (the idf weighting): the weighted copy of all rows never exists.
    chunk_rows : int, optional
        Rows per :class:`UserChunk` (``CHUNK_ROWS``; half the rows if fewer, from 2 ``SPLIT_ROWS`` rows on); a
        task is never split.  More rows than this: the chunks are kept in a scratch directory
        (:class:`ArrayStore`) and read one at a time.
    threads : int, optional
        Chunks built and evaluated side by side by this many threads (the map over chunks; numpy's and
        scipy's loops run without the GIL).  Each chunk keeps its users' solutions, so a chunk is never
        evaluated by two threads at once, and the reduction adds the chunks' parts in chunk order: the
        results are the same for any number of threads, bit for bit.  Memory: one chunk's temporaries per
        thread.  BLAS runs on one thread until :meth:`close` (call it from the thread that made the
        objective), which also stops the threads.
    """

    def __init__(self, X: sp.csr_matrix, y: np.ndarray, sample_weight: np.ndarray, task_index: np.ndarray,
                 task_group: np.ndarray, *, alpha: float, mu: float, mu_group: float, tol: float,
                 max_iter: int = 500, dual_max_rows: int | None = None,
                 transform: Callable[[sp.csr_matrix], sp.csr_matrix] | None = None, chunk_rows: int | None = None,
                 n_groups: int | None = None, threads: int = 1) -> None:
        X = X.tocsr()
        n, d = X.shape
        T = len(task_group)
        self.n_features = d
        self.n_groups = G = int(task_group.max(initial=-1)) + 1 if n_groups is None else n_groups
        self.max_iter = max_iter
        self.shared_cols = np.flatnonzero(column_counts(X)).astype(np.int64)
        group_keys = _group_keys(X, task_group[task_index], G) if G else np.zeros(0, np.int64)
        release_pages(X)  # rows mapped from files (spamtl.rowfiles): each pass hands back what it read
        key_group = group_keys // max(d, 1)
        self.group_offsets = np.searchsorted(key_group, np.arange(G + 1)).astype(np.int64)
        self.group_cols = group_keys - key_group * d
        del key_group
        self.sizes = dict(w0=len(self.shared_cols), u=len(group_keys), b0=1, cg=G)
        factors = dict(w0=1.0, u=mu_group, b0=0.0, cg=mu_group)
        self.slices, self.n_params, self.scale, self.alpha_penalty = parameter_blocks(self.sizes, factors, alpha)
        self.total_weight = float(sample_weight.sum())
        # The users' problems are solved to INNER_TOL of the outer tolerance, in dJ/dz units, or looser while
        # the outer gradient is far above its tolerance (inexact projection: the first evaluations of a fit
        # need no tight inner solves, the last ones get them).
        self.tol = tol
        self.inner_tol = INNER_TOL * tol * self.total_weight / max(n, 1)
        self.heavy_tol = INNER_TOL * tol
        self._looser = 1.0
        self._grad_factor = self.scale.inverse().over(self.total_weight or 1.0)

        # Chunks: contiguous task ranges of about chunk_rows rows; at least two from 2 SPLIT_ROWS rows on, on
        # disk beyond chunk_rows.  They depend on the data only, never on ``threads`` (the same sums).
        chunk_rows = CHUNK_ROWS if chunk_rows is None else max(int(chunk_rows), 1)
        cum = np.cumsum(np.bincount(task_index, minlength=T))
        bounds = task_ranges(cum, min(chunk_rows, max(SPLIT_ROWS, -(-n // 2))) if n >= 2 * SPLIT_ROWS else chunk_rows)
        self.store = ArrayStore(spill=n > chunk_rows)
        self.chunks: list[UserChunk] = []
        self._pool: ThreadPoolExecutor | None = None
        self._blas: Any = None
        try:
            n_chunks = len(bounds) - 1
            if threads > 1 and n_chunks > 1:
                self._pool = ThreadPoolExecutor(min(int(threads), n_chunks), thread_name_prefix="spamtl-chunks")
            # BLAS on one thread, whatever ``threads`` says (so the sums do not depend on it): the chunk threads
            # are the parallelism, and OpenBLAS's own (it threads the LU of a 112 x 112 matrix) only compete
            # with them: 4 evaluations of 10 chunks of 1,000 users took 4.3 s on 2 chunk threads with OpenBLAS's
            # 2 threads, 1.3 s with one (and on one chunk thread 2.6 s against 2.3 s).  Entered here and left
            # by close(), in this thread: threadpoolctl lets one thread at a time set OpenBLAS's threads, and
            # gives that control back only when a limit is left as a context manager.
            self._blas = _one_blas_thread()
            self._blas.__enter__()
            row_order = np.argsort(task_index, kind="stable")
            row_start = np.concatenate([[0], cum])

            def build(span: tuple[int, int]) -> UserChunk:
                t0, t1 = span
                rows = row_order[row_start[t0]:row_start[t1]]
                sub = X[rows]
                release_pages(X)
                if transform is not None:
                    sub = transform(sub)
                chunk = UserChunk(sub, task_index[rows] - t0, task_group[t0:t1], y[rows], sample_weight[rows],
                                  group_keys, G, alpha=alpha, mu=mu, dual_max_rows=dual_max_rows, store=self.store)
                del sub
                return_free_memory()  # the chunk's temporaries, and its data once spilled
                return chunk

            self.chunks = list(self._map(build, list(zip(bounds[:-1], bounds[1:]))))
        except BaseException:
            self.close()
            raise
        starts = np.cumsum([0] + [c.task_offsets[-1] for c in self.chunks])
        self.task_offsets = np.concatenate([[0]] + [c.task_offsets[1:] + k0 for c, k0 in zip(self.chunks, starts)])
        self.key_cols = (np.concatenate([c.key_cols for c in self.chunks]) if self.chunks
                         else np.zeros(0, np.int32))
        self._last: np.ndarray | None = None
        self.evaluations = 0

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {k: theta[sl] for k, sl in self.slices.items()}

    def loss_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """F(theta_s) and dF/dtheta_s (original, unnormalised form); the users' solutions are kept."""
        p = self.unpack(theta)
        w0 = np.zeros(self.n_features)
        w0[self.shared_cols] = p["w0"]
        intercepts = p["b0"][0] + np.append(p["cg"], 0.0)
        loss = 0.0
        grad_w = np.zeros(self.n_features)
        grad_u = np.zeros(self.sizes["u"])
        grad_b = np.zeros(self.n_groups + 1)
        tols = (self.inner_tol * self._looser, self.heavy_tol * self._looser)

        def evaluate(chunk: UserChunk) -> tuple[float, np.ndarray, np.ndarray | None, np.ndarray]:
            return chunk.evaluate(w0, p["u"], intercepts, *tols, self.max_iter)

        for part, gw, gu, gb in self._map(evaluate, self.chunks):  # the map over chunks, and the reduction
            loss += part
            grad_w += gw
            if gu is not None:
                grad_u += gu
            grad_b += gb
        grad = np.empty_like(theta)
        sl = self.slices
        grad[sl["w0"]] = grad_w[self.shared_cols]
        grad[sl["u"]] = grad_u
        grad[sl["cg"]] = grad_b[:-1]
        grad[sl["b0"]] = grad_b.sum()
        pen_theta = self.alpha_penalty.times(theta)
        loss += 0.5 * float(theta @ pen_theta)
        grad += pen_theta
        gnorm = float(np.max(np.abs(self._grad_factor.times(grad)))) if grad.size else 0.0
        self._looser = float(np.clip(gnorm / self.tol, 1.0, LOOSEST))
        self._last = theta.copy()
        self.evaluations += 1
        return loss, grad

    def personal(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The users' parts at theta: v on every key (``key_cols`` order) and c per task."""
        if self._last is None or not np.array_equal(theta, self._last):
            self.loss_gradient(theta)
        parts = list(self._map(UserChunk.parts, self.chunks))
        return (np.concatenate([v for v, _ in parts]) if parts else np.zeros(0),
                np.concatenate([c for _, c in parts]) if parts else np.zeros(0))

    def _map(self, fn: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
        """``fn`` over ``items`` on the threads (or in this thread), results in the items' order."""
        return map(fn, items) if self._pool is None else self._pool.map(fn, items)

    def close(self) -> None:
        """Stop the threads and remove the scratch data (the objective cannot be evaluated afterwards)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # before the files its work may be writing
            self._pool = None
        if self._blas is not None:
            self._blas.__exit__(None, None, None)
            self._blas = None
        self.chunks = []
        self.store.close()
