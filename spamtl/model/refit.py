"""One task's personal part refitted with the shared and group parts fixed (numpy/scipy only).

Given the shared part w0 and the group parts u_g (and their intercepts), the tasks' personal parts are
independent problems, one per task::

    min over (v_t, c_t):  sum_{i in t} s_i log(1 + exp(-y_i (x_i . (w0 + u_g + v_t) + b0 + cg_g + c_t)))
                          + alpha * mu / 2 (||v_t||^2 + c_t^2)

This module solves them, and nothing else does:

- :func:`refit_user`: one task of a fitted model (:class:`~spamtl.model.weights.ModelWeights`) on its rows, by
  L-BFGS in the primal, warm-started from its previous part: a user's feedback and
  :meth:`spamtl.model.estimator.MultiTaskLogisticRegression.refit_task`;
- :class:`PersonalParts`: many tasks given each row's offset (the shared and group parts' score): tasks of
  at most ``DUAL_MAX_ROWS`` rows batched in dual coordinates (:func:`dual_newton`), the others in the primal
  as above.  It is the inner step of the projected fit (:mod:`spamtl.model.projected`) and, through
  :func:`score_refitted_tasks`, nightly cross-fitting's refit of every user.

Refitting one task touches no other task's weights.

Dual coordinates.  At the optimum ``lam beta_t = -Xt^T r_t`` (``beta_t = (v_t, c_t)``, ``xt_i = (x_i, 1)``,
``lam = alpha * mu``, r = dJ/dz), so ``beta_t = Xt^T a_t`` for an ``a_t`` with one entry per row of the task,
the scores are ``z_t = K_t a_t + o_t`` with the Gram matrix ``K_t = Xt Xt^T`` (m x m: a task's rows, not its
vocabulary) and ``||beta_t||^2 = a_t^T K_t a_t``.  Newton's step in beta maps to
``a <- a - (D K + lam I)^{-1} (r + lam a)`` in a (D the logistic curvature s p (1 - p)), computed as
``(res - S M^{-1} S K res) / lam`` with ``S = D^{1/2}`` and the symmetric positive definite
``M = lam I + S K S``; a step is halved until the primal objective decreases.  Tasks of similar row counts
are padded to one size (rows of zero weight stay at a = 0) and solved together, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from spamtl.model import DEFAULT_MAX_ITER, DEFAULT_TOL
from spamtl.model.loss import MultiTaskLogisticLoss, TaskLayout, minimize_lbfgs, task_weights
from spamtl.model.weights import ModelWeights, SparsePart
from spamtl.parallel import one_blas_thread, resolve, return_free_memory
from spamtl.rowfiles import ArrayStore, release_pages

__all__ = ["refit_user", "PersonalParts", "dual_newton", "score_refitted_tasks", "DUAL_MAX_ROWS", "INNER_TOL",
           "BATCH_BYTES", "GRAM_USERS"]

REFIT_CHUNK_ROWS = 50_000
"""score_refitted_tasks solves the tasks of about this many training rows at a time (~7M non-zeros, ~300 MB
of layout and Gram matrices), whatever the number of users."""
DUAL_MAX_ROWS = 512
"""Users with more rows than this are solved in the primal (a Newton step in the dual costs m^3)."""
GRAM_USERS = 128
"""Users whose Gram matrices are computed in one sparse product."""
BATCH_BYTES = 64e6
"""Gram matrices of at most this many bytes are solved together (the Newton temporaries are of their size)."""
INNER_TOL = 1e-3
"""The users' problems are solved to this fraction of the outer tolerance (module Notes: the outer
gradient is exact only at the users' optima)."""


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
    for it in range(max_iter):  # noqa: B007 - the count is returned
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
        a_new, z_new = _halved_step(yt, st, zt, at, ot, lam, delta, Kd)
        a[todo] = a_new
        z[todo] = z_new
    z = _matvec(K, a) + o  # not the sum of many small steps
    r = -y * s * expit(-y * z)
    return _primal(y, s, z, a, o, lam), r, it


