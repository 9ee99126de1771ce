"""The multi-task model against its mathematics (DESIGN.md §2) and scikit-learn."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import check_grad
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from spamtl.model.estimator import MultiTaskLogisticRegression, task_weights
from spamtl.model.loss import MultiTaskLogisticLoss, TaskLayout
from spamtl.model.selection import select_hyperparameters

TASKS = np.array(["ann", "bob", "cat", "dan"])
GROUPS = {"ann": "north", "bob": "north", "cat": "south", "dan": None}


def make_problem(seed: int = 0, n_per_task: int = 40, d: int = 12, density: float = 0.4):
    """Tasks share a common direction and each adds its own twist."""
    rng = np.random.default_rng(seed)
    n = n_per_task * len(TASKS)
    X = sp.random(n, d, density=density, random_state=seed, format="csr")
    tasks = np.repeat(TASKS, n_per_task)
    common = rng.normal(size=d)
    own = {t: rng.normal(size=d) for t in TASKS}
    margin = X @ common + np.array([X[i] @ own[t] for i, t in enumerate(tasks)]).ravel()
    y = (margin + 0.3 * rng.normal(size=n) > np.median(margin)).astype(int)
    groups = np.array([GROUPS[t] for t in tasks], dtype=object)
    return X, y, tasks, groups


def augmented_design(X, tasks, groups, mu, mu_group):  # type: ignore[no-untyped-def]
    """The Evgeniou-Pontil feature map, with a constant column per task and group block."""
    blocks = [X]
    names = sorted({g for g in groups if g is not None})
    for g in names:
        m = (groups == g).astype(float)
        blocks += [sp.csr_matrix(X.multiply(m[:, None])) / np.sqrt(mu_group)]
    for t in np.unique(tasks):
        m = (tasks == t).astype(float)
        blocks += [sp.csr_matrix(X.multiply(m[:, None])) / np.sqrt(mu)]
    for g in names:
        blocks.append(sp.csr_matrix(((groups == g).astype(float) / np.sqrt(mu_group))[:, None]))
    for t in np.unique(tasks):
        blocks.append(sp.csr_matrix(((tasks == t).astype(float) / np.sqrt(mu))[:, None]))
    return sp.hstack(blocks).tocsr()


def fit(X, y, tasks, groups=None, **params):  # type: ignore[no-untyped-def]
    params.setdefault("tol", 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultiTaskLogisticRegression(**params).fit(X, y, tasks=tasks, groups=groups)


SOLVERS = {"joint": {"solver": "joint"}, "projected": {"solver": "projected"},
           "projected-some-users-primal": {"solver": "projected", "solver_options": {"dual_max_rows": 20}}}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("use_groups", [False, True], ids=["tasks", "tasks+groups"])
@pytest.mark.parametrize("weighting", ["sample", "task"])
@pytest.mark.parametrize(("alpha", "mu", "mu_group"), [(1.0, 1.0, 1.0), (0.3, 4.0, 0.5), (3.0, 0.2, 2.0)])
def test_equals_logistic_regression_on_augmented_design(solver, use_groups, weighting, alpha, mu, mu_group) -> None:  # type: ignore[no-untyped-def]
    """Every solver fits the Evgeniou-Pontil design's L2 logistic regression (DESIGN.md §2, property 2)."""
    X, y, tasks, groups = make_problem(n_per_task=30 + 10 * (weighting == "task"))
    tasks = tasks.copy()
    tasks[:15] = "dan"  # unequal task sizes make the weighting matter (ann 15 fewer rows, dan 15 more)
    groups = groups.copy()
    groups[:15] = GROUPS["dan"]
    g = groups if use_groups else np.full(len(y), None, dtype=object)
    est = fit(X, y, tasks, g if use_groups else None, alpha=alpha, mu=mu, mu_group=mu_group,
              task_weighting=weighting, **SOLVERS[solver])
    assert est.solver_ == SOLVERS[solver]["solver"]
    Z = augmented_design(X, tasks, g, mu, mu_group)
    counts = dict(zip(*np.unique(tasks, return_counts=True)))
    omega = task_weights(np.array([counts[t] for t in sorted(counts)]), weighting)
    sw = dict(zip(sorted(counts), omega))
    lr = LogisticRegression(C=1.0 / alpha, tol=1e-12, max_iter=20_000)
    lr.fit(Z, y, sample_weight=np.array([sw[t] for t in tasks]))
    np.testing.assert_allclose(est.decision_function(X, tasks=tasks), lr.decision_function(Z), atol=1e-4)
    d = X.shape[1]
    np.testing.assert_allclose(est.coef_shared_, lr.coef_[0, :d], atol=1e-4)
    np.testing.assert_allclose(est.intercept_shared_, lr.intercept_[0], atol=1e-4)
    # v_t in the model is theta_t / sqrt(mu) in the augmented design.
    n_groups = len(est.groups_)
    for i in range(len(est.tasks_)):
        block = lr.coef_[0, d * (1 + n_groups + i): d * (2 + n_groups + i)] / np.sqrt(mu)
        np.testing.assert_allclose(est.coef_tasks_[i].toarray().ravel(), block, atol=1e-4)


