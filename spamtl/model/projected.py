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

The optimiser's vectors have the size of the shared part (the vocabulary), not of users x vocabulary.

The per-user problems are solved by :class:`spamtl.model.refit.PersonalParts` (in dual coordinates, batched;
users of more than ``DUAL_MAX_ROWS`` rows in the primal), each evaluation starting every user from their
previous solution.

The rows are held a chunk of users at a time (:class:`UserChunk`, ``CHUNK_ROWS`` rows; beyond one chunk in a
scratch :class:`ArrayStore`): an evaluation maps over the chunks (on ``threads`` threads) and adds their
partial sums in chunk order, so the result does not depend on the thread count.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from spamtl.model.loss import TaskLayout, _ranges, parameter_blocks, task_ranges
from spamtl.model.refit import BATCH_BYTES, DUAL_MAX_ROWS, GRAM_USERS, INNER_TOL, PersonalParts
from spamtl.parallel import executor, one_blas_thread, return_free_memory
from spamtl.rowfiles import ArrayStore, column_counts, release_pages

__all__ = ["ProjectedLoss", "UserChunk", "CHUNK_ROWS", "SPLIT_ROWS"]

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

LOOSEST = 1e3
"""The users' problems are solved at most this much looser than INNER_TOL of the outer tolerance (above)."""

def _gather(values: np.ndarray, index: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """``values[index]`` as int32 where it fits, gathered a chunk at a time (no int64 copy of ``index``'s size)."""
    out_type = np.int32 if len(values) and values.max() < np.iinfo(np.int32).max else np.int64
    out = np.empty(len(index), out_type)
    for k in range(0, len(index), chunk):
        out[k:k + chunk] = values[index[k:k + chunk]]
    return out


def _group_keys(X: sp.csr_matrix, row_group: np.ndarray, n_groups: int, chunk_rows: int = 1 << 16) -> np.ndarray:
    """The sorted distinct ``group * d + column`` codes of the grouped rows' non-zeros (``row_group`` -1 for a
    row without group): the group keys of the whole data.

    One group at a time: a group of few non-zeros by sorting its columns, a larger one by marking its
    columns in a table of the d columns, a chunk of its rows at a time (linear, where a sort of every code
    is not); memory of one group's table, not of the codes of every non-zero.
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
                 personal: dict[str, Any], store: ArrayStore) -> None:
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
                                   store=store, **personal)

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


def _build_chunk(span: tuple[int, int], *, X: sp.csr_matrix, row_order: np.ndarray, row_start: np.ndarray,
                 transform: Callable[[sp.csr_matrix], sp.csr_matrix] | None, task_index: np.ndarray,
                 task_group: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, group_keys: np.ndarray,
                 n_groups: int, alpha: float, mu: float, personal: dict[str, Any], store: ArrayStore) -> UserChunk:
    """The :class:`UserChunk` of tasks ``span[0]..span[1]-1`` (the rows ``row_order[row_start[t0]:row_start[t1]]``)."""
    t0, t1 = span
    rows = row_order[row_start[t0]:row_start[t1]]
    sub = X[rows]
    release_pages(X)
    if transform is not None:
        sub = transform(sub)
    chunk = UserChunk(sub, task_index[rows] - t0, task_group[t0:t1], y[rows], sample_weight[rows], group_keys,
                      n_groups, alpha=alpha, mu=mu, personal=personal, store=store)
    del sub
    return_free_memory()  # the chunk's temporaries, and its data once spilled
    return chunk


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
    chunk_rows, split_rows : int, optional
        Rows per :class:`UserChunk` (``chunk_rows``; half the rows if fewer, from 2 ``split_rows`` rows on); a
        task is never split.  More rows than this: the chunks are kept in a scratch directory
        (:class:`ArrayStore`) and read one at a time.
    dual_max_rows, batch_bytes, gram_users : optional
        How the users' parts are solved: see :class:`spamtl.model.refit.PersonalParts`.
    threads : int, optional
        Chunks built and evaluated side by side by this many threads (the map over chunks; numpy's and
        scipy's loops run without the GIL).  Each chunk keeps its users' solutions, so a chunk is never
        evaluated by two threads at once, and the reduction adds the chunks' parts in chunk order: the
        results are the same for any number of threads, bit for bit.  Memory: one chunk's temporaries per
        thread.  BLAS runs on one thread until :meth:`close` (call it from the thread that made the
        objective, or use the objective as a context manager), which also stops the threads.
    """

    def __init__(self, X: sp.csr_matrix, y: np.ndarray, sample_weight: np.ndarray, task_index: np.ndarray,
                 task_group: np.ndarray, *, alpha: float, mu: float, mu_group: float, tol: float,
                 max_iter: int = 500, dual_max_rows: int = DUAL_MAX_ROWS, batch_bytes: float = BATCH_BYTES,
                 gram_users: int = GRAM_USERS,
                 transform: Callable[[sp.csr_matrix], sp.csr_matrix] | None = None, chunk_rows: int = CHUNK_ROWS,
                 split_rows: int = SPLIT_ROWS, n_groups: int | None = None, threads: int = 1) -> None:
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

        # Chunks: task ranges of about chunk_rows rows (two from 2 split_rows on); never dependent on ``threads``.
        chunk_rows = max(int(chunk_rows), 1)
        cum = np.cumsum(np.bincount(task_index, minlength=T))
        bounds = task_ranges(cum, min(chunk_rows, max(split_rows, -(-n // 2))) if n >= 2 * split_rows else chunk_rows)
        self.store = ArrayStore(spill=n > chunk_rows)
        self.chunks: list[UserChunk] = []
        personal = {"dual_max_rows": dual_max_rows, "batch_bytes": batch_bytes, "gram_users": gram_users}
        # BLAS on one thread, whatever ``threads`` says (so the sums do not depend on it): the chunk threads are
        # the parallelism, and BLAS's own only compete with them.  Both are left by close(), in this thread.
        self._resources = contextlib.ExitStack()
        try:
            self._resources.enter_context(one_blas_thread())
            self._pool = self._resources.enter_context(executor(min(int(threads), len(bounds) - 1),
                                                                 name="spamtl-chunks"))
            build = functools.partial(
                _build_chunk, X=X, row_order=np.argsort(task_index, kind="stable"), row_start=np.concatenate([[0], cum]),
                transform=transform, task_index=task_index, task_group=task_group, y=y, sample_weight=sample_weight,
                group_keys=group_keys, n_groups=G, alpha=alpha, mu=mu, personal=personal, store=self.store)
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
        return self._pool.map(fn, items)

    def __enter__(self) -> ProjectedLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and remove the scratch data (the objective cannot be evaluated afterwards)."""
        self._resources.close()  # the threads first (before the files their work may be writing), then BLAS
        self.chunks = []
        self.store.close()
