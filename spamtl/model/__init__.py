"""The multi-task model: numpy/scipy arrays in, fitted parts out (no store, CLI or settings).

Importing this package costs nothing: it only holds the solver defaults that :class:`spamtl.settings.Settings`
refers to; the estimator is :class:`spamtl.model.estimator.MultiTaskLogisticRegression`.
"""

DEFAULT_TOL = 1e-5
"""Stop when the max-norm of the preconditioned gradient of J / sum(weights) is below this."""
DEFAULT_MAX_ITER = 500
"""L-BFGS iterations at most."""