def test_gradient_matches_finite_differences() -> None:
    X, y, tasks, groups = make_problem(d=6, n_per_task=10)
    _, tidx = np.unique(tasks, return_inverse=True)
    names = sorted({g for g in groups if g is not None})
    task_group = np.array([names.index(GROUPS[t]) if GROUPS[t] else -1 for t in TASKS])
    layout = TaskLayout.build(sp.csr_matrix(X), tidx, len(TASKS), task_group, len(names))
    rng = np.random.default_rng(1)
    obj = MultiTaskLogisticLoss(layout, np.where(y == 1, 1.0, -1.0), rng.uniform(0.5, 2, len(y)), tidx,
                                task_group, alpha=0.7, mu=2.5, mu_group=0.4)
    theta = rng.normal(size=obj.n_params)
    err = check_grad(lambda t: obj.loss_gradient(t)[0], lambda t: obj.loss_gradient(t)[1], theta)
    assert err < 1e-5 * max(1.0, np.linalg.norm(obj.loss_gradient(theta)[1]))


@pytest.mark.parametrize("weighting", ["sample", "task"])
def test_gradient_norm_at_optimum_is_checked(weighting: str) -> None:
    X, y, tasks, groups = make_problem()
    est = MultiTaskLogisticRegression(tol=1e-7, task_weighting=weighting).fit(X, y, tasks=tasks, groups=groups)
    assert est.gradient_norm_ < 1e-7
    # An iteration budget that is too small is reported, not hidden.
    with pytest.warns(UserWarning, match="gradient norm"):
        MultiTaskLogisticRegression(max_iter=2).fit(X, y, tasks=tasks)


def test_huge_mu_is_the_pooled_model() -> None:
    X, y, tasks, _ = make_problem()
    est = fit(X, y, tasks, alpha=1.0, mu=1e7)
    pooled = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(est.coef_shared_, pooled.coef_[0], atol=1e-4)
    np.testing.assert_allclose(est.decision_function(X, tasks=tasks), pooled.decision_function(X), atol=1e-4)
    assert abs(est.coef_tasks_).max() < 1e-4