def _halved_step(y: np.ndarray, s: np.ndarray, z: np.ndarray, a: np.ndarray, o: np.ndarray, lam: float,
                 delta: np.ndarray, Kd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Newton step ``-delta`` (scores ``-Kd``), halved for every user whose objective did not decrease."""
    before = _primal(y, s, z, a, o, lam)
    step = np.ones(len(a))
    for _ in range(40):
        a_new = a - step[:, None] * delta
        z_new = z - step[:, None] * Kd
        after = _primal(y, s, z_new, a_new, o, lam)
        worse = after > before + 1e-12 * np.abs(before)
        if not worse.any():
            break
        step[worse] *= 0.5
    return a_new, z_new


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
    """A task with more than ``dual_max_rows`` rows, solved in the primal by its own L-BFGS (as :func:`refit_user`)."""

    def __init__(self, t: int, rows: np.ndarray, keys: tuple[int, int], Xk: sp.csr_matrix, y: np.ndarray,
                 s: np.ndarray, alpha: float, mu: float) -> None:
        self.t = t
        self.rows = rows
        self.key_start, self.key_stop = keys
        sub = Xk[rows]
        local = sp.csr_matrix((sub.data, sub.indices - self.key_start, sub.indptr),
                              shape=(len(rows), self.key_stop - self.key_start))
        self.layout, self.objective = _task_objective(local, y[rows], s[rows], lambda cols: np.zeros(len(cols)),
                                                      np.zeros(len(rows)), alpha=alpha, mu=mu)
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
    fit, and on its own the users' refits of cross-fitting (:func:`score_refitted_tasks`).

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
    dual_max_rows : int
        Tasks of more rows are solved in the primal (a Newton step in the dual costs m^3).
    batch_bytes, gram_users :
        Gram matrices of at most ``batch_bytes`` are solved together; those of ``gram_users`` tasks are
        computed in one sparse product (memory of the temporaries, not results).
    store : ArrayStore, optional
        Where the Gram matrices are kept (in memory if not given).  With a store, ``Xk`` is not kept either:
        :meth:`parts` is then given it again.
    """

    def __init__(self, Xk: sp.csr_matrix, task_offsets: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
                 task_index: np.ndarray, *, alpha: float, mu: float, dual_max_rows: int = DUAL_MAX_ROWS,
                 batch_bytes: float = BATCH_BYTES, gram_users: int = GRAM_USERS,
                 store: ArrayStore | None = None) -> None:
        self.batch_bytes, self.gram_users = batch_bytes, gram_users
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
        self._build_users(dual_max_rows)
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
            per_batch = max(1, int(self.batch_bytes // (8 * P * P)))
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
        for b0 in range(0, B, self.gram_users):  # the Gram matrices a few users at a time (the product's temporaries)
            b1 = min(b0 + self.gram_users, B)
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



def _task_objective(X: sp.csr_matrix, y: np.ndarray, weight: float | np.ndarray,
                    offset_weights: Callable[[np.ndarray], np.ndarray], offset_intercept: float | np.ndarray, *,
                    alpha: float, mu: float) -> tuple[TaskLayout, MultiTaskLogisticLoss]:
    """One task's rows as a layout and its personal objective with the offsets fixed (see :func:`refit_user`)."""
    m = X.shape[0]
    layout = TaskLayout.build(X, np.zeros(m, np.int64), 1, np.full(1, -1, np.int64), 0)
    objective = MultiTaskLogisticLoss(
        layout, y.astype(np.float64), np.broadcast_to(np.asarray(weight, np.float64), (m,)).copy(),
        np.zeros(m, np.int64), np.full(1, -1, np.int64), alpha=alpha, mu=mu, mu_group=1.0,
        fixed_shared=np.asarray(offset_weights(layout.key_cols), np.float64),
        fixed_intercept=np.broadcast_to(np.asarray(offset_intercept, np.float64), (m,)).copy())
    return layout, objective


def refit_user(weights: ModelWeights, task: Any, X: Any, is_spam: np.ndarray,
               sample_weight: np.ndarray | None = None) -> SparsePart:
    """``task``'s personal part (v_t, c_t) refitted on all its labelled rows, the shared and group parts fixed.

    The one per-user refit of a fitted model, by L-BFGS in the primal from the task's current part: feedback
    calls it with a user's slice of the stored model (:func:`spamtl.services.models.load_user_slice`), the
    estimator's ``refit_task`` with its own parts.  It needs no other task's data or weights, so it touches
    no other task, and it needs numpy and SciPy only.

    Parameters
    ----------
    weights : ModelWeights
        The shared part, ``task``'s group part (its trained group, :func:`~spamtl.model.weights.trained_group`)
        and its current personal part (the warm start; none for a new task), the idf, and the fit's
        hyper-parameters in ``params`` (``alpha``, ``mu``, ``task_weighting``, ``weight_scale``, ``tol``,
        ``max_iter``; the estimator's defaults where missing).
    X : sparse matrix, shape (m, n_features)
        The task's rows as featurised (the idf of ``weights`` is applied here).
    is_spam : ndarray of bool, shape (m,)
        True for the positive (spam) class.
    sample_weight : ndarray, shape (m,), optional
        Multiplies the task weight omega_t (feedback weighs a user's corrections above imported labels).

    Returns
    -------
    SparsePart
        v_t on the columns that occur in X (sorted), and c_t.
    """
    p = weights.params
    X = sp.csr_matrix(X, dtype=np.float64)
    if X.shape[1] != weights.n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model has {weights.n_features}")
    if weights.idf is not None:
        X = weights.idf.transform(X)
    parts = [part for kind, _, part in weights.named_parts(task) if kind != "personal"]

    def offset(cols: np.ndarray) -> np.ndarray:  # w0 + u_g on the task's columns, no dense copy
        value = parts[0].at(cols)
        for part in parts[1:]:
            value = value + part.at(cols)
        return value

    omega = float(task_weights(np.array([X.shape[0]]), p.get("task_weighting", "sample"),
                               float(p.get("weight_scale", 1.0)))[0])
    layout, objective = _task_objective(
        X, np.where(np.asarray(is_spam, dtype=bool), 1.0, -1.0),
        omega if sample_weight is None else omega * np.asarray(sample_weight, dtype=np.float64), offset,
        sum(part.intercept for part in parts), alpha=float(p.get("alpha", 1.0)), mu=float(p.get("mu", 1.0)))
    old = weights.tasks.get(task, SparsePart.empty())
    theta0 = np.zeros(objective.n_params)
    if len(old.cols):  # warm start: the old part where the task's columns still are
        pos = np.minimum(np.searchsorted(old.cols, layout.key_cols), len(old.cols) - 1)
        hit = old.cols[pos] == layout.key_cols
        theta0[objective.slices["v"]][hit] = old.values[pos[hit]]
    theta0[objective.slices["c"]] = old.intercept
    with one_blas_thread():  # a refit is small: BLAS threads only spin
        theta, _, _ = minimize_lbfgs(objective, theta0, tol=float(p.get("tol", DEFAULT_TOL)),
                                     max_iter=int(p.get("max_iter", DEFAULT_MAX_ITER)))
    q = objective.unpack(theta)
    return SparsePart(layout.key_cols.astype(np.int64), q["v"].copy(), float(q["c"][0]))


def score_refitted_tasks(payload: Any, estimator: Any, train: np.ndarray, test: np.ndarray,
                         chunk_rows: int = REFIT_CHUNK_ROWS, dual_max_rows: int = DUAL_MAX_ROWS) -> np.ndarray:
    """Scores of the ``test`` rows, each task's personal part fitted on that task's ``train`` rows with
    ``estimator``'s shared and group parts (and IDF) held fixed; ``estimator`` is not changed.

    ``estimator`` is a fitted :class:`~spamtl.model.estimator.MultiTaskLogisticRegression`.  Given the shared
    parts, tasks are independent problems, so a model fitted on some tasks scores any other task's held-out rows this way: nightly
    training's cross-fitting beyond ``mu_search_users`` users (``spamtl.services.training``).  The tasks are
    solved together, a chunk of about ``chunk_rows`` training rows at a time (memory), by
    :class:`PersonalParts` (batched dual Newton steps up to ``dual_max_rows`` rows, else :func:`refit_user`'s
    primal L-BFGS; the same solutions to the tolerance).  A task with no ``train`` rows is scored by the shared and group parts.
    ``payload`` is ``(X, y, tasks, groups)`` or a :func:`spamtl.parallel.share` handle to it.
    """
    X, y, tasks, garr = resolve(payload)
    est = estimator
    d = est.n_features_in_
    out = np.empty(len(test))
    for c0 in range(0, len(test), chunk_rows):  # every held-out row's shared and group parts' score
        te = test[c0:c0 + chunk_rows]
        out[c0:c0 + chunk_rows] = est.decision_function(X[te], groups=None if garr is None else garr[te])
        release_pages(X)
    names, tidx = np.unique(tasks[train], return_inverse=True)
    counts = np.bincount(tidx, minlength=len(names))
    order = np.argsort(tidx, kind="stable")
    ends = np.cumsum(counts)
    test_task = np.full(len(test), -1)  # each held-out row's task among those with training rows, or -1
    if len(names):
        at = np.minimum(np.searchsorted(names, tasks[test]), len(names) - 1)
        test_task = np.where(names[at] == tasks[test], at, -1)
    t0 = 0
    while t0 < len(names):  # tasks t0..t1-1: at least one task, at most ~chunk_rows rows unless one task has more
        start = ends[t0 - 1] if t0 else 0
        t1 = max(t0 + 1, int(np.searchsorted(ends, start + chunk_rows, side="right")))
        pos = order[start:ends[t1 - 1]]  # positions in train, task by task
        part = train[pos]
        key_offsets, key_cols, v, c = _personal_parts(est, X[part], y[part], tidx[pos] - t0, counts[t0:t1],
                                                      None if garr is None else garr[part], dual_max_rows)
        # The chunk's held-out rows gain their task's part: each non-zero looked up among the task's keys.
        held = np.flatnonzero((test_task >= t0) & (test_task < t1))
        if len(held):
            Xte = est._rows(X[test[held]])
            local = test_task[held] - t0
            keys = np.repeat(np.arange(t1 - t0, dtype=np.int64), np.diff(key_offsets)) * d + key_cols
            wanted = np.repeat(local, np.diff(Xte.indptr)) * d + Xte.indices
            terms = np.zeros(len(wanted))
            if len(keys):
                at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
                hit = keys[at] == wanted
                terms[hit] = Xte.data[hit] * v[at[hit]]
            out[held] += np.bincount(np.repeat(np.arange(len(held)), np.diff(Xte.indptr)), weights=terms,
                                     minlength=len(held)) + c[local]
        t0 = t1
        release_pages(X)
        return_free_memory()  # a chunk's layout and Gram matrices: the next chunk is of about the same size
    return out


def _personal_parts(est: Any, X: Any, y: np.ndarray, tidx: np.ndarray, counts: np.ndarray, groups: np.ndarray | None,
                    dual_max_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The personal parts of tasks 0..len(counts)-1 fitted on their rows ``X`` (raw, as given to fit), ``est``'s
    shared and group parts fixed: (key offsets per task, key columns, v per key, c per task)."""
    T = len(counts)
    offsets = est.decision_function(X, tasks=None, groups=groups)  # the shared and group parts' scores
    layout = TaskLayout.build(est._rows(X), tidx, T, np.full(T, -1, np.int64), 0)
    weight = task_weights(counts, est.task_weighting, est.weight_scale_)[tidx]
    parts = PersonalParts(layout.Xk, layout.task_offsets, np.where(y == est.classes_[1], 1.0, -1.0), weight, tidx,
                          alpha=float(est.alpha), mu=float(est.mu), dual_max_rows=dual_max_rows)
    tol = INNER_TOL * float(est.tol)
    parts.solve(offsets, tol * float(weight.mean()), tol, int(est.max_iter))
    v, c = parts.parts()
    return layout.task_offsets, layout.key_cols.astype(np.int64), v, c

