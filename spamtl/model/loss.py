"""Loss and gradient of the multi-task logistic objective (numpy/scipy only).

Notes
-----
Tasks t = 1..T, optional groups g(t), samples i with task t(i), label
y_i in {-1, +1} and sample weight s_i (omega_t(i), the task weight).
The score of sample i is::

    f_i = (w0 + u_g(t) + v_t) . x_i + b0 + cg_g(t) + c_t

and the objective is::

    J = sum_i s_i log(1 + exp(-y_i f_i))
        + alpha/2 (||w0||^2 + mu_g sum_g (||u_g||^2 + cg_g^2) + mu sum_t (||v_t||^2 + c_t^2))

b0 is not penalised; the group and task intercept deviations are penalised
like their weights, which makes them identifiable and matches the
Evgeniou-Pontil feature map with a constant column per block.

Compact parameterisation.  v_t is only ever non-zero on the columns that occur
in task t's rows (its gradient is zero elsewhere), u_g on those of group g's
rows and w0 on those of any row.  Every distinct (task, column) pair is a
*key*; the data are re-indexed once as ``Xk`` with shape (n_samples, n_keys)
and the same non-zeros as X.  With ``W[k] = w0[col(k)] + u[gcol(k)] + v[k]``
the margins are ``Xk @ W`` and the loss gradient with respect to W is
``G = Xk.T @ r``; the gradients of w0 and u are scatter-adds of G
(``bincount``).  One forward and one backward sparse product per evaluation,
O(nnz(X) + n_keys) memory: cost grows with the data, not with users x features.

Conditioning.  L-BFGS is run in the coordinates ``theta' = sqrt(max(p / p_ref, 1)) * theta``
where p is each parameter's penalty factor (1, mu_g or mu).  With mu, mu_g >= 1
(p_ref = 1) this is the Evgeniou-Pontil rescaling of v by sqrt(mu): the penalty
becomes isotropic.  When some factor is below ``RESCALE_BELOW`` (0.01), p_ref is
that smallest factor, so w0 is scaled by sqrt(1 / mu) instead and the penalty is
again isotropic.  The original coordinates there would leave w0 with curvature
1/mu times that of v, and L-BFGS would stop far from the optimum at tiny mu.
Between 0.01 and 1 the original coordinates are kept: the imbalance is at most
100, L-BFGS copes, and the stopping test (a max-norm in these coordinates)
keeps its meaning.  Both limits
(mu -> 0, mu -> inf) are well-conditioned.  The objective is divided by sum(s) inside the solver,
which does not move the optimum.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit

from spamtl.parallel import one_blas_thread

__all__ = ["TASK_WEIGHTINGS", "task_weights", "ConvergenceWarning", "TaskLayout", "MultiTaskLogisticLoss",
           "minimize_lbfgs", "lbfgs_numpy", "Blockwise", "parameter_blocks", "task_ranges"]


TASK_WEIGHTINGS = ("sample", "task")
RESCALE_BELOW = 0.01
"""Penalty factors below this switch the preconditioner to the smallest factor (module Notes)."""
LARGE_PROBLEM = 1_000_000
"""Above this many parameters (about 130 users of ~100 labels) :func:`minimize_lbfgs` uses
:func:`lbfgs_numpy` instead of SciPy's L-BFGS-B, whose workspace is ~25 float64 copies of the parameters and
whose per-iteration bookkeeping then costs more than the objective."""
SINGLE_BLAS_THREAD_ABOVE = 1_000_000
"""Fits with more parameters than this (about 130 users of ~100 labels) run BLAS on one thread (see
:func:`minimize_lbfgs`)."""
HISTORY_BYTES = 2e9
"""At most this much memory for :func:`lbfgs_numpy`'s (s, y) pairs: 10 float64 pairs up to 12.5M parameters."""