def test_tiny_mu_is_independent_per_task_models() -> None:
    """mu -> 0 with the per-task penalty alpha*mu held at 1: w0 -> 0 and each task fits alone.

    The reference is scikit-learn on the block-diagonal design [x in block t |
    one-hot t] (C = 1): per-task weights that share nothing but the free bias
    b0, exactly the limit of the objective.  Truly separate per-task
    LogisticRegressions (own free intercepts) agree closely too.
    """
    X, y, tasks, _ = make_problem()
    mu = 1e-6
    alpha = 1.0 / mu
    est = fit(X, y, tasks, alpha=alpha, mu=mu)
    # Converged, not stopped by max_iter: before the penalty-aware preconditioning it ran all
    # 1000 iterations and ended with a gradient norm near 2e-3 (1e-7 is the float64 floor here).
    assert est.gradient_norm_ <= 1e-7 and est.n_iter_ < est.max_iter
    blocks = [sp.csr_matrix(X.multiply((tasks == t).astype(float)[:, None])) for t in TASKS]
    blocks += [sp.csr_matrix((tasks == t).astype(float)[:, None]) for t in TASKS]
    Z = sp.hstack(blocks).tocsr()
    independent = LogisticRegression(C=1.0, tol=1e-12, max_iter=20_000).fit(Z, y)
    scores = est.decision_function(X, tasks=tasks)
    np.testing.assert_allclose(scores, independent.decision_function(Z), atol=1e-3)
    assert np.abs(est.coef_shared_).max() < 1e-4
    for t in TASKS:
        m = tasks == t
        alone = LogisticRegression(C=1.0, tol=1e-12, max_iter=20_000).fit(X[m], y[m])
        assert np.corrcoef(alone.decision_function(X[m]), scores[m])[0, 1] > 0.99


def test_cold_start_uses_shared_and_group_parts() -> None:
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    shared = X @ est.coef_shared_ + est.intercept_shared_
    np.testing.assert_allclose(est.decision_function(X, tasks=np.full(len(y), "newcomer")), shared)
    np.testing.assert_allclose(est.decision_function(X), shared)
    g = list(est.groups_).index("north")
    with_group = shared + X @ est.coef_groups_[g].toarray().ravel() + est.intercept_groups_[g]
    np.testing.assert_allclose(
        est.decision_function(X, tasks=np.full(len(y), "newcomer"), groups=np.full(len(y), "north")), with_group)


def test_refit_task_touches_no_other_task() -> None:
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    before = {t: (est.coef_tasks_[i].toarray().copy(), est.intercept_tasks_[i]) for i, t in enumerate(est.tasks_)}
    shared = est.coef_shared_.copy()
    others = tasks != "bob"
    scores_before = est.decision_function(X[others], tasks=tasks[others])
    m = tasks == "bob"
    y_new = y.copy()
    y_new[np.flatnonzero(m)[:5]] = 1 - y_new[np.flatnonzero(m)[:5]]  # bob changes his mind
    est.refit_task(X[m], y_new[m], "bob")
    for i, t in enumerate(est.tasks_):
        if t != "bob":
            np.testing.assert_array_equal(est.coef_tasks_[i].toarray(), before[t][0])
            assert est.intercept_tasks_[i] == before[t][1]
    np.testing.assert_array_equal(est.coef_shared_, shared)
    np.testing.assert_array_equal(est.decision_function(X[others], tasks=tasks[others]), scores_before)
    assert not np.allclose(est.coef_tasks_[list(est.tasks_).index("bob")].toarray(), before["bob"][0])


def test_refit_task_equals_joint_fit_with_shared_part_fixed() -> None:
    """Refitting bob on unchanged data from the joint optimum stays at the optimum."""
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    i = list(est.tasks_).index("bob")
    v, c = est.coef_tasks_[i].toarray().copy(), est.intercept_tasks_[i]
    m = tasks == "bob"
    est.refit_task(X[m], y[m], "bob")
    np.testing.assert_allclose(est.coef_tasks_[i].toarray(), v, atol=1e-5)
    assert abs(est.intercept_tasks_[i] - c) < 1e-5


def test_refit_new_task_adds_it() -> None:
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    m = tasks == "ann"
    est.refit_task(X[m], 1 - y[m], "evelyn", group="south")  # a longer name than any fitted task's
    assert "evelyn" in list(est.tasks_) and est.coef_tasks_[list(est.tasks_).index("evelyn")].nnz
    eve = est.decision_function(X[m], tasks=np.full(m.sum(), "evelyn"))
    ann = est.decision_function(X[m], tasks=tasks[m])
    assert np.corrcoef(eve, ann)[0, 1] < 0.5  # eve learned the opposite of ann


