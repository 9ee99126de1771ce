"""MultiTaskLogisticRegression: a shared + group + per-task logistic model.

Works on numpy / scipy arrays only (no store, no CLI), so it can be used from
a notebook or in a scikit-learn ``Pipeline``.  The mathematics live in
:mod:`spamtl.model.loss`; this module validates input, packs and unpacks
parameters and follows scikit-learn's conventions.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_array, check_is_fitted

from spamtl.features import IdfWeights
from spamtl.metrics import macro_auc_error, rows_by_task
from spamtl.model.loss import (
    TASK_WEIGHTINGS,
    ConvergenceWarning,
    MultiTaskLogisticLoss,
    TaskLayout,
    _one_blas_thread,
    fit_single_task,
    minimize_lbfgs,
    task_weights,
    user_blocks,
)
from spamtl.model.projected import INNER_TOL, PersonalParts, ProjectedLoss
from spamtl.model.weights import ModelWeights, SparsePart
from spamtl.parallel import Inherited, SerialExecutor, release, resolve, return_free_memory, share
from spamtl.rowfiles import release_pages

__all__ = ["ConvergenceWarning", "MultiTaskLogisticRegression", "HyperparameterSearch",
           "select_hyperparameters", "fit_fold", "task_weights", "score_refitted_tasks", "cross_fit_fold"]



def _sparse_rows(offsets: np.ndarray, cols: np.ndarray, values: np.ndarray, n_features: int) -> sp.csr_matrix:
    return sp.csr_matrix((values.astype(np.float64, copy=False), cols.astype(np.int64), offsets.astype(np.int64)),
                         shape=(len(offsets) - 1, n_features))


SOLVERS = ("auto", "joint", "projected")
PROJECTED_FROM_TASKS = 1000
"""``solver='auto'`` fits this many tasks or more by variable projection (:mod:`spamtl.model.projected`): the joint
L-BFGS's memory grows with users x vocabulary (~13 GB at 10,000 users)."""
PROJECTED_SMALL_TASKS = (20, 256)
"""... and from ``[0]`` tasks on when they have at most ``[1]`` rows on average, where it is also the faster.
Three cold fits (mu 100, 10, 1) on the 10,000-user store's users took, joint / projected: 20 users of 100
rows 3.2 / 1.0 s, 200 of 100 rows 23 / 17 s, 100 tasks of 200 rows 54 / 39 s, 50 tasks of 400 rows 44 / 84 s
(users above ``DUAL_MAX_ROWS`` rows are solved by their own L-BFGS).  Its fits also reach the optimum where
the joint test stops early (see ``_initial_theta``).  The 6-user quality benchmarks stay on the joint solver."""


def auto_projected(n_tasks: int, n_rows: int) -> bool:
    """Whether ``solver='auto'`` fits ``n_tasks`` tasks of ``n_rows`` rows in all by variable projection."""
    few, mean_rows = PROJECTED_SMALL_TASKS
    return n_tasks >= PROJECTED_FROM_TASKS or (n_tasks >= few and n_rows <= mean_rows * n_tasks)


REFIT_CHUNK_ROWS = 50_000
"""score_refitted_tasks solves the tasks of about this many training rows at a time (~7M non-zeros, ~300 MB
of layout and Gram matrices), whatever the number of users."""
PROJECTED_TOL = 0.1
"""The projected solver stops at ``tol * PROJECTED_TOL``.  Its test sees only the shared part's gradient,
and F is flat where the users' parts absorb a change of the shared part: on 300 users of the 10,000-user
store (alpha 0.01, mu 1) it stopped at tol = 1e-5 with J = 296.7 where the joint L-BFGS reached 252.3 (the
optimum is 251.75); at 1e-6 it reaches 251.98 in 9.7 s against the joint's 17.8 s."""


class MultiTaskLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression with a shared part, group parts and per-task parts.

    Parameters
    ----------
    alpha : float, default=1.0
        Overall regularisation strength lambda (> 0).  The loss is summed over
        samples, so alpha is in units of samples: 1.0 is mild.
    mu : float, default=1.0
        Task relatedness (> 0).  Large mu pulls every task onto the shared
        model (one pooled filter); small mu lets tasks go their own way
        (independent per-task filters).
    mu_group : float, default=1.0
        Relatedness of groups to the shared part (> 0); unused without groups.
    task_weighting : {'sample', 'task'}, default='sample'
        ``'sample'`` weighs every sample 1; ``'task'`` weighs task t's samples
        by n_samples / (n_tasks * m_t) so every task counts equally.
    max_iter : int, default=1000
        L-BFGS iterations.
    tol : float, default=1e-6
        Stop when the max-norm of the (preconditioned, see
        :mod:`spamtl.model.loss`) gradient of J / sum(weights) is below tol.
    warm_start : bool, default=False
        Start ``fit`` from the current fitted parameters (matched by task and
        group label and by feature column).  The joint solver starts cold
        when alpha, mu or mu_group changed since that fit (its stopping test
        would pass at the old optimum); the projected one always warm.
    idf : bool, default=False
        For bag-of-words rows (spamtl's features): learn inverse document
        frequencies from the rows given to ``fit`` and reweight every row
        with them (then rescale it to unit L2 norm) before it enters the
        objective, in ``fit``, ``refit_task`` and scoring alike.  This is a
        fixed, label-free transform of X; the objective below is unchanged
        in the transformed rows.  spamtl's training always sets it: on
        Enron-Spam it halves the error at every training-set size (README).
        Leave it off for general real-valued features.
    solver : {'auto', 'joint', 'projected'}, default='auto'
        How J is minimised; every solver finds the same optimum (to ``tol``).  ``'joint'``: one L-BFGS over
        all parameters.  ``'projected'``: L-BFGS over the shared and group parts only, each task's part
        solved exactly given them (:mod:`spamtl.model.projected`): the optimiser's memory is that of the
        vocabulary, not of users x vocabulary, and the rows are held a chunk of users at a time, in a
        scratch directory under ``$TMPDIR`` beyond ``spamtl.model.projected.CHUNK_ROWS`` rows (removed when
        the fit ends).  ``'auto'``: projected from ``PROJECTED_FROM_TASKS`` tasks on, or from
        ``PROJECTED_SMALL_TASKS`` tasks of few rows (:func:`auto_projected`).

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        ``classes_[1]`` is the positive (spam) class.
    tasks_ : ndarray of shape (n_tasks,)
        Task labels (fit order is sorted order; tasks added by ``refit_task`` follow).
    groups_ : ndarray of shape (n_groups,)
    task_groups_ : ndarray of int64, shape (n_tasks,)
        Index into ``groups_`` of each task's group, -1 for none.
    coef_shared_ : ndarray of shape (n_features,)
        w0.
    intercept_shared_ : float
        b0.
    coef_groups_ : csr_matrix of shape (n_groups, n_features)
        u_g, stored only on features seen in the group's data.
    intercept_groups_ : ndarray of shape (n_groups,)
    coef_tasks_ : csr_matrix of shape (n_tasks, n_features)
        v_t, stored only on features seen in the task's data.
    intercept_tasks_ : ndarray of shape (n_tasks,)
    task_weights_ : ndarray of shape (n_tasks,)
        omega_t used in the fit.
    n_features_in_ : int
    n_iter_ : int
    gradient_norm_ : float
        Max-norm of the preconditioned gradient of J / sum(weights) at the solution (the projected solver:
        of its shared part; each task's part is solved exactly given it).
    solver_ : {'joint', 'projected'}
        The solver ``fit`` used.
    idf_ : IdfWeights or None
        The document frequencies learned by ``fit`` when ``idf=True``.

    Notes
    -----
    Score of task t: f_t(x) = (w0 + u_g(t) + v_t) . x + b0 + cg_g(t) + c_t.
    Objective::

        J = sum_i omega_t(i) log(1 + exp(-y_i f_t(i)(x_i)))
            + alpha/2 (||w0||^2 + mu_group sum_g (||u_g||^2 + cg_g^2)
                       + mu sum_t (||v_t||^2 + c_t^2))

    This equals an ordinary L2 logistic regression (C = 1/alpha, intercept
    b0 unpenalised) on the feature map x -> [x | x/sqrt(mu_group) in block
    g(t) | x/sqrt(mu) in block t] (Evgeniou & Pontil, 2004).  Solved by
    L-BFGS on the exact gradient of a compact parameterisation (see
    :mod:`spamtl.model.loss`), or for many tasks (:func:`auto_projected`) by
    L-BFGS over the shared and group parts with every task's part solved
    given them (:mod:`spamtl.model.projected`): the same optimum.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); tasks = np.repeat(["ann", "bob"], 30)
    >>> y = (X[:, 0] + np.where(tasks == "bob", X[:, 1], 0) > 0).astype(int)
    >>> clf = MultiTaskLogisticRegression(alpha=1.0, mu=1.0).fit(X, y, tasks=tasks)
    >>> clf.predict_proba(X[:2], tasks=["ann", "carol"]).shape
    (2, 2)
    """

    def __init__(self, alpha: float = 1.0, mu: float = 1.0, mu_group: float = 1.0,
                 task_weighting: str = "sample", max_iter: int = 1000, tol: float = 1e-6,
                 warm_start: bool = False, idf: bool = False, solver: str = "auto") -> None:
        self.alpha = alpha
        self.mu = mu
        self.mu_group = mu_group
        self.task_weighting = task_weighting
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.idf = idf
        self.solver = solver

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        for name in ("alpha", "mu", "mu_group", "tol"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {TASK_WEIGHTINGS}, got {self.task_weighting!r}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter!r}")

    def fit(self, X: Any, y: Any, tasks: Any = None, groups: Any = None,
            sample_weight: Any = None, executor: Executor | Callable[[], Executor] | None = None,
            n_blocks: int | None = None, threads: int = 1) -> MultiTaskLogisticRegression:
        """Fit the model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Two classes; the larger (after sorting) is the positive class.
        tasks : array-like of shape (n_samples,), optional
            The task (user) of each sample; None means one task.
        groups : array-like of shape (n_samples,), optional
            The group of each sample's task (constant within a task; None
            entries mean "no group").
        sample_weight : array-like of shape (n_samples,), optional
            Multiplies the task weights.
        executor : Executor or a function returning one, optional
            Evaluate the loss in ``n_blocks`` blocks of users on it
            (:func:`spamtl.model.loss.block_loss_grad`; default two blocks
            per worker): the same fit, with the data terms computed where
            the executor runs them.  A function is called once the blocks
            exist, so a fork pool's workers inherit them (:mod:`spamtl.parallel`).
            The projected solver (see ``solver``) runs in-process and does not use it.
        n_blocks : int, optional
        threads : int, default 1
            The projected solver's chunks of users are built and evaluated by this many threads
            (:class:`spamtl.model.projected.ProjectedLoss`): the same fit, bit for bit.  The joint solver
            ignores it (see ``executor``).

        Returns
        -------
        self
        """
        self._check_params()
        X = check_array(X, accept_sparse="csr", dtype=np.float64)
        X = sp.csr_matrix(X)
        release_pages(X)  # rows mapped from files (spamtl.rowfiles): the finiteness check read them all
        n, d = X.shape
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y must have shape ({n},), got {y.shape}")
        idf = IdfWeights.fit(X) if self.idf else None
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"y must contain exactly two classes, got {len(classes)}: {classes[:5]!r}")
        y_pm = np.where(y == classes[1], 1.0, -1.0)
        tasks_arr = np.zeros(n, dtype=np.int64) if tasks is None else np.asarray(tasks)
        if tasks_arr.shape != (n,):
            raise ValueError(f"tasks must have shape ({n},), got {tasks_arr.shape}")
        task_labels, tidx = np.unique(tasks_arr, return_inverse=True)
        tidx = tidx.astype(np.int64)
        T = len(task_labels)
        group_labels, task_group = self._task_groups(groups, tidx, T, n)
        G = len(group_labels)

        counts = np.bincount(tidx, minlength=T)
        omega = task_weights(counts, self.task_weighting)
        s = omega[tidx]
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64)
            if sw.shape != (n,) or np.any(sw < 0) or not np.all(np.isfinite(sw)):
                raise ValueError("sample_weight must be finite, non-negative, of shape (n_samples,)")
            s = s * sw

        projected = self.solver == "projected" or (self.solver == "auto" and auto_projected(T, n))
        tol = float(self.tol) * (PROJECTED_TOL if projected else 1.0)
        objective: MultiTaskLogisticLoss | ProjectedLoss
        layout: TaskLayout | ProjectedLoss
        if projected:
            # A chunk of users at a time, weighted chunk by chunk, kept on disk when there are several: no
            # weighted copy or key layout of all rows (:mod:`spamtl.model.projected`).
            objective = layout = ProjectedLoss(
                X, y_pm, s, tidx, task_group, alpha=float(self.alpha), mu=float(self.mu),
                mu_group=float(self.mu_group), tol=tol, max_iter=int(self.max_iter), n_groups=G,
                transform=None if idf is None else idf.transform, threads=max(int(threads), 1))
            del X
        else:
            if idf is not None:
                X, given = idf.transform(X), X
                release_pages(given)
            layout = TaskLayout.build(X, tidx, T, task_group, G)
            release_pages(X)
            del X  # the layout holds the data now (its own key indices, the same values)
            objective = MultiTaskLogisticLoss(layout, y_pm, s, tidx, task_group, alpha=float(self.alpha),
                                              mu=float(self.mu), mu_group=float(self.mu_group))
        pool, own, handles = None, False, []
        try:  # from here on the projected objective's threads, BLAS setting and scratch files are closed
            return_free_memory()  # the index building's temporaries (~4 GB at 10,000 users), kept by malloc
            theta0 = self._initial_theta(objective, layout, task_labels, group_labels, y_pm, s, projected)
            if executor is not None and not projected:
                own = not isinstance(executor, Executor)
                blocks = user_blocks(layout, y_pm, s, tidx, n_blocks or 2 * getattr(executor, "_max_workers", 2))
                pool = executor() if own else executor  # type: ignore[operator]
                handles = [share(pool, b) for b in blocks]
                objective.distribute(blocks, pool, handles)
            theta, n_iter, grad_norm = minimize_lbfgs(objective, theta0, tol=tol, max_iter=int(self.max_iter),
                                                      secant=projected)
            p = objective.unpack(theta)
            if isinstance(objective, ProjectedLoss):
                p["v"], p["c"] = objective.personal(theta)
        finally:
            for h in handles:
                if isinstance(h, Inherited):
                    release(h)
            if own and pool is not None:
                pool.shutdown()
            if isinstance(objective, ProjectedLoss):
                objective.close()  # its threads, BLAS setting and scratch files
        # The data, key indices and Gram matrices go before the fitted parts are assembled (a 10,000-user
        # night's peak was that moment, with both alive).
        shared_cols, group_offsets, group_cols = layout.shared_cols, layout.group_offsets, layout.group_cols
        task_offsets, key_cols = layout.task_offsets, layout.key_cols
        del objective, layout
        return_free_memory()

        self.classes_ = classes
        self.n_features_in_ = d
        self.tasks_ = task_labels
        self.groups_ = group_labels
        self.task_groups_ = task_group
        self.coef_shared_ = np.zeros(d)
        self.coef_shared_[shared_cols] = p["w0"]
        self.intercept_shared_ = float(p["b0"][0])
        self.coef_groups_ = _sparse_rows(group_offsets, group_cols, p["u"], d)
        self.intercept_groups_ = p["cg"].copy()
        self.coef_tasks_ = _sparse_rows(task_offsets, key_cols, p["v"], d)
        self.intercept_tasks_ = p["c"].copy()
        self.task_weights_ = omega
        self.weight_scale_ = n / T
        self.n_iter_ = n_iter
        self.gradient_norm_ = grad_norm
        self.solver_ = "projected" if projected else "joint"
        self.penalty_ = self._penalty()
        self.idf_ = idf
        return self

    def _rows(self, X: Any) -> sp.csr_matrix:
        """Validated CSR rows, reweighted by the fitted idf if there is one."""
        X = sp.csr_matrix(check_array(X, accept_sparse="csr", dtype=np.float64))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted with {self.n_features_in_}")
        idf = getattr(self, "idf_", None)
        return idf.transform(X) if idf is not None else X

    @staticmethod
    def _task_groups(groups: Any, tidx: np.ndarray, T: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if groups is None:
            return np.array([], dtype=object), np.full(T, -1, dtype=np.int64)
        garr = np.asarray(groups, dtype=object)
        if garr.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {garr.shape}")
        first = np.zeros(T, dtype=np.int64)
        first[tidx[::-1]] = np.arange(n)[::-1]  # first sample of each task
        per_task = garr[first]
        if any(a != b for a, b in zip(garr, per_task[tidx])):
            raise ValueError("groups must be constant within each task")
        names = sorted({g for g in per_task if g is not None and g != ""}, key=str)
        index = {g: i for i, g in enumerate(names)}
        task_group = np.array([index.get(g, -1) if g is not None else -1 for g in per_task], dtype=np.int64)
        return np.array(names, dtype=object), task_group

    def _initial_theta(self, objective: MultiTaskLogisticLoss | ProjectedLoss, layout: TaskLayout | ProjectedLoss,
                       task_labels: np.ndarray, group_labels: np.ndarray, y_pm: np.ndarray,
                       s: np.ndarray, projected: bool) -> np.ndarray:
        theta = np.zeros(objective.n_params)
        sl = objective.slices
        pos = float(s[y_pm > 0].sum())
        neg = float(s[y_pm < 0].sum())
        theta[sl["b0"]] = np.log(max(pos, 1e-12) / max(neg, 1e-12))  # the class prior
        if not (self.warm_start and hasattr(self, "coef_shared_")):
            return theta
        if not projected and getattr(self, "penalty_", None) != self._penalty():
            # The joint L-BFGS from another penalty's optimum stops where it starts: its test (the max-norm of
            # dJ / sum(s)) sees a user's part through that user's share of the weight, and after mu 100 -> 10
            # the change in each part's gradient was below tol (0 iterations on 6 and on 50 users; held-out
            # loss that of mu = 100).  The projected solver re-solves every part at the new penalty.
            return theta
        if self.coef_shared_.shape[0] != layout.n_features:
            warnings.warn("warm_start ignored: the number of features changed", UserWarning, stacklevel=3)
            return theta
        theta[sl["w0"]] = self.coef_shared_[layout.shared_cols]
        theta[sl["b0"]] = self.intercept_shared_
        if "v" in sl:  # the projected solver has no task parameters: it solves them given the shared ones
            old_tasks = {t: i for i, t in enumerate(self.tasks_)}
            rows = np.array([old_tasks.get(t, -1) for t in task_labels], dtype=np.int64)
            key_task = np.repeat(np.arange(len(task_labels)), np.diff(layout.task_offsets))
            theta[sl["v"]] = _lookup(self.coef_tasks_, rows[key_task], layout.key_cols)
            known = rows >= 0  # a start without users' parts (HyperparameterSearch.fold_models) knows none
            theta[sl["c"]][known] = self.intercept_tasks_[rows[known]]
        if len(group_labels) and len(self.groups_):
            old_groups = {g: i for i, g in enumerate(self.groups_)}
            grows = np.array([old_groups.get(g, -1) for g in group_labels], dtype=np.int64)
            gkey_group = np.repeat(np.arange(len(group_labels)), np.diff(layout.group_offsets))
            theta[sl["u"]] = _lookup(self.coef_groups_, grows[gkey_group], layout.group_cols)
            theta[sl["cg"]][grows >= 0] = self.intercept_groups_[grows[grows >= 0]]
        return theta

    def without_tasks(self) -> MultiTaskLogisticRegression:
        """A copy with the shared and group parts (and IDF) but no task's personal part (the arrays are
        shared, not copied: ``fit`` replaces them, never writes into them).

        Every task scores with it as an unknown one; it is what :func:`score_refitted_tasks` refits each task's
        part from, and a warm start for a fit on other rows (:func:`select_hyperparameters` keeps the folds'
        fits this way: a fraction of their size, which grows with the users' keys).
        """
        check_is_fitted(self, "coef_shared_")
        shared = copy.copy(self)
        shared.tasks_ = np.array([], dtype=object)
        shared.task_groups_ = np.zeros(0, dtype=np.int64)
        shared.coef_tasks_ = sp.csr_matrix((0, self.n_features_in_))
        shared.intercept_tasks_ = np.zeros(0)
        shared.task_weights_ = np.zeros(0)
        return shared

    def _penalty(self) -> tuple[float, float, float]:
        return float(self.alpha), float(self.mu), float(self.mu_group)

    # -------------------------------------------------------------- predict
    def _indices(self, labels: Any, known: Sequence[Any], n: int, what: str) -> np.ndarray:
        if labels is None:
            return np.full(n, -1, dtype=np.int64)
        arr = np.asarray(labels, dtype=object)
        if arr.shape != (n,):
            raise ValueError(f"{what} must have shape ({n},), got {arr.shape}")
        index = {k: i for i, k in enumerate(known)}
        return np.array([index.get(a, -1) for a in arr], dtype=np.int64)

    def decision_function(self, X: Any, tasks: Any = None, groups: Any = None) -> np.ndarray:
        """Scores f_t(x) (log-odds of the positive class).

        A task not seen in training (or ``tasks=None``) is scored by the
        shared part, plus its group's part when ``groups`` names a known group.
        """
        check_is_fitted(self, "coef_shared_")
        X = self._rows(X)
        n = X.shape[0]
        out = X @ self.coef_shared_ + self.intercept_shared_
        t = self._indices(tasks, self.tasks_, n, "tasks")
        g = self._indices(groups, self.groups_, n, "groups")
        g = np.where(t >= 0, self.task_groups_[np.maximum(t, 0)], g) if len(self.tasks_) else g
        for idx, coef, intercept in ((t, self.coef_tasks_, self.intercept_tasks_),
                                     (g, self.coef_groups_, self.intercept_groups_)):
            # One sparse product per task present: cost grows with the rows
            # and each task's support, never with rows x support.
            for k in np.unique(idx[idx >= 0]):
                rows = np.flatnonzero(idx == k)
                out[rows] += (X[rows] @ coef[k].T).toarray().ravel() + intercept[k]
        return out

    def predict_proba(self, X: Any, tasks: Any = None, groups: Any = None) -> np.ndarray:
        """Class probabilities, shape (n_samples, 2), columns in ``classes_`` order."""
        from scipy.special import expit

        p = expit(self.decision_function(X, tasks=tasks, groups=groups))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any, tasks: Any = None, groups: Any = None) -> np.ndarray:
        """The class with probability > 0.5."""
        scores = self.decision_function(X, tasks=tasks, groups=groups)
        return self.classes_[(scores > 0).astype(int)]

    # ----------------------------------------------------------- feedback
    def refit_task(self, X: Any, y: Any, task: Any, group: Any = None) -> MultiTaskLogisticRegression:
        """Refit one task's personal part with the shared and group parts fixed.

        ``X``, ``y`` are all of that task's labelled samples.  No other task's
        weights change.  A new task is added (in ``group``, if it names a
        known group).
        """
        check_is_fitted(self, "coef_shared_")
        X = self._rows(X)
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels")
        unknown = set(np.unique(y)) - set(self.classes_)
        if unknown:
            raise ValueError(f"y has labels not seen in fit: {sorted(unknown)!r}")
        y_pm = np.where(y == self.classes_[1], 1.0, -1.0)
        index = {t: i for i, t in enumerate(self.tasks_)}
        t = index.get(task, -1)
        if t < 0:
            gindex = {g: i for i, g in enumerate(self.groups_)}
            self.tasks_ = np.append(self.tasks_, np.array([task], dtype=self.tasks_.dtype
                                                           if np.asarray([task]).dtype.kind == self.tasks_.dtype.kind
                                                           else object))
            self.task_groups_ = np.append(self.task_groups_, gindex.get(group, -1))
            self.coef_tasks_ = sp.vstack([self.coef_tasks_, sp.csr_matrix((1, self.n_features_in_))], format="csr")
            self.intercept_tasks_ = np.append(self.intercept_tasks_, 0.0)
            self.task_weights_ = np.append(self.task_weights_, 1.0)
            t = len(self.tasks_) - 1
        cols, values, intercept, weight = self._fit_personal(X, y_pm, int(self.task_groups_[t]),
                                                             self.coef_tasks_[t], self.intercept_tasks_[t])
        self.coef_tasks_ = _replace_row(self.coef_tasks_, t, cols, values)
        self.intercept_tasks_[t] = intercept
        self.task_weights_[t] = weight
        return self

    def _fit_personal(self, X: sp.csr_matrix, y_pm: np.ndarray, g: int, old: sp.csr_matrix | None = None,
                      old_intercept: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One task's personal part fitted on its rows ``X`` (already through :meth:`_rows`), labels in
        {-1, +1}, with the shared part and group ``g``'s part (-1: none) held fixed, warm-started from the
        row ``old`` if given.  Returns (cols, values, intercept, weight); the estimator is not changed.
        """
        group_row = self.coef_groups_[g] if g >= 0 else None
        offset_b = self.intercept_shared_ + (self.intercept_groups_[g] if g >= 0 else 0.0)

        def offset(cols: np.ndarray) -> np.ndarray:  # w0 + u_g on the task's columns, no dense copy
            value = self.coef_shared_[cols]
            if group_row is not None and group_row.nnz:
                value = value + _lookup(group_row, np.zeros(len(cols), dtype=np.int64), cols)
            return value

        weight = float(task_weights(np.array([len(y_pm)]), self.task_weighting, self.weight_scale_)[0])
        cols, values, intercept, _ = fit_single_task(
            X, y_pm, offset, offset_b, weight=weight, alpha=float(self.alpha), mu=float(self.mu),
            init_cols=None if old is None else old.indices.astype(np.int64),
            init_values=None if old is None else old.data, init_intercept=old_intercept,
            tol=float(self.tol), max_iter=int(self.max_iter))
        return cols, values, intercept, weight

    # ------------------------------------------------------------ persist
    def to_weights(self) -> ModelWeights:
        """The fitted parameters as :class:`~spamtl.model.weights.ModelWeights` (task/group names as str)."""
        check_is_fitted(self, "coef_shared_")
        nz = np.flatnonzero(self.coef_shared_)
        shared = SparsePart(nz.astype(np.int64), self.coef_shared_[nz], self.intercept_shared_)

        def rows(coef: sp.csr_matrix, intercepts: np.ndarray, labels: np.ndarray) -> dict[str, SparsePart]:
            return {str(label): SparsePart(coef[i].indices.astype(np.int64), coef[i].data.copy(),
                                           float(intercepts[i])) for i, label in enumerate(labels)}

        groups = [str(g) for g in self.groups_]
        return ModelWeights(
            n_features=self.n_features_in_,
            shared=shared,
            groups=rows(self.coef_groups_, self.intercept_groups_, self.groups_),
            tasks=rows(self.coef_tasks_, self.intercept_tasks_, self.tasks_),
            task_groups={str(t): (groups[g] if g >= 0 else None) for t, g in zip(self.tasks_, self.task_groups_)},
            idf=getattr(self, "idf_", None),
            params={**self.get_params(), "classes": [_plain(c) for c in self.classes_],
                    "task_kind": "int" if np.asarray(self.tasks_).dtype.kind in "iu" else "str",
                    "weight_scale": self.weight_scale_, "n_iter": self.n_iter_,
                    "gradient_norm": self.gradient_norm_, "solver_used": getattr(self, "solver_", "joint"),
                    "fitted_penalty": list(self.penalty_),
                    "task_weights": {str(t): float(w) for t, w in zip(self.tasks_, self.task_weights_)}},
        )

    @classmethod
    def from_weights(cls, weights: ModelWeights) -> MultiTaskLogisticRegression:
        """Rebuild a fitted estimator from :class:`~spamtl.model.weights.ModelWeights`."""
        p = dict(weights.params)
        names = cls._get_param_names()
        est = cls(**{k: p[k] for k in names if k in p})
        d = weights.n_features
        task_names = sorted(weights.tasks)
        group_names = sorted(weights.groups)
        cast = int if p.get("task_kind") == "int" else str
        est.classes_ = np.array(p.get("classes", [0, 1]))
        est.solver_ = p.get("solver_used", "joint")
        est.penalty_ = tuple(float(v) for v in p.get("fitted_penalty", est._penalty()))
        est.n_features_in_ = d
        est.tasks_ = np.array([cast(t) for t in task_names])
        est.groups_ = np.array(group_names, dtype=object)
        gindex = {g: i for i, g in enumerate(group_names)}
        est.task_groups_ = np.array([gindex.get(weights.task_groups.get(t) or "", -1) for t in task_names],
                                    dtype=np.int64)
        est.coef_shared_ = np.zeros(d)
        est.coef_shared_[weights.shared.cols] = weights.shared.values
        est.intercept_shared_ = weights.shared.intercept

        def stack(parts: list[SparsePart]) -> tuple[sp.csr_matrix, np.ndarray]:
            offsets = np.cumsum([0] + [len(q.cols) for q in parts])
            cols = np.concatenate([q.cols for q in parts]) if parts else np.zeros(0, np.int64)
            vals = np.concatenate([q.values for q in parts]) if parts else np.zeros(0)
            return _sparse_rows(offsets, cols, vals, d), np.array([q.intercept for q in parts], dtype=np.float64)

        est.coef_tasks_, est.intercept_tasks_ = stack([weights.tasks[t] for t in task_names])
        est.coef_groups_, est.intercept_groups_ = stack([weights.groups[g] for g in group_names])
        tw = p.get("task_weights", {})
        est.task_weights_ = np.array([tw.get(t, 1.0) for t in task_names], dtype=np.float64)
        est.weight_scale_ = float(p.get("weight_scale", 1.0))
        est.n_iter_ = int(p.get("n_iter", 0))
        est.gradient_norm_ = float(p.get("gradient_norm", 0.0))
        est.idf_ = weights.idf
        return est

    def save(self, file: Any) -> None:
        """Save to an ``.npz`` file (no pickle)."""
        self.to_weights().save(file)

    @classmethod
    def load(cls, file: Any) -> MultiTaskLogisticRegression:
        """Load a file written by :meth:`save` (never unpickles)."""
        return cls.from_weights(ModelWeights.load(file))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _lookup(M: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """M[rows[k], cols[k]] for each k, 0 where rows[k] < 0 (vectorised on CSR)."""
    out = np.zeros(len(cols))
    ok = rows >= 0
    if ok.any() and M.nnz:
        M = M.tocsr()
        M.sort_indices()
        d = M.shape[1]
        keys = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr)) * d + M.indices
        want = rows[ok] * d + cols[ok]
        pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        hit = keys[pos] == want
        vals = np.zeros(len(want))
        vals[hit] = M.data[pos[hit]]
        out[ok] = vals
    return out