def task_weights(counts: np.ndarray, weighting: str, scale: float | None = None) -> np.ndarray:
    """omega_t for tasks with ``counts`` labelled samples.

    ``'sample'``: 1 for every sample (tasks count by their size).
    ``'task'``: ``scale / m_t`` with ``scale = n_samples / n_tasks`` by default,
    so each task's samples add up to the same total and the overall weight
    stays n_samples.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if weighting == "sample":
        return np.ones_like(counts)
    if weighting == "task":
        if scale is None:
            scale = counts.sum() / max(len(counts), 1)
        return scale / np.maximum(counts, 1.0)
    raise ValueError(f"task_weighting must be one of {TASK_WEIGHTINGS}, got {weighting!r}")


class ConvergenceWarning(UserWarning):
    """L-BFGS stopped before the gradient norm reached the tolerance."""


def _unique_inverse(values: np.ndarray, index_type: type) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` with ~25 bytes per value at the peak instead of ~50, and
    the inverse in ``index_type`` (``values`` is not changed)."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    uniques = ordered[new]
    del ordered
    inverse = np.empty(len(new), dtype=index_type)
    inverse[order] = np.cumsum(new, dtype=index_type) - 1
    return uniques, inverse


BUILD_BLOCK_NNZ = 1 << 23
"""TaskLayout.build indexes the keys of this many non-zeros at a time (tasks are never split)."""


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]:starts[i] + lengths[i]`` for every i, concatenated (int64)."""
    total = int(lengths.sum())
    shift = np.asarray(starts, np.int64) - (np.cumsum(lengths) - lengths)
    out = np.repeat(shift, lengths)
    out += np.arange(total, dtype=np.int64)
    return out


