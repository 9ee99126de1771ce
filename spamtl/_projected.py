"""Variable projection: the solver of fits with many users (numpy/scipy only).

Notes
-----
The joint objective J(theta_s, theta_p) of :mod:`spamtl._objective` splits its parameters into the
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
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from spamtl._objective import (
    ConvergenceWarning,
    MultiTaskLogisticLoss,
    TaskLayout,
    minimize_lbfgs,
    parameter_blocks,
)
from spamtl.parallel import return_free_memory

__all__ = ["ProjectedLoss", "PersonalParts", "DUAL_MAX_ROWS", "dual_newton"]

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

    def __init__(self, rows: np.ndarray, valid: np.ndarray, K: np.ndarray, y: np.ndarray, s: np.ndarray) -> None:
        self.rows = rows  # (B, P) row indices, 0 where padded
        self.valid = valid  # (B, P) bool
        self.K = K
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
        with warnings.catch_warnings():  # its gradient norm is checked where it counts: the outer fit's
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.theta, _, _ = minimize_lbfgs(obj, self.theta, tol=tol, max_iter=max_iter)
        z = obj.decision(self.theta)
        r = -obj.y * obj.s * expit(-obj.y * z)
        loss, _ = obj.loss_gradient(self.theta)
        return loss, r


class PersonalParts:
    """Every task's personal part (v_t, c_t) given fixed per-row offsets: the inner step of the projected
    fit, and on its own the users' refits of cross-fitting (:func:`spamtl.model.score_refitted_tasks`).

    Tasks of at most ``dual_max_rows`` rows are solved in the dual, batch by batch (:func:`dual_newton`),
    the others by their own L-BFGS; each :meth:`solve` starts every task from its previous solution.

    Parameters
    ----------
    Xk : csr_matrix, shape (n_samples, n_keys)
        The data indexed by (task, column) key (:class:`~spamtl._objective.TaskLayout`).
    task_offsets : ndarray, shape (n_tasks + 1,)
        Keys of task t are ``task_offsets[t]:task_offsets[t + 1]``.
    y, sample_weight, task_index : ndarray, shape (n_samples,)
    alpha, mu : float
        The personal parts' penalty is ``alpha * mu / 2 (||v_t||^2 + c_t^2)``.
    """

    def __init__(self, Xk: sp.csr_matrix, task_offsets: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
                 task_index: np.ndarray, *, alpha: float, mu: float, dual_max_rows: int | None = None) -> None:
        self.Xk = Xk
        self.task_offsets = task_offsets
        self.y = y
        self.s = sample_weight
        self.ti = task_index
        self.n_tasks = len(task_offsets) - 1
        self.alpha = alpha
        self.mu = mu
        self.lam = alpha * mu
        self._build_users(DUAL_MAX_ROWS if dual_max_rows is None else dual_max_rows)

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
        return _Batch(rows, valid, K, y, s)

    def solve(self, offsets: np.ndarray, tol: float, heavy_tol: float, max_iter: int) -> tuple[float, np.ndarray]:
        """Solve every task given each row's offset; returns the tasks' objectives (data loss plus personal
        penalty) summed and dJ/dz of every row.  ``tol``: the dual residual's max-norm (dJ/dz units);
        ``heavy_tol``: the primal L-BFGS's, per unit of weight."""
        r = np.zeros(len(self.y))
        loss = 0.0
        for batch in self.batches:
            ob = np.where(batch.valid, offsets[batch.rows], 0.0)
            objective, rb, _ = dual_newton(batch.K, ob, batch.y, batch.s, batch.a, self.lam, tol=tol)
            loss += float(objective.sum())
            r[batch.rows[batch.valid]] = rb[batch.valid]
        for user in self.heavy:
            part, r[user.rows] = user.solve(offsets[user.rows], heavy_tol, max_iter)
            loss += part
        return loss, r

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """v on every key (layout order) and c per task, at the last :meth:`solve`."""
        a = np.zeros(len(self.y))
        for batch in self.batches:
            a[batch.rows[batch.valid]] = batch.a[batch.valid]
        v = np.asarray(self.Xk.T @ a)  # v_t = Xt^T a_t: different users share no key
        c = np.bincount(self.ti, weights=a, minlength=self.n_tasks)
        for user in self.heavy:
            q = user.objective.unpack(user.theta)
            v[user.key_start + user.layout.key_cols] = q["v"]
            c[user.t] = q["c"][0]
        return v, c


