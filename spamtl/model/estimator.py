"""MultiTaskLogisticRegression: a scikit-learn estimator with shared, group and per-task parts.

The mathematics live in :mod:`spamtl.model.loss`; this module validates input and packs parameters.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted

from spamtl.features import IdfWeights
from spamtl.model import DEFAULT_MAX_ITER, DEFAULT_TOL
from spamtl.model.loss import TASK_WEIGHTINGS, ConvergenceWarning, task_weights
from spamtl.model.refit import refit_user
from spamtl.model.solvers import SOLVERS, Problem, choose_solver
from spamtl.model.weights import ModelWeights, SparsePart, trained_group
from spamtl.parallel import return_free_memory
from spamtl.rowfiles import release_pages

__all__ = ["ConvergenceWarning", "MultiTaskLogisticRegression", "task_weights"]


def _sparse_rows(offsets: np.ndarray, cols: np.ndarray, values: np.ndarray, n_features: int) -> sp.csr_matrix:
    return sp.csr_matrix((values.astype(np.float64, copy=False), cols.astype(np.int64), offsets.astype(np.int64)),
                         shape=(len(offsets) - 1, n_features))


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
    max_iter : int, default=500
        L-BFGS iterations (``spamtl.model.DEFAULT_MAX_ITER``).
    tol : float, default=1e-5
        (``spamtl.model.DEFAULT_TOL``) Stop when the max-norm of the (preconditioned, see
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
        in the transformed rows.  spamtl's training always sets it; leave it
        off for general real-valued features.
    solver : {'auto', 'joint', 'projected'}, default='auto'
        How J is minimised; every solver finds the same optimum (to ``tol``).  ``'joint'``: one L-BFGS over
        all parameters.  ``'projected'``: L-BFGS over the shared and group parts only, each task's part
        solved exactly given them (:mod:`spamtl.model.projected`): the optimiser's memory is that of the
        vocabulary, not of users x vocabulary, and the rows are held a chunk of users at a time, in a
        scratch directory under ``$TMPDIR`` beyond ``chunk_rows`` rows (removed when the fit ends).
        ``'auto'``: :func:`spamtl.model.solvers.choose_solver` (projected for many tasks, or many of few rows).
    solver_options : dict, optional
        The solver's work and memory sizes, which do not change the optimum (:class:`spamtl.model.solvers.Problem`).

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
    :mod:`spamtl.model.loss`), or for many tasks (:mod:`spamtl.model.solvers`) by
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
                 task_weighting: str = "sample", max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
                 warm_start: bool = False, idf: bool = False, solver: str = "auto",
                 solver_options: dict[str, Any] | None = None) -> None:
        self.alpha = alpha
        self.mu = mu
        self.mu_group = mu_group
        self.task_weighting = task_weighting
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.idf = idf
        self.solver = solver
        self.solver_options = solver_options

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.solver != "auto" and self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {('auto', *SOLVERS)}, got {self.solver!r}")
        for name in ("alpha", "mu", "mu_group", "tol"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {TASK_WEIGHTINGS}, got {self.task_weighting!r}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter!r}")

    def fit(self, X: Any, y: Any, tasks: Any = None, groups: Any = None, sample_weight: Any = None,
            threads: int = 1) -> MultiTaskLogisticRegression:
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
        threads : int, default 1
            The projected solver's chunks of users are built and evaluated by this many threads: the same
            fit, bit for bit.  The joint solver ignores it.

        Returns
        -------
        self
        """
        problem, fitted = self._problem(X, y, tasks, groups, sample_weight, threads)
        del X  # the problem holds the rows until the solver has its own structures of them
        n, d, T = len(problem.y), fitted["n_features_in_"], len(fitted["tasks_"])
        solver = choose_solver(self.solver, T, n)
        initial = functools.partial(self._initial_theta, task_labels=fitted["tasks_"], group_labels=fitted["groups_"],
                                    y_pm=problem.y, s=problem.sample_weight, solver=solver)
        solution = SOLVERS[solver](problem, initial)
        del problem
        return_free_memory()
        p = solution.parts
        for name, value in fitted.items():
            setattr(self, name, value)
        self.coef_shared_ = np.zeros(d)
        self.coef_shared_[solution.shared_cols] = p["w0"]
        self.intercept_shared_ = float(p["b0"][0])
        self.coef_groups_ = _sparse_rows(solution.group_offsets, solution.group_cols, p["u"], d)
        self.intercept_groups_ = p["cg"].copy()
        self.coef_tasks_ = _sparse_rows(solution.task_offsets, solution.key_cols, p["v"], d)
        self.intercept_tasks_ = p["c"].copy()
        self.weight_scale_ = n / T
        self.n_iter_ = solution.n_iter
        self.gradient_norm_ = solution.gradient_norm
        self.solver_ = solver
        self.penalty_ = self._penalty()
        return self

    def _problem(self, X: Any, y: Any, tasks: Any, groups: Any, sample_weight: Any,
                 threads: int) -> tuple[Problem, dict[str, Any]]:
        """Validate ``fit``'s arguments into a solver :class:`~spamtl.model.solvers.Problem`, and the fitted
        attributes that follow from the data alone (set once the solver succeeded)."""
        self._check_params()
        X = sp.csr_matrix(check_array(X, accept_sparse="csr", dtype=np.float64))
        release_pages(X)  # rows mapped from files (spamtl.rowfiles): the finiteness check read them all
        n = X.shape[0]
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y must have shape ({n},), got {y.shape}")
        idf = IdfWeights.fit(X) if self.idf else None
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"y must contain exactly two classes, got {len(classes)}: {classes[:5]!r}")
        tasks_arr = np.zeros(n, dtype=np.int64) if tasks is None else np.asarray(tasks)
        if tasks_arr.shape != (n,):
            raise ValueError(f"tasks must have shape ({n},), got {tasks_arr.shape}")
        task_labels, tidx = np.unique(tasks_arr, return_inverse=True)
        tidx = tidx.astype(np.int64)
        T = len(task_labels)
        group_labels, task_group = self._task_groups(groups, tidx, T, n)
        omega = task_weights(np.bincount(tidx, minlength=T), self.task_weighting)
        s = omega[tidx]
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64)
            if sw.shape != (n,) or np.any(sw < 0) or not np.all(np.isfinite(sw)):
                raise ValueError("sample_weight must be finite, non-negative, of shape (n_samples,)")
            s = s * sw
        fitted = {"classes_": classes, "n_features_in_": X.shape[1], "tasks_": task_labels, "groups_": group_labels,
                  "task_groups_": task_group, "task_weights_": omega, "idf_": idf}
        problem = Problem(X, np.where(y == classes[1], 1.0, -1.0), s, tidx, task_group, len(group_labels),
                          float(self.alpha), float(self.mu), float(self.mu_group), float(self.tol),
                          int(self.max_iter), None if idf is None else idf.transform, int(threads),
                          dict(self.solver_options or {}))
        return problem, fitted

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

    def _initial_theta(self, objective: Any, *, task_labels: np.ndarray, group_labels: np.ndarray, y_pm: np.ndarray,
                       s: np.ndarray, solver: str) -> np.ndarray:
        """The solver's start: the class prior, or (``warm_start``) this fit's parameters where they apply."""
        layout = getattr(objective, "layout", objective)  # the projected objective has the layout's attributes
        theta = np.zeros(objective.n_params)
        sl = objective.slices
        pos = float(s[y_pm > 0].sum())
        neg = float(s[y_pm < 0].sum())
        theta[sl["b0"]] = np.log(max(pos, 1e-12) / max(neg, 1e-12))  # the class prior
        if not (self.warm_start and hasattr(self, "coef_shared_")):
            return theta
        if solver == "joint" and getattr(self, "penalty_", None) != self._penalty():
            # From another penalty's optimum the joint L-BFGS stops where it starts (its max-norm test sees
            # each user's part through that user's small share of the weight); the projected solver re-solves
            # every part at the new penalty.
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

        Every task scores with it as an unknown one; :func:`spamtl.model.refit.score_refitted_tasks` refits each
        task's part from it, and it warm-starts a fit on other rows (model selection keeps the folds' fits so).
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
    @staticmethod
    def _labels(labels: Any, n: int, what: str) -> np.ndarray:
        arr = np.full(n, None, dtype=object) if labels is None else np.asarray(labels, dtype=object)
        if arr.shape != (n,):
            raise ValueError(f"{what} must have shape ({n},), got {arr.shape}")
        return arr

    def _indices(self, labels: Any, known: Sequence[Any], n: int, what: str) -> np.ndarray:
        index = {k: i for i, k in enumerate(known)}
        return np.array([index.get(a, -1) for a in self._labels(labels, n, what)], dtype=np.int64)

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
        given = self._labels(groups, n, "groups")
        if tasks is not None:
            trained = {task: self.groups_[k] if k >= 0 else None for task, k in zip(self.tasks_, self.task_groups_)}
            given = [trained_group(a, b, trained) for a, b in zip(np.asarray(tasks, dtype=object), given)]
        g = self._indices(given, self.groups_, n, "groups")
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
    def refit_task(self, X: Any, y: Any, task: Any, group: Any = None,
                   sample_weight: Any = None) -> MultiTaskLogisticRegression:
        """Refit one task's personal part with the shared and group parts fixed (:func:`spamtl.model.refit.refit_user`).

        ``X``, ``y`` are all of that task's labelled samples; ``sample_weight`` multiplies the task's weight
        (feedback weighs a user's corrections above their imported labels).  The fit starts from the task's
        current part.  No other task's weights change.  A new task is added (in ``group``, if it names a
        known group).
        """
        check_is_fitted(self, "coef_shared_")
        X = sp.csr_matrix(check_array(X, accept_sparse="csr", dtype=np.float64))
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels")
        unknown = set(np.unique(y)) - set(self.classes_)
        if unknown:
            raise ValueError(f"y has labels not seen in fit: {sorted(unknown)!r}")
        t = self._task_index(task, group)
        part = refit_user(self._task_slice(t), self.tasks_[t], X, y == self.classes_[1],
                          None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64))
        self.coef_tasks_ = _replace_row(self.coef_tasks_, t, part.cols, part.values)
        self.intercept_tasks_[t] = part.intercept
        self.task_weights_[t] = float(task_weights(np.array([len(y)]), self.task_weighting, self.weight_scale_)[0])
        return self

    def _task_slice(self, t: int) -> ModelWeights:
        """Task ``t``'s slice of the fitted parts (shared, its group's, its own) with the fit's parameters."""
        task, g = self.tasks_[t], int(self.task_groups_[t])

        def row(coef: sp.csr_matrix, i: int, intercept: float) -> SparsePart:
            r = coef[i]
            r.sort_indices()
            return SparsePart(r.indices.astype(np.int64), r.data, float(intercept))

        nz = np.flatnonzero(self.coef_shared_)
        group = self.groups_[g] if g >= 0 else None
        return ModelWeights(
            n_features=self.n_features_in_, shared=SparsePart(nz, self.coef_shared_[nz], self.intercept_shared_),
            groups={group: row(self.coef_groups_, g, self.intercept_groups_[g])} if g >= 0 else {},
            tasks={task: row(self.coef_tasks_, t, self.intercept_tasks_[t])}, task_groups={task: group},
            params={**self.get_params(), "weight_scale": self.weight_scale_}, idf=getattr(self, "idf_", None))

    def _task_index(self, task: Any, group: Any) -> int:
        """``task``'s row in the fitted parts, added (in ``group`` if it names a known group) if new."""
        index = {t: i for i, t in enumerate(self.tasks_)}
        if task in index:
            return index[task]
        gindex = {g: i for i, g in enumerate(self.groups_)}
        new = np.asarray([task])
        self.tasks_ = np.append(self.tasks_, new if new.dtype.kind == self.tasks_.dtype.kind else new.astype(object))
        self.task_groups_ = np.append(self.task_groups_, gindex.get(group, -1))
        self.coef_tasks_ = sp.vstack([self.coef_tasks_, sp.csr_matrix((1, self.n_features_in_))], format="csr")
        self.intercept_tasks_ = np.append(self.intercept_tasks_, 0.0)
        self.task_weights_ = np.append(self.task_weights_, 1.0)
        return len(self.tasks_) - 1

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
