"""The solvers behind :meth:`spamtl.model.estimator.MultiTaskLogisticRegression.fit`, one interface.

A solver takes a validated :class:`Problem` and a function giving the starting point, minimises J
(:mod:`spamtl.model.loss`) and returns a :class:`Solution`: the parameter blocks and where they sit.  Every
solver finds the same optimum (to its tolerance):

- ``"joint"``: one L-BFGS over all parameters (:class:`spamtl.model.loss.MultiTaskLogisticLoss`);
- ``"projected"``: L-BFGS over the shared and group parts only, every task's part solved given them
  (:class:`spamtl.model.projected.ProjectedLoss`): the optimiser's memory is that of the vocabulary, not of
  users x vocabulary, and the rows are held a chunk of users at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from spamtl.model.loss import MultiTaskLogisticLoss, TaskLayout, minimize_lbfgs
from spamtl.model.projected import ProjectedLoss
from spamtl.parallel import return_free_memory
from spamtl.rowfiles import release_pages

__all__ = ["Problem", "Solution", "SOLVERS", "choose_solver", "PROJECTED_FROM_TASKS", "PROJECTED_SMALL_TASKS",
           "PROJECTED_TOL"]

PROJECTED_FROM_TASKS = 1000
"""``solver='auto'`` fits this many tasks or more by variable projection: the joint L-BFGS's memory grows with
users x vocabulary."""
PROJECTED_SMALL_TASKS = (20, 256)
"""... and from ``[0]`` tasks on when they have at most ``[1]`` rows on average, where it is also the faster
(benchmarks/README.md)."""
PROJECTED_TOL = 0.1
"""The projected solver stops at ``tol * PROJECTED_TOL``: its test sees only the shared part's gradient, and F is
flat where the users' parts absorb a change of the shared part, so it needs a tighter test to reach the joint
solver's optimum."""


@dataclass
class Problem:
    """A fit's validated data and settings.

    ``X`` (n_samples, n_features) is the rows as given; ``transform`` (the IDF weighting, or None) is applied
    to them before they enter the objective.  ``y`` is in {-1, +1}, ``sample_weight`` the s_i, ``task_index``
    each row's task 0..T-1 and ``task_group`` each task's group 0..G-1 or -1.  ``options`` are the solver's
    own knobs (memory and work sizes, not the optimum): the joint solver's ``numpy_above`` and
    ``history_bytes`` (:func:`spamtl.model.loss.minimize_lbfgs`), the projected solver's ``chunk_rows``,
    ``split_rows``, ``dual_max_rows``, ``batch_bytes`` and ``gram_users``
    (:class:`spamtl.model.projected.ProjectedLoss`).
    """

    X: sp.csr_matrix | None
    y: np.ndarray
    sample_weight: np.ndarray
    task_index: np.ndarray
    task_group: np.ndarray
    n_groups: int
    alpha: float
    mu: float
    mu_group: float
    tol: float
    max_iter: int
    transform: Callable[[sp.csr_matrix], sp.csr_matrix] | None = None
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def take_rows(self) -> sp.csr_matrix:
        """The rows, let go by the problem (the solver's own structures hold them from then on)."""
        X, self.X = self.X, None
        assert X is not None
        return X


@dataclass
class Solution:
    """The parameter blocks at the optimum (``parts``: w0 on ``shared_cols``, u on the group keys, b0, cg, v on
    the task keys, c per task) and where they sit, with the solver's iterations and gradient norm."""

    parts: dict[str, np.ndarray]
    shared_cols: np.ndarray
    group_offsets: np.ndarray
    group_cols: np.ndarray
    task_offsets: np.ndarray
    key_cols: np.ndarray
    n_iter: int
    gradient_norm: float


Start = Callable[[Any], np.ndarray]
"""Given the objective (with the layout attributes of :class:`~spamtl.model.loss.TaskLayout`), theta0."""


def _solution(layout: Any, parts: dict[str, np.ndarray], n_iter: int, grad_norm: float) -> Solution:
    return Solution(parts, layout.shared_cols, layout.group_offsets, layout.group_cols, layout.task_offsets,
                    layout.key_cols, n_iter, grad_norm)


def solve_joint(problem: Problem, start: Start) -> Solution:
    """One L-BFGS over every parameter of the compact parameterisation."""
    X = problem.take_rows()
    if problem.transform is not None:
        X, given = problem.transform(X), X
        release_pages(given)
    layout = TaskLayout.build(X, problem.task_index, len(problem.task_group), problem.task_group, problem.n_groups)
    release_pages(X)
    del X  # the layout holds the data now (its own key indices, the same values)
    objective = MultiTaskLogisticLoss(layout, problem.y, problem.sample_weight, problem.task_index,
                                      problem.task_group, alpha=problem.alpha, mu=problem.mu,
                                      mu_group=problem.mu_group)
    return_free_memory()  # the index building's temporaries, kept by malloc
    theta, n_iter, grad_norm = minimize_lbfgs(objective, start(objective), tol=problem.tol,
                                              max_iter=problem.max_iter, **problem.options)
    return _solution(layout, objective.unpack(theta), n_iter, grad_norm)


def solve_projected(problem: Problem, start: Start) -> Solution:
    """L-BFGS over the shared and group parts, every task's part solved given them (variable projection)."""
    with ProjectedLoss(problem.take_rows(), problem.y, problem.sample_weight, problem.task_index,
                       problem.task_group, alpha=problem.alpha, mu=problem.mu, mu_group=problem.mu_group,
                       tol=problem.tol * PROJECTED_TOL, max_iter=problem.max_iter, n_groups=problem.n_groups,
                       transform=problem.transform, threads=max(problem.threads, 1), **problem.options) as objective:
        return_free_memory()
        theta, n_iter, grad_norm = minimize_lbfgs(objective, start(objective), tol=problem.tol * PROJECTED_TOL,
                                                  max_iter=problem.max_iter, secant=True)
        parts = objective.unpack(theta)
        parts["v"], parts["c"] = objective.personal(theta)
    return _solution(objective, parts, n_iter, grad_norm)


SOLVERS: dict[str, Callable[[Problem, Start], Solution]] = {"joint": solve_joint, "projected": solve_projected}


def choose_solver(name: str, n_tasks: int, n_rows: int) -> str:
    """The solver ``name`` means for ``n_tasks`` tasks of ``n_rows`` rows in all: ``'auto'`` is projected from
    ``PROJECTED_FROM_TASKS`` tasks on, or from ``PROJECTED_SMALL_TASKS[0]`` tasks of few rows."""
    if name != "auto":
        return name
    few, mean_rows = PROJECTED_SMALL_TASKS
    many = n_tasks >= PROJECTED_FROM_TASKS or (n_tasks >= few and n_rows <= mean_rows * n_tasks)
    return "projected" if many else "joint"