def test_save_load_round_trip_without_pickle() -> None:
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    buf = io.BytesIO()
    est.save(buf)
    buf.seek(0)
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:  # would raise if anything were pickled
        assert "shared" in z.files
    loaded = MultiTaskLogisticRegression.load(buf)
    mixed = tasks.copy()
    mixed[::7] = "stranger"
    np.testing.assert_array_equal(loaded.decision_function(X, tasks=mixed), est.decision_function(X, tasks=mixed))
    assert loaded.get_params() == est.get_params()
    # The numpy-only scorer used by `spamtl classify` gives the same numbers.
    from spamtl.features import FeatureRow

    weights = est.to_weights()
    Xc = sp.csr_matrix(X)
    for i in range(0, len(y), 17):
        row = FeatureRow(Xc[i].indices.astype(np.int32), Xc[i].data.astype(np.float32))
        expected = est.decision_function(sp.csr_matrix((row.values.astype(float), row.indices, [0, len(row.indices)]),
                                                       shape=(1, X.shape[1])), tasks=[tasks[i]])
        np.testing.assert_allclose(weights.decision([row], tasks[i]), expected, rtol=1e-12)


def test_integer_task_labels_survive_save_load() -> None:
    X, y, tasks, _ = make_problem()
    ints = np.unique(tasks, return_inverse=True)[1] + 10
    est = fit(X, y, ints)
    buf = io.BytesIO()
    est.save(buf)
    buf.seek(0)
    loaded = MultiTaskLogisticRegression.load(buf)
    np.testing.assert_array_equal(loaded.tasks_, est.tasks_)
    np.testing.assert_array_equal(loaded.decision_function(X, tasks=ints), est.decision_function(X, tasks=ints))


def test_row_and_task_order_do_not_matter() -> None:
    X, y, tasks, groups = make_problem()
    est = fit(X, y, tasks, groups)
    perm = np.random.default_rng(3).permutation(len(y))
    renamed = {"ann": "zed", "bob": "amy", "cat": "kim", "dan": "bea"}  # reverses the sorted task order
    t2 = np.array([renamed[t] for t in tasks[perm]])
    est2 = fit(X[perm], y[perm], t2, groups[perm])
    np.testing.assert_allclose(est2.decision_function(X[perm], tasks=t2),
                               est.decision_function(X, tasks=tasks)[perm], atol=1e-6)