class ProjectedLoss:
    """F(theta_s) = min over the personal parts of J, and its gradient (module Notes).

    Duck-types what :func:`spamtl._objective.minimize_lbfgs` needs of an objective (``scale``,
    ``total_weight``, ``loss_gradient``); ``personal`` gives the users' parts at the last point evaluated.

    Parameter vector theta_s, in order: ``w0 (K0) | u (Kg) | b0 (1) | cg (G)``.
    """

    def __init__(self, layout: TaskLayout, y: np.ndarray, sample_weight: np.ndarray, task_index: np.ndarray,
                 task_group: np.ndarray, *, alpha: float, mu: float, mu_group: float, tol: float,
                 max_iter: int = 500, dual_max_rows: int | None = None, X: sp.csr_matrix | None = None) -> None:
        self.layout = layout
        # The shared part's score and gradient come from the data by column (X @ w0, X^T r): one pass each,
        # reading and writing vocabulary-sized vectors instead of gathering w0 onto every key and summing
        # the keys' gradients back (two key-sized arrays, ~420 MB each at 10,000 users).  ``X`` is the
        # layout's data by column (it shares the values); rebuilt from the layout if not given.
        if X is None:
            X = sp.csr_matrix((layout.Xk.data, _gather(layout.key_cols, layout.Xk.indices), layout.Xk.indptr),
                              shape=(layout.Xk.shape[0], layout.n_features))
        self.X = X
        self.s = sample_weight
        self.n_groups = len(layout.group_offsets) - 1
        self.max_iter = max_iter
        self.gi = np.where(task_group[task_index] >= 0, task_group[task_index], self.n_groups)
        self.sizes = dict(w0=len(layout.shared_cols), u=len(layout.group_cols), b0=1, cg=self.n_groups)
        factors = dict(w0=1.0, u=mu_group, b0=0.0, cg=mu_group)
        self.slices, self.n_params, self.scale, self.alpha_penalty = parameter_blocks(self.sizes, factors, alpha)
        self.total_weight = float(self.s.sum())
        # The users' problems are solved to INNER_TOL of the outer tolerance, in dJ/dz units, or looser while
        # the outer gradient is far above its tolerance (inexact projection: the first evaluations of a fit
        # need no tight inner solves, the last ones get them).
        self.tol = tol
        self.inner_tol = INNER_TOL * tol * self.total_weight / max(len(y), 1)
        self.heavy_tol = INNER_TOL * tol
        self._looser = 1.0
        self._grad_factor = self.scale.inverse().over(self.total_weight or 1.0)
        # The group parts' score and gradient likewise by group key: Xg has the grouped tasks' rows, each
        # non-zero at its (group, column) key (all rows share the layout's values and row pointers when
        # every task has a group, as where everyone is in a department).
        self._group_rows: np.ndarray | None = None
        self.Xg: sp.csr_matrix | None = None
        if self.n_groups:
            rows = np.flatnonzero(task_group[task_index] >= 0)
            sub = layout.Xk if len(rows) == len(y) else layout.Xk[rows]
            self._group_rows = None if len(rows) == len(y) else rows
            self.Xg = sp.csr_matrix((sub.data, _gather(layout.key_group, sub.indices), sub.indptr),
                                    shape=(sub.shape[0], len(layout.group_cols)))
            self._XgT = self.Xg.T
        self._XT = self.X.T
        self.users = PersonalParts(layout.Xk, layout.task_offsets, y, sample_weight, task_index, alpha=alpha, mu=mu,
                                   dual_max_rows=dual_max_rows)
        self._last: np.ndarray | None = None
        self.evaluations = 0

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {k: theta[sl] for k, sl in self.slices.items()}

    def loss_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """F(theta_s) and dF/dtheta_s (original, unnormalised form); the users' solutions are kept."""
        p = self.unpack(theta)
        lay = self.layout
        w0 = np.zeros(lay.n_features)
        w0[lay.shared_cols] = p["w0"]
        b = p["b0"][0] + np.append(p["cg"], 0.0)[self.gi]
        o = self.X @ w0
        del w0
        if self.Xg is not None:
            if self._group_rows is None:
                o += self.Xg @ p["u"]
            else:
                o[self._group_rows] += self.Xg @ p["u"]
        o += b
        del b
        loss, r = self.users.solve(o, self.inner_tol * self._looser, self.heavy_tol * self._looser, self.max_iter)
        del o
        grad = np.empty_like(theta)
        sl = self.slices
        grad[sl["w0"]] = (self._XT @ r)[lay.shared_cols]
        if self.n_groups:
            grad[sl["u"]] = self._XgT @ (r if self._group_rows is None else r[self._group_rows])
            grad[sl["cg"]] = np.bincount(self.gi, weights=r, minlength=self.n_groups + 1)[:-1]
        grad[sl["b0"]] = r.sum()
        pen_theta = self.alpha_penalty.times(theta)
        loss += 0.5 * float(theta @ pen_theta)
        grad += pen_theta
        gnorm = float(np.max(np.abs(self._grad_factor.times(grad)))) if grad.size else 0.0
        self._looser = float(np.clip(gnorm / self.tol, 1.0, LOOSEST))
        self._last = theta.copy()
        self.evaluations += 1
        return loss, grad

    def personal(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The users' parts at theta: v on every key (layout order) and c per task."""
        if self._last is None or not np.array_equal(theta, self._last):
            self.loss_gradient(theta)
        return self.users.parts()