def task_ranges(cumulative: np.ndarray, size: float) -> np.ndarray:
    """Bounds ``[0, ..., T]`` of contiguous task ranges of about ``size`` each (a task is never split), where
    ``cumulative`` is the running total over tasks of what is counted (rows, non-zeros)."""
    T = len(cumulative)
    total = float(cumulative[-1]) if T else 0.0
    cuts = np.searchsorted(cumulative, size * np.arange(1, int(total // size) + 1), side="right")
    return np.unique(np.concatenate([[0], np.minimum(cuts, T), [T]])).astype(np.int64)


def _group_layout(key_cols: np.ndarray, task_offsets: np.ndarray, task_group: np.ndarray, n_groups: int,
                  key_type: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The group keys (:class:`TaskLayout`'s ``group_cols``, ``group_offsets``, ``key_group``), one group at a
    time: a group's keys are the distinct columns of its tasks' key ranges."""
    key_group = np.full(len(key_cols), -1, dtype=key_type)
    group_parts = []
    group_counts = np.zeros(n_groups, np.int64)
    if n_groups:
        task_order = np.argsort(task_group, kind="stable")
        group_start = np.searchsorted(task_group[task_order], np.arange(n_groups + 1))
        n_group_keys = 0
        for g in range(n_groups):
            members = task_order[group_start[g]:group_start[g + 1]]
            pos = _ranges(task_offsets[members], task_offsets[members + 1] - task_offsets[members])
            cols, group_inverse = _unique_inverse(key_cols[pos], key_type)
            group_inverse += n_group_keys
            key_group[pos] = group_inverse
            group_parts.append(cols.astype(np.int64))
            group_counts[g] = len(cols)
            n_group_keys += len(cols)
            del pos, group_inverse
    group_cols = np.concatenate(group_parts) if group_parts else np.zeros(0, np.int64)
    return group_cols, np.concatenate([[0], np.cumsum(group_counts)]).astype(np.int64), key_group


@dataclass(frozen=True)
class TaskLayout:
    """Index bookkeeping for the compact parameterisation.

    Attributes
    ----------
    n_features : int
        Width d of the original design.
    shared_cols : ndarray of int64, shape (K0,)
        Sorted columns that occur in any row (support of w0).
    task_offsets : ndarray of int64, shape (T + 1,)
        Keys of task t are ``task_offsets[t]:task_offsets[t+1]``.
    key_cols : ndarray of int32 (int64 past 2**31 columns), shape (n_keys,)
        Original column of each key (sorted within each task).
    key_shared : ndarray of int32 (int64 past 2**31 keys), shape (n_keys,)
        Position of each key's column in ``shared_cols`` (made on first use).
    group_cols : ndarray of int64, shape (Kg,)
        Original column of each group key; ``group_offsets`` delimit groups.
    group_offsets : ndarray of int64, shape (G + 1,)
    key_group : ndarray of int32 (int64 past 2**31 keys), shape (n_keys,)
        Position of each key in the group keys, or -1 for an ungrouped task.
    Xk : csr_matrix, shape (n_samples, n_keys)
        The data re-indexed by key.
    """

    n_features: int
    shared_cols: np.ndarray
    task_offsets: np.ndarray
    key_cols: np.ndarray
    group_cols: np.ndarray
    group_offsets: np.ndarray
    key_group: np.ndarray
    Xk: sp.csr_matrix

    @classmethod
    def build(cls, X: sp.csr_matrix, task_index: np.ndarray, n_tasks: int,
              task_group: np.ndarray, n_groups: int, block_nnz: int = BUILD_BLOCK_NNZ) -> TaskLayout:
        """Index X (CSR, float64) by (task, column) keys.

        ``task_index`` gives each row's task in 0..T-1; ``task_group`` each
        task's group in 0..G-1 or -1.  The keys are indexed ``block_nnz`` non-zeros at a time (memory).
        """
        d = X.shape[1]
        X = X.tocsr()
        X.sum_duplicates()
        # The key of each non-zero and its index among the sorted distinct keys (np.unique of task * d + column
        # with return_inverse).  Different tasks never share a key, so this is done a block of tasks at a time
        # (BUILD_BLOCK_NNZ non-zeros): the blocks' sorted keys, in task order, are the sorted keys, and the
        # temporaries stay a block's size.  int32 indices while they fit.
        index_type = np.int32 if X.nnz < np.iinfo(np.int32).max else np.int64
        col_type = np.int32 if d < np.iinfo(np.int32).max else np.int64
        lengths = np.diff(X.indptr)
        row_order = np.argsort(task_index, kind="stable")
        row_start = np.searchsorted(task_index[row_order], np.arange(n_tasks + 1))
        bounds = task_ranges(np.cumsum(np.bincount(task_index, weights=lengths, minlength=n_tasks)), block_nnz)
        inverse = np.empty(X.nnz, dtype=index_type)
        cols_parts = []
        counts = np.zeros(n_tasks, np.int64)
        n_keys = 0
        for t0, t1 in zip(bounds[:-1], bounds[1:]):
            rows = row_order[row_start[t0]:row_start[t1]]
            pos = _ranges(X.indptr[rows], lengths[rows])  # the block's non-zeros
            key = np.repeat(task_index[rows].astype(np.int64) - t0, lengths[rows])
            key *= d
            key += X.indices[pos]
            keys, block_inverse = _unique_inverse(key, index_type)
            del key
            block_inverse += n_keys
            inverse[pos] = block_inverse
            del pos, block_inverse
            key_task = keys // d
            cols_parts.append((keys - key_task * d).astype(col_type))
            counts[t0:t1] = np.bincount(key_task, minlength=t1 - t0)
            n_keys += len(keys)
            del keys, key_task
        key_cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, col_type)
        del cols_parts
        task_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        key_type = np.int32 if len(key_cols) < np.iinfo(np.int32).max else np.int64
        # The keys' columns among all columns used: a table over the d columns, not a sort of the keys.
        present = np.zeros(d, dtype=bool)
        present[key_cols] = True
        shared_cols = np.flatnonzero(present).astype(np.int64)
        del present
        Xk = sp.csr_matrix((X.data, inverse, X.indptr.astype(index_type)), shape=(X.shape[0], len(key_cols)))
        del inverse

        group_cols, group_offsets, key_group = _group_layout(key_cols, task_offsets, task_group, n_groups, key_type)
        return cls(d, shared_cols, task_offsets, key_cols, group_cols, group_offsets, key_group, Xk)

    @property
    def n_keys(self) -> int:
        return len(self.key_cols)

    @functools.cached_property
    def key_shared(self) -> np.ndarray:
        """Position of each key's column in ``shared_cols`` (int32 while it fits), made when first asked for:
        the joint objective gathers w0 onto the keys with it, the projected one never does."""
        key_type = np.int32 if len(self.key_cols) < np.iinfo(np.int32).max else np.int64
        position = np.zeros(self.n_features, dtype=key_type)
        position[self.shared_cols] = np.arange(len(self.shared_cols), dtype=key_type)
        return position[self.key_cols]


class Blockwise:
    """A vector of the parameters' size that is constant on each block of the parameter vector (the
    penalty factors, the preconditioner), kept as one value per block.

    Parameter-sized arrays are what a large fit runs out of memory on.  Each operation is the elementwise
    one, block by block, so results are bit-for-bit those of the full vectors.
    """

    def __init__(self, slices: dict[str, slice], values: dict[str, float]) -> None:
        self.parts = [(sl, float(values[name])) for name, sl in slices.items() if sl.stop > sl.start]

    def times(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x * self (elementwise); ``out`` may be ``x``."""
        out = np.empty_like(x, dtype=np.float64) if out is None else out
        for sl, value in self.parts:
            np.multiply(x[sl], value, out=out[sl])
        return out

    def divide(self, x: np.ndarray) -> np.ndarray:
        """x / self (elementwise)."""
        out = np.empty_like(x, dtype=np.float64)
        for sl, value in self.parts:
            np.divide(x[sl], value, out=out[sl])
        return out

    def inverse(self) -> Blockwise:
        """1 / self."""
        return self._with([1.0 / v for _, v in self.parts])

    def over(self, c: float) -> Blockwise:
        """self / c."""
        return self._with([v / c for _, v in self.parts])

    def _with(self, values: list[float]) -> Blockwise:
        out = Blockwise({}, {})
        out.parts = [(sl, v) for (sl, _), v in zip(self.parts, values)]
        return out


def parameter_blocks(sizes: dict[str, int], factors: dict[str, float],
                     alpha: float) -> tuple[dict[str, slice], int, Blockwise, Blockwise]:
    """The parameter vector's blocks: each block's slice (in ``sizes`` order), the total size, the
    preconditioner (optimise ``theta' = scale * theta``, module Notes) and ``alpha`` times each block's
    penalty factor."""
    slices: dict[str, slice] = {}
    start = 0
    for name, size in sizes.items():
        slices[name] = slice(start, start + size)
        start += size
    penalised = [factors[k] for k in sizes if sizes[k] and factors[k] > 0]
    smallest = float(min(penalised)) if penalised else 1.0
    # See the module Notes: rescale by the smallest factor only where the factors differ by more
    # than RESCALE_BELOW; above it the original coordinates (and so the same fits) are kept.
    reference = smallest if smallest < RESCALE_BELOW else 1.0
    scale = Blockwise(slices, {k: float(np.sqrt(np.maximum(np.float64(f) / reference, 1.0)))
                               for k, f in factors.items()})
    return slices, start, scale, Blockwise(slices, {k: alpha * f for k, f in factors.items()})


class MultiTaskLogisticLoss:
    """Objective J and its exact gradient on the compact parameter vector.

    Parameters
    ----------
    layout : TaskLayout
    y : ndarray of float64, shape (n_samples,)
        Labels in {-1, +1}.
    sample_weight : ndarray of float64, shape (n_samples,)
        s_i = omega_t(i) (times any user-given sample weight).
    task_index : ndarray of int64, shape (n_samples,)
    task_group : ndarray of int64, shape (n_tasks,)
        Group of each task, -1 if none.
    alpha, mu, mu_group : float
        Overall strength, task relatedness and group relatedness (> 0).
    fixed_shared : ndarray or None, shape (n_keys,)
        If given, w0 and u are not parameters: this vector (w0 + u on each
        key) and ``fixed_intercept`` (b0 + cg per sample) are held fixed.

    Notes
    -----
    Parameter vector theta, in order::

        w0 (K0) | u (Kg) | v (n_keys) | b0 (1) | cg (G) | c (T)

    (only ``v | c`` when the shared part is fixed).  See the module docstring
    for J.
    """

    def __init__(self, layout: TaskLayout, y: np.ndarray, sample_weight: np.ndarray,
                 task_index: np.ndarray, task_group: np.ndarray, *, alpha: float, mu: float,
                 mu_group: float, fixed_shared: np.ndarray | None = None,
                 fixed_intercept: np.ndarray | None = None) -> None:
        self.layout = layout
        self.y = y
        self.s = sample_weight
        self.ti = task_index
        self.tg = task_group
        self.n_tasks = len(task_group)
        self.n_groups = len(layout.group_offsets) - 1
        self.alpha = alpha
        self.is_fixed = fixed_shared is not None
        self.fixed_shared = fixed_shared
        self.fixed_intercept = fixed_intercept
        self.gi = np.where(task_group[task_index] >= 0, task_group[task_index], self.n_groups)
        K0, Kg, Kv = len(layout.shared_cols), len(layout.group_cols), layout.n_keys
        G, T = self.n_groups, self.n_tasks
        if self.is_fixed:
            self.sizes = dict(w0=0, u=0, v=Kv, b0=0, cg=0, c=T)
        else:
            self.sizes = dict(w0=K0, u=Kg, v=Kv, b0=1, cg=G, c=T)
        factors = dict(w0=1.0, u=mu_group, v=mu, b0=0.0, cg=mu_group, c=mu)
        self.slices, self.n_params, self.scale, self.alpha_penalty = parameter_blocks(self.sizes, factors, alpha)
        self.total_weight = float(self.s.sum())
        # Keys of grouped tasks and their group keys, gathered once rather than at every evaluation; where
        # every task has a group (as at a site that puts everyone in a department) no index is kept.
        grouped = layout.key_group >= 0
        if grouped.all():
            self._grouped: np.ndarray | slice = slice(None)
            self._grouped_key = layout.key_group
        else:
            self._grouped = np.flatnonzero(grouped)
            self._grouped_key = layout.key_group[self._grouped]
        del grouped
        # A CSR copy of Xk.T makes the backward product faster at the price of a second copy of the data:
        # kept for small problems only.
        self._XkT = layout.Xk.T.tocsr() if self.n_params <= LARGE_PROBLEM else layout.Xk.T

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {k: theta[sl] for k, sl in self.slices.items()}

    def effective(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-key weights W and per-sample intercepts for parameter vector theta."""
        p = self.unpack(theta)
        lay = self.layout
        if self.is_fixed:
            W = self.fixed_shared + p["v"]
            b = self.fixed_intercept + p["c"][self.ti]
            return W, b
        W = p["w0"][lay.key_shared]
        W += p["v"]
        if self.n_groups:
            W[self._grouped] += p["u"][self._grouped_key]
        cg = np.append(p["cg"], 0.0)
        b = p["b0"][0] + cg[self.gi] + p["c"][self.ti]
        return W, b

    def loss_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """J(theta) and dJ/dtheta in the original (unscaled, unnormalised) form."""
        # Parameter-sized arrays are let go as soon as they are used (W before G exists, G once it is
        # in grad): a fit's memory peak is inside this function.
        W, b = self.effective(theta)
        z = self.layout.Xk @ W + b
        del W
        yz = self.y * z
        loss = float(self.s @ np.logaddexp(0.0, -yz))
        r = -self.y * self.s * expit(-yz)  # dJ/dz
        grad = np.empty_like(theta)
        sl = self.slices
        lay = self.layout
        grad[sl["v"]] = self._XkT @ r
        G = grad[sl["v"]]
        if self.is_fixed:
            grad[sl["c"]] = np.bincount(self.ti, weights=r, minlength=self.n_tasks)
        else:
            grad[sl["w0"]] = np.bincount(lay.key_shared, weights=G, minlength=self.sizes["w0"])
            if self.n_groups:
                grad[sl["u"]] = np.bincount(self._grouped_key, weights=G[self._grouped],
                                            minlength=self.sizes["u"])
                grad[sl["cg"]] = np.bincount(self.gi, weights=r, minlength=self.n_groups + 1)[:-1]
            grad[sl["b0"]] = r.sum()
            grad[sl["c"]] = np.bincount(self.ti, weights=r, minlength=self.n_tasks)
        pen_theta = self.alpha_penalty.times(theta)
        loss += 0.5 * float(theta @ pen_theta)
        grad += pen_theta
        return loss, grad

    def decision(self, theta: np.ndarray) -> np.ndarray:
        W, b = self.effective(theta)
        return self.layout.Xk @ W + b


def minimize_lbfgs(objective: Any, theta0: np.ndarray, *, tol: float, max_iter: int,
                   secant: bool = False, history_bytes: float | None = None, numpy_above: int = LARGE_PROBLEM,
                   warn: bool = True) -> tuple[np.ndarray, int, float]:
    """Minimise with scipy's L-BFGS-B in scaled coordinates.

    ``secant=True`` always uses :func:`lbfgs_numpy`, whose line search then extrapolates by the secant of
    the directional derivatives (what an objective whose evaluations are expensive asks for: the
    projected one's first line search took many doublings).  Problems of more than ``numpy_above`` parameters
    also use it (SciPy's workspace is ~25 copies of the parameters).  ``history_bytes``: see
    :func:`lbfgs_numpy`.  ``warn=False``: no ConvergenceWarning (the caller checks ``grad_norm``; a
    ``warnings.catch_warnings`` block is not safe in threads).

    Returns
    -------
    theta : ndarray
        The solution in original coordinates.
    n_iter : int
    grad_norm : float
        Max-norm of the preconditioned gradient of J / sum(s), i.e.
        ``max |dJ/dtheta / scale| / sum(s)``, recomputed at the solution (the
        solver's own stopping test is not trusted blindly).  With mu <= 1 and
        mu_group <= 1 the scale is 1 and this is the plain gradient.
    """
    scale = objective.scale
    norm = objective.total_weight or 1.0
    inv_scale = scale.inverse()
    grad_factor = inv_scale.over(norm)

    def fun(theta_scaled: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = objective.loss_gradient(inv_scale.times(theta_scaled))
        grad_factor.times(grad, out=grad)
        return loss / norm, grad

    # One BLAS thread on large problems: the solver's BLAS calls are vector operations (dot, axpy) that
    # BLAS splits over threads which then spin, and training runs independent fits side by side instead.
    # Below SINGLE_BLAS_THREAD_ABOVE BLAS keeps its own threading (its summation order is part of what a
    # small fit gives) and threadpoolctl is not called at all: it is not thread-safe, and the projected
    # fit's users solved in the primal run this from its chunk threads.
    with one_blas_thread() if len(theta0) > SINGLE_BLAS_THREAD_ABOVE else contextlib.nullcontext():
        if len(theta0) > numpy_above or secant:
            x, nit, message = lbfgs_numpy(fun, scale.times(theta0), tol=tol, max_iter=max_iter, secant=secant,
                                          history_bytes=history_bytes)
        else:
            result = minimize(fun, scale.times(theta0), jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-14, "maxcor": 10})
            x, nit, message = result.x, int(result.nit), str(result.message)
    theta = scale.divide(x)
    _, grad = objective.loss_gradient(theta)
    grad_norm = float(np.max(np.abs(grad_factor.times(grad, out=grad)))) if grad.size else 0.0
    if warn and grad_norm > tol:
        warnings.warn(
            f"L-BFGS stopped after {nit} iterations with gradient norm {grad_norm:.2e} "
            f"> tol={tol:.0e} ({message}); increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return theta, nit, grad_norm


def lbfgs_numpy(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, *, tol: float,
                max_iter: int, memory: int = 10, history_bytes: float | None = None,
                secant: bool = False) -> tuple[np.ndarray, int, str]:
    """Unconstrained L-BFGS in numpy, for problems with millions of parameters.

    SciPy's L-BFGS-B keeps 2m + 5 float64 vectors of the parameters' size
    (and its Fortran-in-C bookkeeping costs more per iteration than the
    objective at millions of parameters).  This is the textbook two-loop recursion
    (Nocedal & Wright, Algorithm 7.4) with an Armijo backtracking line
    search, which suffices on a convex objective.  At most ``history_bytes``
    of (s, y) pairs are kept: ``memory`` pairs in float64 if they fit, else
    float32 pairs and fewer of them (at least 3), so the optimiser's memory
    stays bounded on a huge problem.  Same stopping rule as the SciPy path:
    the max-norm of the gradient below ``tol``.

    Returns (x, iterations, message).
    """
    n = len(x0)
    history_bytes = HISTORY_BYTES if history_bytes is None else history_bytes
    # float64 pairs while `memory` of them fit in the budget, else float32 and as many as fit (at least 3).
    dtype = np.float64 if 2 * memory * 8 * n <= history_bytes else np.float32
    m = int(max(3, min(memory, history_bytes // max(2 * np.dtype(dtype).itemsize * n, 1))))
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    rho: list[float] = []
    for it in range(max_iter):
        if not g.size or float(np.max(np.abs(g))) <= tol:
            return x, it, "converged"
        d = _two_loop(g, s_hist, y_hist, rho)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            s_hist.clear(), y_hist.clear(), rho.clear()
            d = -g
            slope = -float(g @ g)
        step = 1.0 if s_hist else min(1.0, 1.0 / max(float(np.sqrt(g @ g)), 1e-12))
        found = _wolfe_step(fun, x, f, slope, d, step, secant=secant)
        if found is None:
            return x, it, "line search failed"
        x_new, f_new, g_new = found
        s_vec = np.subtract(x_new, x, out=np.empty(n, dtype), casting="same_kind")  # no float64 copy first
        y_vec = np.subtract(g_new, g, out=np.empty(n, dtype), casting="same_kind")
        sy = float(s_vec @ y_vec.astype(np.float64, copy=False))
        reduction = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if sy > 1e-12:
            if len(s_hist) == m:
                s_hist.pop(0), y_hist.pop(0), rho.pop(0)
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            rho.append(1.0 / sy)
        if reduction <= 1e-14 * np.finfo(float).eps:
            return x, it + 1, "no further reduction"
    return x, max_iter, "max_iter reached"


def _two_loop(g: np.ndarray, s_hist: list[np.ndarray], y_hist: list[np.ndarray], rho: list[float]) -> np.ndarray:
    """The L-BFGS direction -H g by the two-loop recursion (Nocedal & Wright, Algorithm 7.4)."""
    q = g.copy()
    a = np.empty(len(s_hist))
    for i in range(len(s_hist) - 1, -1, -1):
        a[i] = rho[i] * float(s_hist[i] @ q)
        q -= a[i] * y_hist[i]
    if s_hist:
        y_last = y_hist[-1].astype(np.float64, copy=False)
        q *= float(s_hist[-1] @ y_last) / float(y_last @ y_last)
        del y_last
    for i in range(len(s_hist)):
        b = rho[i] * float(y_hist[i] @ q)
        q += (a[i] - b) * s_hist[i]
    return np.negative(q, out=q)


def _wolfe_step(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray, f: float, slope: float,
                d: np.ndarray, step: float, c1: float = 1e-4, c2: float = 0.9,
                max_evals: int = 40, secant: bool = False) -> tuple[np.ndarray, float, np.ndarray] | None:
    """A step along ``d`` meeting the weak Wolfe conditions, by bracketing and bisection.

    Sufficient decrease (``f(x + a d) <= f + c1 a slope``) alone, as a plain
    backtracking search gives, accepts steps after which ``s . y`` says little
    about the curvature: on warm-started fits along the mu grid the numpy
    L-BFGS then ran into max_iter where SciPy's L-BFGS-B (whose line search
    also asks for the curvature condition ``g(x + a d) . d >= c2 slope``)
    converged in 48 iterations.  On a convex function both conditions hold on
    an interval, which bisection finds (Lewis & Overton 2013).  Returns
    (x_new, f_new, g_new), or None when no step decreases f.  Until a step is too long, steps double; with
    ``secant`` they go to where the directional derivative's secant through 0 and this step is zero (the
    minimum of a quadratic), between 2 and 50 times the step.
    """
    lo, hi = 0.0, math.inf
    best: tuple[np.ndarray, float, np.ndarray] | None = None
    for _ in range(max_evals):
        x_new = d * step  # x + step d, with one parameter-sized temporary instead of two
        x_new += x
        f_new, g_new = fun(x_new)
        if not np.isfinite(f_new) or f_new > f + c1 * step * slope:
            hi = step
        else:
            best = (x_new, f_new, g_new)
            slope_new = float(g_new @ d)
            if slope_new >= c2 * slope:
                return best
            lo = step
            if secant and not math.isfinite(hi):
                step = lo * min(max(slope / (slope - slope_new), 2.0), 50.0)
                continue
        step = 0.5 * (lo + hi) if math.isfinite(hi) else 2.0 * lo
    return best  # sufficient decrease without the curvature condition beats stopping