def _replace_row(M: sp.csr_matrix, t: int, cols: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    """A copy of M with row t replaced; every other row's arrays are copied unchanged."""
    M = M.tocsr()
    lo, hi = M.indptr[t], M.indptr[t + 1]
    indices = np.concatenate([M.indices[:lo], cols.astype(M.indices.dtype), M.indices[hi:]])
    data = np.concatenate([M.data[:lo], values, M.data[hi:]])
    counts = np.diff(M.indptr).copy()
    counts[t] = len(cols)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((data, indices, indptr), shape=M.shape)


# ---------------------------------------------------------- model selection
@dataclass
class HyperparameterSearch:
    """Result of :func:`select_hyperparameters`."""

    alpha: float
    mu: float
    score: float
    """Mean over folds of the selection criterion (see ``scoring``) of the chosen setting; lower is better."""
    table: list[dict[str, float]] = field(default_factory=list)
    best_alpha: float = float("nan")
    best_mu: float = float("nan")
    """The setting with the lowest score (the choice under ``rule='min'``)."""
    oof_scores: np.ndarray | None = None
    """Out-of-fold decision scores of the chosen setting: each sample scored by the fit of the fold
    that held it out (NaN for samples no fold held out); what nightly training's gate and cutoffs use."""
    fold_models: dict[tuple[float, float], list[Any]] = field(default_factory=dict)
    """With ``keep_fold_models=True``: each (alpha, mu)'s fit of each fold, in the order of the splits,
    without the tasks' parts (:meth:`MultiTaskLogisticRegression.without_tasks`).  Nightly training refits
    every user's part from them instead of fitting the folds again, and starts its first final fit from
    their mean."""


SELECTION_RULES = ("one_se", "min")


def select_hyperparameters(X: Any, y: Any, tasks: Any, groups: Any = None, *,
                           alphas: Sequence[float] = (0.3, 1.0, 3.0),
                           mus: Sequence[float] = (10.0, 3.0, 1.0, 0.3, 0.1),
                           n_splits: int = 3, random_state: int = 0,
                           estimator: MultiTaskLogisticRegression | None = None,
                           cv: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
                           scoring: str = "log_loss", rule: str = "one_se",
                           executor: Executor | None = None, keep_fold_models: bool = False,
                           threads: int = 1, progress: Callable[[int], None] | None = None) -> HyperparameterSearch:
    """Choose alpha and mu by task-stratified K-fold cross-validation.

    Folds are stratified on (task, label), so every fold holds a share of
    every user's ham and spam.  Within a fold the grid is walked from strong
    to weak regularisation (large alpha, large mu first), each fit
    warm-started from the previous one with the projected solver (many
    users), which makes the whole search cost a few full fits; the joint
    solver fits each setting cold.  ``cv`` may give the (train, test) index pairs instead,
    e.g. one chronological split for a quick nightly search.  The folds are
    independent (:func:`fit_fold`): with an ``executor`` (e.g.
    :func:`spamtl.parallel.training_executor`) they run side by side, with
    the same results as in-process, and each fold's projected fit on ``threads`` threads (``fit``).
    ``progress`` is called with 1 as each fold's result is in (in this thread, in fold order).

    ``scoring='log_loss'`` (default) ranks by the held-out logistic loss
    averaged per task, then over tasks; ``'auc'`` by macro 1 - ROC AUC.  Near
    perfect separation, AUC differences between settings come down to a
    handful of misranked pairs and rank hyper-parameters by noise; the log
    loss, a proper scoring rule, uses every message's margin.  The table
    reports both.

    ``rule='one_se'`` (default) takes the most shared setting (largest mu,
    then largest alpha) whose log loss is within one standard error of the
    best one's; ``'min'`` takes the best.  The standard error is that of the
    paired, per-message difference to the best setting, weighted as the
    criterion weighs messages.  With a few dozen messages per user, settings
    that let users stray (small mu) often win a fold by chance and lose on
    new mail; the rule prefers sharing unless the data clearly ask for less
    (README, "Choosing mu").  It needs ``scoring='log_loss'``.

    Returns
    -------
    HyperparameterSearch
        The chosen (alpha, mu), its score, the best setting and the full table.
    """
    from sklearn.model_selection import StratifiedKFold

    X = sp.csr_matrix(check_array(X, accept_sparse="csr", dtype=np.float64))
    release_pages(X)
    y = np.asarray(y)
    tasks = np.asarray(tasks)
    garr = None if groups is None else np.asarray(groups, dtype=object)
    strata = np.char.add(np.char.add(tasks.astype(str), "\x00"), y.astype(str))
    _, strata_idx, strata_counts = np.unique(strata, return_inverse=True, return_counts=True)
    # Strata smaller than n_splits cannot be split; fold them into one bucket.
    strata_idx = np.where(strata_counts[strata_idx] >= n_splits, strata_idx, -1)
    base = estimator if estimator is not None else MultiTaskLogisticRegression()
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    alphas = sorted(alphas, reverse=True)
    mus = sorted(mus, reverse=True)
    if scoring not in ("log_loss", "auc"):
        raise ValueError(f"scoring must be 'log_loss' or 'auc', got {scoring!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if rule == "one_se" and scoring != "log_loss":
        raise ValueError("rule='one_se' needs scoring='log_loss' (AUC has no per-message terms)")
    grid = [(a, m) for a in alphas for m in mus]
    scores: dict[tuple[float, float], list[float]] = {g: [] for g in grid}
    aucs: dict[tuple[float, float], list[float]] = {g: [] for g in grid}
    # Per held-out message, over all folds: its weight in the criterion and its loss under each setting.
    message_weights: list[np.ndarray] = []
    message_losses: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
    splits = list(cv) if cv is not None else list(splitter.split(X, strata_idx))
    oof = {g: np.full(len(y), np.nan) for g in grid}
    executor = executor if executor is not None else SerialExecutor()
    payload = share(executor, (X, y, tasks, garr))
    try:
        futures, reported = [], []
        for train, test in splits:
            futures.append(executor.submit(fit_fold, payload, train, test, clone(base), grid, keep_fold_models,
                                           threads))
            reported.append(progress is not None and futures[-1].done())  # in-process: it ran already
            if progress is not None and reported[-1]:
                progress(1)
        fold_results = []
        for future, was_reported in zip(futures, reported):
            fold_results.append(future.result())
            if progress is not None and not was_reported:
                progress(1)
    finally:
        if isinstance(payload, Inherited):
            release(payload)
    for (_, test), (positive_class, fold_scores, _) in zip(splits, fold_results):
        fold_weights = _macro_weights(tasks[test])
        for (a, m), p in zip(grid, fold_scores):
            oof[(a, m)][test] = p
            positive = y[test] == positive_class
            losses = np.logaddexp(0.0, -np.where(positive, 1.0, -1.0) * p)
            message_losses[(a, m)].append(losses)
            aucs[(a, m)].append(macro_auc_error(positive, p, tasks[test]))
            scores[(a, m)].append(float(fold_weights @ losses) if scoring == "log_loss" else aucs[(a, m)][-1])
        message_weights.append(fold_weights / len(splits))
    weights = np.concatenate(message_weights) if message_weights else np.zeros(0)
    mean = {g: float(np.nanmean(v)) for g, v in scores.items()}
    best = min(grid, key=lambda g: (mean[g], -g[0], -g[1]))
    best_losses = np.concatenate(message_losses[best])
    table = []
    for g in grid:
        diff = np.concatenate(message_losses[g]) - best_losses
        gap = float(weights @ diff)
        se = float(np.sqrt(np.sum(weights**2 * (diff - gap) ** 2)))
        table.append({"alpha": g[0], "mu": g[1], "score": mean[g], "auc_error_pct": float(np.nanmean(aucs[g])),
                      "gap_to_best": gap, "gap_se": se})
    chosen = best
    if rule == "one_se":
        # Most shared first: largest mu, then the strongest regularisation.
        eligible = [r for r in table if r["gap_to_best"] <= r["gap_se"]]
        pick = max(eligible, key=lambda r: (r["mu"], r["alpha"]))
        chosen = (pick["alpha"], pick["mu"])
    return HyperparameterSearch(alpha=chosen[0], mu=chosen[1], score=mean[chosen], table=table,
                                best_alpha=best[0], best_mu=best[1], oof_scores=oof[chosen],
                                fold_models={g: [models[k] for _, _, models in fold_results]
                                             for k, g in enumerate(grid) if keep_fold_models})


def fit_fold(payload: Any, train: np.ndarray, test: np.ndarray, estimator: MultiTaskLogisticRegression,
             grid: Sequence[tuple[float, float]],
             keep_models: bool = False,
             threads: int = 1) -> tuple[Any, list[np.ndarray], list[MultiTaskLogisticRegression]]:
    """One cross-validation fold: fit on ``train`` rows for each (alpha, mu) of ``grid`` in order, each
    fit warm-started from the previous one where the solver allows (the projected one; see ``warm_start``),
    and score the ``test`` rows.

    ``payload`` is ``(X, y, tasks, groups)`` (or a :mod:`spamtl.parallel` handle to it): the folds of a
    search are independent, so :func:`select_hyperparameters` runs them on an executor.  Returns the
    positive class, the test rows' decision scores under each setting, and (``keep_models``) each setting's fit
    without its tasks' parts (:meth:`MultiTaskLogisticRegression.without_tasks`; else an empty list).
    ``threads``: see ``fit`` (the same results).
    """

    X, y, tasks, garr = resolve(payload)
    est = clone(estimator).set_params(warm_start=True)  # never a fit another fold left behind (a leak)
    Xtr, ytr, ttr = X[train], y[train], tasks[train]
    gtr = None if garr is None else garr[train]
    Xte, tte = X[test], tasks[test]
    release_pages(X)  # the fold's rows are copies
    gte = None if garr is None else garr[test]
    scores, models = [], []
    for a, m in grid:
        est.set_params(alpha=a, mu=m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(Xtr, ytr, tasks=ttr, groups=gtr, threads=threads)
        scores.append(est.decision_function(Xte, tasks=tte, groups=gte))
        if keep_models:
            models.append(est.without_tasks().set_params(warm_start=False))
    return est.classes_[1], scores, models


def cross_fit_fold(payload: Any, fit_rows: np.ndarray, train: np.ndarray, test: np.ndarray,
                   estimator: MultiTaskLogisticRegression, fitted: bool = False) -> np.ndarray:
    """One cross-fitting fold for many users: ``estimator`` fitted on ``fit_rows`` (a sample of the users'
    ``train`` rows), then every user's ``test`` rows scored by :func:`score_refitted_tasks` (their personal
    part refitted on their own ``train`` rows).  ``fitted=True``: ``estimator`` already is that fit (the
    search's fold, :attr:`HyperparameterSearch.fold_models`), so only the users' parts are refitted.
    ``payload`` as for :func:`fit_fold`; returns the scores of ``test`` in order."""
    X, y, tasks, garr = resolve(payload)
    with _one_blas_thread():  # the refits' batched Newton steps: faster so, and the trainer's threads beside
        est = estimator
        if not fitted:
            est = clone(estimator).set_params(warm_start=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                Xfit = X[fit_rows]
                release_pages(X)
                est.fit(Xfit, y[fit_rows], tasks=tasks[fit_rows], groups=None if garr is None else garr[fit_rows])
                del Xfit
        scores = score_refitted_tasks(payload, est, train, test)
    del est
    return_free_memory()  # a worker is done long before the final fit beside it
    return scores


def score_refitted_tasks(payload: Any, estimator: MultiTaskLogisticRegression, train: np.ndarray,
                         test: np.ndarray, chunk_rows: int = REFIT_CHUNK_ROWS) -> np.ndarray:
    """Scores of the ``test`` rows, each task's personal part fitted on that task's ``train`` rows with
    ``estimator``'s shared and group parts (and IDF) held fixed; ``estimator`` is not changed.

    Given the shared parts, tasks are independent problems (:meth:`MultiTaskLogisticRegression.refit_task`
    solves one), so a model fitted on some tasks scores any other task's held-out rows this way: nightly
    training's cross-fitting beyond ``mu_search_users`` users (``spamtl.services.training``).  The tasks are
    solved together, a chunk of about ``chunk_rows`` training rows at a time (memory), by
    :class:`spamtl.model.projected.PersonalParts` (batched dual Newton steps; the same solutions as one
    ``refit_task`` per task).  A task with no ``train`` rows is scored by the shared and group parts.
    ``payload`` is ``(X, y, tasks, groups)`` or a :mod:`spamtl.parallel` handle to it, as for :func:`fit_fold`.
    """
    X, y, tasks, garr = resolve(payload)
    est = estimator
    check_is_fitted(est, "coef_shared_")
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
                                                      None if garr is None else garr[part])
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


def _personal_parts(est: MultiTaskLogisticRegression, X: Any, y: np.ndarray, tidx: np.ndarray, counts: np.ndarray,
                    groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The personal parts of tasks 0..len(counts)-1 fitted on their rows ``X`` (raw, as given to fit), ``est``'s
    shared and group parts fixed: (key offsets per task, key columns, v per key, c per task)."""
    T = len(counts)
    offsets = est.decision_function(X, tasks=None, groups=groups)  # the shared and group parts' scores
    layout = TaskLayout.build(est._rows(X), tidx, T, np.full(T, -1, np.int64), 0)
    weight = task_weights(counts, est.task_weighting, est.weight_scale_)[tidx]
    parts = PersonalParts(layout.Xk, layout.task_offsets, np.where(y == est.classes_[1], 1.0, -1.0), weight, tidx,
                          alpha=float(est.alpha), mu=float(est.mu))
    tol = INNER_TOL * float(est.tol)
    parts.solve(offsets, tol * float(weight.mean()), tol, int(est.max_iter))
    v, c = parts.parts()
    return layout.task_offsets, layout.key_cols.astype(np.int64), v, c


def _rows_by_task(tasks: np.ndarray, rows: np.ndarray) -> dict[Any, np.ndarray]:
    """``rows`` split by task, each part in the order given."""
    return {name: rows[part] for name, part in rows_by_task(tasks[rows])}


def _macro_weights(tasks: np.ndarray) -> np.ndarray:
    """Per-sample weights that make a weighted sum the mean over tasks of each task's mean."""
    _, index, counts = np.unique(tasks, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[index])


def _macro_log_loss(positive: np.ndarray, scores: np.ndarray, tasks: np.ndarray) -> float:
    """Mean over tasks of the mean logistic loss of the task's samples."""
    losses = np.logaddexp(0.0, -np.where(positive, 1.0, -1.0) * scores)
    return float(_macro_weights(tasks) @ losses)