def test_warm_start_reaches_the_same_optimum_faster() -> None:
    """The nightly case: yesterday's model (same penalty, fewer labels) warm-starts today's fit."""
    X, y, tasks, groups = make_problem(n_per_task=80)
    cold = fit(X, y, tasks, groups, mu=1.0)
    yesterday = np.arange(len(y)) % 80 < 70  # each task's last 10 rows are new
    warm = fit(X[yesterday], y[yesterday], tasks[yesterday], groups[yesterday], mu=1.0)
    warm.set_params(warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm.fit(X, y, tasks=tasks, groups=groups)
    np.testing.assert_allclose(warm.decision_function(X, tasks=tasks), cold.decision_function(X, tasks=tasks),
                               atol=1e-5)
    assert warm.n_iter_ < cold.n_iter_


def test_sklearn_conventions() -> None:
    X, y, tasks, _ = make_problem()
    est = MultiTaskLogisticRegression(alpha=2.0, mu=0.5)
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert est.fit(X, y, tasks=tasks) is est
    assert clone(est).get_params() == est.get_params()
    proba = est.predict_proba(X, tasks=tasks)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(est.predict(X, tasks=tasks), est.classes_[(proba[:, 1] > 0.5).astype(int)])
    labels = np.where(y == 1, "spam", "ham")
    est_str = clone(est).fit(X.toarray(), labels, tasks=tasks)  # dense input and string labels work too
    assert list(est_str.classes_) == ["ham", "spam"]
    assert set(est_str.predict(X, tasks=tasks)) <= {"ham", "spam"}


@pytest.mark.parametrize(
    ("params", "message"),
    [({"alpha": 0.0}, "alpha"), ({"mu": -1.0}, "mu"), ({"task_weighting": "bogus"}, "task_weighting"),
     ({"max_iter": 0}, "max_iter")],
    ids=["alpha", "mu", "weighting", "max_iter"],
)
def test_bad_parameters_raise_value_error(params: dict[str, object], message: str) -> None:
    X, y, tasks, _ = make_problem()
    with pytest.raises(ValueError, match=message):
        MultiTaskLogisticRegression(**params).fit(X, y, tasks=tasks)  # type: ignore[arg-type]


def test_bad_inputs_raise_value_error() -> None:
    X, y, tasks, groups = make_problem()
    with pytest.raises(ValueError, match="two classes"):
        MultiTaskLogisticRegression().fit(X, np.zeros(len(y)), tasks=tasks)
    with pytest.raises(ValueError, match="tasks must have shape"):
        MultiTaskLogisticRegression().fit(X, y, tasks=tasks[:-1])
    bad_groups = groups.copy()
    bad_groups[0] = "south"  # ann is in north everywhere else
    with pytest.raises(ValueError, match="constant within each task"):
        MultiTaskLogisticRegression().fit(X, y, tasks=tasks, groups=bad_groups)
    est = fit(X, y, tasks)
    with pytest.raises(ValueError, match="features"):
        est.decision_function(X[:, :-1], tasks=tasks)


def test_a_task_with_one_class_still_fits() -> None:
    X, y, tasks, _ = make_problem()
    y = y.copy()
    y[tasks == "dan"] = 1
    est = fit(X, y, tasks)
    assert est.gradient_norm_ < 1e-6
    assert est.intercept_tasks_[list(est.tasks_).index("dan")] > 0


def test_select_hyperparameters_prefers_sharing_when_tasks_agree() -> None:
    rng = np.random.default_rng(0)
    d, n = 30, 240
    X = sp.random(n, d, density=0.3, random_state=0, format="csr")
    w = rng.normal(size=d)
    y = (X @ w + 0.1 * rng.normal(size=n) > 0).astype(int)  # every task is the same task
    tasks = np.repeat(["a", "b", "c", "d", "e", "f"], n // 6)
    search = select_hyperparameters(X, y, tasks, alphas=(1.0,), mus=(100.0, 0.01), n_splits=3)
    assert search.mu == 100.0
    assert {(r["alpha"], r["mu"]) for r in search.table} == {(1.0, 100.0), (1.0, 0.01)}
    scores = {r["mu"]: r["score"] for r in search.table}
    assert scores[100.0] < scores[0.01]


def test_select_hyperparameters_follows_the_data_when_tasks_disagree() -> None:
    # Half the tasks label by +w, half by -w: sharing is wrong, and the rule must not force it.
    rng = np.random.default_rng(1)
    d, n = 20, 480
    X = sp.random(n, d, density=0.4, random_state=1, format="csr")
    w = rng.normal(size=d)
    tasks = np.repeat(["a", "b", "c", "d"], n // 4)
    sign = np.where(np.isin(tasks, ["a", "b"]), 1.0, -1.0)
    y = (sign * (X @ w) > 0).astype(int)
    for rule in ("one_se", "min"):
        search = select_hyperparameters(X, y, tasks, alphas=(0.3,), mus=(100.0, 1.0, 0.03), rule=rule)
        assert search.mu < 100.0, rule
    assert search.best_mu == search.mu  # 'min' takes the best


def _table(search):  # type: ignore[no-untyped-def]
    return {(r["alpha"], r["mu"]): r for r in search.table}


def test_one_standard_error_rule_prefers_the_most_shared_setting_within_noise() -> None:
    # Tasks that really are one task, few samples each: every setting's held-out loss is noisy.
    # On this draw the minimum falls on mu=1, a fluke of 12 samples per task.
    rng = np.random.default_rng(12)
    d, n = 40, 72
    X = sp.random(n, d, density=0.3, random_state=12, format="csr")
    w = rng.normal(size=d)
    y = (X @ w + 0.8 * rng.normal(size=n) > 0).astype(int)
    tasks = np.repeat(["a", "b", "c", "d", "e", "f"], n // 6)
    grid = {"alphas": (1.0,), "mus": (100.0, 3.0, 1.0, 0.3)}
    best = select_hyperparameters(X, y, tasks, rule="min", **grid)
    chosen = select_hyperparameters(X, y, tasks, rule="one_se", **grid)
    table = _table(chosen)
    row = table[(chosen.alpha, chosen.mu)]
    # The choice is within one standard error of the best ...
    assert row["gap_to_best"] <= row["gap_se"]
    assert (best.alpha, best.mu) == (chosen.best_alpha, chosen.best_mu)
    assert table[(best.alpha, best.mu)]["gap_to_best"] == 0.0
    # ... and no more-shared setting was.
    for (a, m), r in table.items():
        if (m, a) > (chosen.mu, chosen.alpha):
            assert r["gap_to_best"] > r["gap_se"]
    assert (best.mu, chosen.mu) == (1.0, 100.0)


def test_one_standard_error_is_the_paired_weighted_standard_error() -> None:
    # Recompute the table's gap and standard error by hand on one split.
    X, y, tasks, _ = make_problem(seed=4, n_per_task=30)
    train = np.arange(len(y)) % 3 != 0
    test = ~train
    split = [(np.flatnonzero(train), np.flatnonzero(test))]
    est = MultiTaskLogisticRegression(tol=1e-8)
    search = select_hyperparameters(X, y, tasks, alphas=(1.0,), mus=(10.0, 0.5), cv=split, estimator=est)
    losses = {}
    for mu in (10.0, 0.5):
        m = fit(X[train], y[train], tasks[train], alpha=1.0, mu=mu, tol=1e-8)
        s = m.decision_function(X[test], tasks=tasks[test])
        losses[mu] = np.logaddexp(0, -np.where(y[test] == 1, 1.0, -1.0) * s)
    counts = {t: (tasks[test] == t).sum() for t in TASKS}
    weights = np.array([1.0 / (len(TASKS) * counts[t]) for t in tasks[test]])
    best_mu = min(losses, key=lambda mu: weights @ losses[mu])
    other = 0.5 if best_mu == 10.0 else 10.0
    diff = losses[other] - losses[best_mu]
    gap = weights @ diff
    row = _table(search)[(1.0, other)]
    assert row["gap_to_best"] == pytest.approx(gap, rel=1e-4)
    assert row["gap_se"] == pytest.approx(np.sqrt(np.sum(weights**2 * (diff - gap) ** 2)), rel=1e-4)


def test_selection_rule_is_checked() -> None:
    X, y, tasks, _ = make_problem()
    with pytest.raises(ValueError, match="rule must be one of"):
        select_hyperparameters(X, y, tasks, rule="smallest")
    with pytest.raises(ValueError, match="needs scoring='log_loss'"):
        select_hyperparameters(X, y, tasks, scoring="auc")
    assert select_hyperparameters(X, y, tasks, scoring="auc", rule="min", alphas=(1.0,), mus=(1.0,)).mu == 1.0


def _word_counts(seed: int, n: int = 160, d: int = 50) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Bag-of-words-like rows: non-negative counts, some columns common, some rare."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.4, 0.5, size=d)
    counts = rng.poisson(rates, size=(n, d)).astype(float)
    tasks = np.repeat(TASKS, n // len(TASKS))
    w = rng.normal(size=d)
    y = (counts @ w + rng.normal(size=n) > np.median(counts @ w)).astype(int)
    return sp.csr_matrix(counts), y, tasks


@pytest.mark.parametrize("seed", [0, 1])
def test_idf_option_equals_fitting_on_scikit_learn_tfidf_rows(seed: int) -> None:
    from sklearn.feature_extraction.text import TfidfTransformer

    X, y, tasks = _word_counts(seed)
    train, test = np.arange(len(y)) % 4 != 0, np.arange(len(y)) % 4 == 0
    tfidf = TfidfTransformer(norm="l2", smooth_idf=True).fit(X[train])
    with_idf = fit(X[train], y[train], tasks[train], alpha=0.5, mu=2.0, idf=True)
    on_tfidf = fit(tfidf.transform(X[train]), y[train], tasks[train], alpha=0.5, mu=2.0)
    np.testing.assert_allclose(with_idf.coef_shared_, on_tfidf.coef_shared_, atol=1e-7)
    np.testing.assert_allclose(with_idf.decision_function(X[test], tasks=tasks[test]),
                               on_tfidf.decision_function(tfidf.transform(X[test]), tasks=tasks[test]), atol=1e-7)
    # The idf is learned from the rows given to fit, not from the rows being scored.
    np.testing.assert_allclose(with_idf.idf_.dense(X.shape[1])[with_idf.idf_.cols], tfidf.idf_[with_idf.idf_.cols])


def test_idf_is_kept_by_refit_save_load_and_the_numpy_scorer() -> None:
    from spamtl.features import FeatureRow

    X, y, tasks = _word_counts(2)
    est = fit(X, y, tasks, alpha=0.5, mu=2.0, idf=True)
    idf_before = est.idf_
    m = tasks == "bob"
    est.refit_task(X[m][::2], y[m][::2], "bob")
    assert est.idf_ is idf_before  # a refit never relearns the idf: the other users' scores depend on it
    buf = io.BytesIO()
    est.save(buf)
    buf.seek(0)
    loaded = MultiTaskLogisticRegression.load(buf)
    assert loaded.idf is True and loaded.idf_ is not None
    np.testing.assert_array_equal(loaded.decision_function(X, tasks=tasks), est.decision_function(X, tasks=tasks))
    weights = est.to_weights()
    for i in range(0, len(y), 13):
        row = FeatureRow(X[i].indices.astype(np.int32), X[i].data.astype(np.float32))
        np.testing.assert_allclose(weights.decision([row], tasks[i]), est.decision_function(X[i], tasks=[tasks[i]]),
                                   rtol=1e-6)
    plain = fit(X, y, tasks, alpha=0.5, mu=2.0)
    assert plain.idf_ is None and plain.to_weights().idf is None


def test_model_files_of_the_first_format_still_load() -> None:
    import json

    from spamtl.model.weights import ModelWeights

    X, y, tasks, _ = make_problem()
    est = fit(X, y, tasks)
    buf = io.BytesIO()
    est.save(buf)
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["format_version"] == 2
    meta["format_version"] = 1
    arrays["meta"] = np.array(json.dumps(meta))
    old = io.BytesIO()
    np.savez(old, **arrays)
    old.seek(0)
    loaded = ModelWeights.load(old)
    assert loaded.idf is None
    np.testing.assert_array_equal(MultiTaskLogisticRegression.from_weights(loaded).decision_function(X, tasks=tasks),
                                  est.decision_function(X, tasks=tasks))
    meta["format_version"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    future = io.BytesIO()
    np.savez(future, **arrays)
    future.seek(0)
    with pytest.raises(ValueError, match="unsupported model format 99"):
        ModelWeights.load(future)


def test_lbfgs_runs_blas_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A feedback refit's L-BFGS runs BLAS on one thread (OpenBLAS's made it ten times slower on 2 busy cores);
    a small training fit keeps BLAS's threading (bench_model's figures depend on its summation order)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from spamtl.model import loss as _objective
    from spamtl.model.refit import refit_user
    from spamtl.model.weights import ModelWeights, SparsePart

    seen: list[set[int]] = []
    solve = _objective.minimize

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})
        return solve(*args, **kwargs)

    monkeypatch.setattr(_objective, "minimize", spy)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # as on a machine with 2 cores or more
        rng = np.random.default_rng(0)
        X = sp.random(40, 30, density=0.2, format="csr", random_state=rng)
        y = np.where(rng.random(40) < 0.5, 1.0, -1.0)
        refit_user(ModelWeights(30, SparsePart.empty()), "ann", X, y > 0)  # feedback
        X, y, tasks, _ = make_problem(n_per_task=10)
        MultiTaskLogisticRegression(alpha=1.0, mu=1.0).fit(X, y, tasks)  # training
        outside = {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}
    assert len(seen) >= 2 and seen[0] == {1} and all(threads == {2} for threads in seen[1:]), seen
    assert outside == {2}  # the limit is the refit's alone
