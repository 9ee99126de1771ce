"""The variable-projection solver (spamtl.model.projected) against scikit-learn, finite differences and the joint fit."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import check_grad
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

import spamtl.model.projected as projected
import spamtl.model.solvers as solvers
import spamtl.rowfiles as rowfiles
from spamtl.model.estimator import MultiTaskLogisticRegression
from spamtl.model.projected import ProjectedLoss
from spamtl.model.refit import dual_newton
from spamtl.model.selection import fit_fold
from spamtl.rowfiles import ArrayStore
from tests.model.test_estimator import GROUPS, TASKS, make_problem


def _user(seed: int, m: int, d: int = 15) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = sp.random(m, d, density=0.4, random_state=seed, format="csr")
    y = np.where(X @ rng.normal(size=d) + 0.5 * rng.normal(size=m) > 0, 1.0, -1.0)
    return X, y, rng.uniform(0.5, 2.0, m)


def test_one_batch_of_padded_users_each_equals_its_own_l2_logistic_regression() -> None:
    """Two users of 23 and 9 rows padded to 24, offsets zero: each is sklearn's L2 logistic regression on
    [x | 1] (the constant column is c_t, penalised like v_t) with C = 1/lam and their sample weights."""
    lam, P = 0.7, 24
    users = [_user(0, 23), _user(1, 9)]
    K = np.zeros((2, P, P))
    y = np.zeros((2, P))
    s = np.zeros((2, P))
    for b, (X, yy, ss) in enumerate(users):
        m = X.shape[0]
        K[b, :m, :m] = (X @ X.T).toarray() + 1.0
        y[b, :m], s[b, :m] = yy, ss
    a = np.zeros((2, P))
    objective, r, _ = dual_newton(K, np.zeros((2, P)), y, s, a, lam, tol=1e-12)
    for b, (X, yy, ss) in enumerate(users):
        m = X.shape[0]
        Z = sp.hstack([X, np.ones((m, 1))]).tocsr()
        lr = LogisticRegression(C=1.0 / lam, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(Z, yy, sample_weight=ss)
        beta = Z.T @ a[b, :m]  # the representer: beta = Xt^T a
        np.testing.assert_allclose(beta, lr.coef_[0], atol=1e-7)
        z = Z @ lr.coef_[0]
        expected = float(ss @ np.logaddexp(0.0, -yy * z)) + 0.5 * lam * float(lr.coef_[0] @ lr.coef_[0])
        assert objective[b] == pytest.approx(expected, rel=1e-9)
        np.testing.assert_allclose(r[b, :m], -yy * ss / (1.0 + np.exp(yy * z)), atol=1e-9)
        assert not a[b, m:].any() and not r[b, m:].any()  # padded rows stay out


def test_newton_halves_steps_where_the_full_step_overshoots() -> None:
    """Nearly separable rows, a weak penalty and a start far away: a full Newton step would overshoot and
    diverge; with halving the solve still reaches sklearn's optimum."""
    X, y, s = _user(2, 30)
    lam = 1e-3
    K = ((X @ X.T).toarray() + 1.0)[None]
    a = np.full((1, 30), 50.0)
    dual_newton(K, np.zeros((1, 30)), y[None], s[None], a, lam, tol=1e-10, max_iter=200)
    Z = sp.hstack([X, np.ones((30, 1))]).tocsr()
    lr = LogisticRegression(C=1.0 / lam, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(Z, y, sample_weight=s)
    np.testing.assert_allclose(Z @ (Z.T @ a[0]), Z @ lr.coef_[0], atol=1e-4)


def _objective(dual_max_rows: int | None = None, chunk_rows: int | None = None) -> ProjectedLoss:
    sizes = {k: v for k, v in (("dual_max_rows", dual_max_rows), ("chunk_rows", chunk_rows)) if v is not None}
    X, y, tasks, groups = make_problem(d=6, n_per_task=10)
    _, tidx = np.unique(tasks, return_inverse=True)
    names = sorted({g for g in groups if g is not None})
    task_group = np.array([names.index(GROUPS[t]) if GROUPS[t] else -1 for t in TASKS])
    rng = np.random.default_rng(1)
    return ProjectedLoss(sp.csr_matrix(X), np.where(y == 1, 1.0, -1.0), rng.uniform(0.5, 2, len(y)), tidx,
                         task_group, alpha=0.7, mu=2.5, mu_group=0.4, tol=1e-9, n_groups=len(names), **sizes)


@pytest.mark.parametrize("chunk_rows", [None, 12], ids=["one-chunk", "chunks-on-disk"])
@pytest.mark.parametrize("dual_max_rows", [None, 5], ids=["dual", "primal"])
def test_gradient_of_the_projected_objective_matches_finite_differences(dual_max_rows: int | None,
                                                                        chunk_rows: int | None) -> None:
    """dF/dtheta_s is the joint gradient's shared rows at the users' optimum (envelope theorem); checked
    against differences of F, whose every value solves the users' problems again.  Also with the users in
    chunks of one or two (10 rows each), read back from the scratch directory on every evaluation."""
    obj = _objective(dual_max_rows, chunk_rows)
    try:
        assert any(c.users.heavy for c in obj.chunks) == (dual_max_rows is not None)
        assert (len(obj.chunks) > 2) == (obj.store.directory is not None) == (chunk_rows is not None)
        theta = np.random.default_rng(2).normal(size=obj.n_params)
        err = check_grad(lambda t: obj.loss_gradient(t)[0], lambda t: obj.loss_gradient(t)[1], theta, epsilon=1e-6)
        assert err < 1e-5 * max(1.0, np.linalg.norm(obj.loss_gradient(theta)[1]))
    finally:
        obj.close()


def _fit(X, y, tasks, groups=None, **params):  # type: ignore[no-untyped-def]
    params.setdefault("tol", 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultiTaskLogisticRegression(**params).fit(X, y, tasks=tasks, groups=groups)


def _sixty_users(everyone_grouped: bool) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """60 users of 3 to 60 rows and two of 120; groups g0-g2 for every fourth user not, unless everyone is."""
    rng = np.random.default_rng(5)
    d = 40
    common = rng.normal(size=d)
    parts, tasks, groups, labels = [], [], [], []
    for t in range(60):
        m = 120 if t in (7, 31) else int(rng.integers(3, 60))
        X = sp.random(m, d, density=0.15, random_state=int(rng.integers(1 << 30)), format="csr")
        y = (X @ (common + rng.normal(size=d)) + 0.3 * rng.normal(size=m) > 0).astype(int)
        if len(np.unique(y)) < 2:
            y[0] = 1 - y[0]
        parts.append(X)
        labels.append(y)
        tasks += [f"u{t:02d}"] * m
        groups += [None if t % 4 == 0 and not everyone_grouped else f"g{t % 3}"] * m
    return sp.vstack(parts).tocsr(), np.concatenate(labels), np.array(tasks), np.array(groups, dtype=object)


@pytest.mark.parametrize("chunk_rows", [None, 300], ids=["one-chunk", "chunks-on-disk"])
@pytest.mark.parametrize("everyone_grouped", [False, True], ids=["some-grouped", "all-grouped"])
def test_projected_and_joint_agree_on_many_users_of_different_sizes(monkeypatch, tmp_path, everyone_grouped,
                                                                    chunk_rows) -> None:  # type: ignore[no-untyped-def]
    """60 users of 3 to 120 rows (several padded sizes, several batches, two primal users), groups for some
    or for all (the group data then shares the layout's rows); in one chunk, or in chunks of ~300 rows kept in
    a scratch directory, which is gone after the fit."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    sizes = {"dual_max_rows": 100,
             "batch_bytes": 8 * 16 * 16 * 3,  # three users of 16 rows a batch
             "gram_users": 2,  # their Gram matrices two users at a time
             **({} if chunk_rows is None else {"chunk_rows": chunk_rows})}
    X, y, tasks_a, groups_a = _sixty_users(everyone_grouped)
    joint = _fit(X, y, tasks_a, groups_a, alpha=0.05, mu=0.5, solver="joint", tol=1e-10, max_iter=20_000)
    proj = _fit(X, y, tasks_a, groups_a, alpha=0.05, mu=0.5, solver="projected", tol=1e-10, max_iter=20_000,
                solver_options=sizes)
    np.testing.assert_allclose(proj.decision_function(X, tasks=tasks_a), joint.decision_function(X, tasks=tasks_a),
                               atol=2e-4)
    np.testing.assert_allclose(proj.intercept_tasks_, joint.intercept_tasks_, atol=2e-4)
    assert abs(proj.coef_tasks_ - joint.coef_tasks_).max() < 2e-4
    assert len(made) == (chunk_rows is not None)
    assert list(tmp_path.iterdir()) == []


def _chunk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spamtl-chunks")]


def test_threads_give_the_same_fit_bit_for_bit_with_chunks_evaluated_side_by_side(  # type: ignore[no-untyped-def]
        monkeypatch, tmp_path) -> None:
    """The projected fit's chunks on three threads: the same model bit for bit as on one (the chunks' parts
    are added in chunk order), with chunks evaluated by more than one thread and each chunk by one at a
    time (its users' solutions are its own state), BLAS on one thread meanwhile (its own threads competed
    with the chunks'); afterwards no thread and no scratch file is left, and BLAS is as it was."""
    sizes = {"chunk_rows": 150, "dual_max_rows": 100}  # about 13 chunks; two users solved in the primal
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    X, y, tasks, groups = _sixty_users(everyone_grouped=False)
    seen: dict[int, set[int]] = {}
    busy: set[int] = set()
    overlap = []
    blas_threads = set()
    lock = threading.Lock()
    real = projected.UserChunk.evaluate

    def evaluate(chunk, *args):  # type: ignore[no-untyped-def]
        with lock:
            overlap.append(id(chunk) in busy)
            busy.add(id(chunk))
            seen.setdefault(threading.get_ident(), set()).add(id(chunk))
            blas_threads.update(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        try:
            time.sleep(0.001)  # the GIL handed over: the other threads get their turn
            return real(chunk, *args)
        finally:
            with lock:
                busy.discard(id(chunk))

    monkeypatch.setattr(projected.UserChunk, "evaluate", evaluate)
    fits = {}
    for threads in (1, 3):
        seen.clear()
        est = MultiTaskLogisticRegression(alpha=0.05, mu=0.5, solver="projected", tol=1e-8, max_iter=5_000,
                                          solver_options=sizes)
        with threadpool_limits(limits=2, user_api="blas"):  # BLAS on one thread during the fit, then as it was
            fits[threads] = est.fit(X, y, tasks=tasks, groups=groups, threads=threads)
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}
        assert len(seen) == min(threads, 3), seen.keys()
        assert _chunk_threads() == []
    assert blas_threads == {1}
    one, three = fits[1], fits[3]
    assert one.n_iter_ == three.n_iter_
    np.testing.assert_array_equal(three.coef_shared_, one.coef_shared_)
    assert three.intercept_shared_ == one.intercept_shared_
    assert (three.coef_tasks_ != one.coef_tasks_).nnz == 0 and (three.coef_groups_ != one.coef_groups_).nnz == 0
    np.testing.assert_array_equal(three.intercept_tasks_, one.intercept_tasks_)
    np.testing.assert_array_equal(three.intercept_groups_, one.intercept_groups_)
    assert not any(overlap)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_chunk_on_a_thread_fails_the_fit_and_leaves_nothing(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    X, y, tasks, groups = _sixty_users(everyone_grouped=True)
    real = projected.UserChunk.evaluate
    calls = []

    def evaluate(chunk, *args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 20:
            raise MemoryError("planted")
        return real(chunk, *args)

    monkeypatch.setattr(projected.UserChunk, "evaluate", evaluate)
    with pytest.raises(MemoryError, match="planted"):
        MultiTaskLogisticRegression(solver="projected", solver_options={"chunk_rows": 150}).fit(
            X, y, tasks=tasks, groups=groups, threads=2)
    assert _chunk_threads() == []
    assert list(tmp_path.iterdir()) == []


def test_array_store_on_disk_gives_back_what_it_was_given_and_removes_its_directory(  # type: ignore[no-untyped-def]
        monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    store = ArrayStore(spill=True)
    X = sp.random(7, 5, density=0.5, random_state=0, format="csr")
    handles = store.put_csr(X)
    k = store.put(np.arange(12.0).reshape(2, 2, 3))
    assert len(list(tmp_path.glob("spamtl-fit-*/*.npy"))) == 4
    back = store.get_csr(handles)
    assert (back != X).nnz == 0 and back.shape == X.shape
    np.testing.assert_array_equal(store.get(k), np.arange(12.0).reshape(2, 2, 3))
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_fit_leaves_no_scratch_data(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    X, y, tasks, groups = make_problem()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert len(list(tmp_path.glob("spamtl-fit-*/*.npy"))) > 0  # the chunks are on disk meanwhile
        raise MemoryError("planted")

    monkeypatch.setattr(solvers, "minimize_lbfgs", broken)
    with pytest.raises(MemoryError, match="planted"):
        MultiTaskLogisticRegression(solver="projected", solver_options={"chunk_rows": 20}).fit(
            X, y, tasks=tasks, groups=groups)
    assert list(tmp_path.iterdir()) == []


def test_the_solver_used_is_kept_with_the_model() -> None:
    X, y, tasks, groups = make_problem()
    assert _fit(X, y, tasks, groups).solver_ == "joint"
    est = _fit(X, y, tasks, groups, solver="projected")
    assert est.solver_ == "projected"
    est.set_params(solver="auto")
    loaded = MultiTaskLogisticRegression.from_weights(est.to_weights())
    assert loaded.solver_ == "projected" and loaded.solver == "auto"


def test_projected_warm_start_starts_from_the_shared_part() -> None:
    X, y, tasks, groups = make_problem(n_per_task=80)
    cold = _fit(X, y, tasks, groups, mu=1.0, solver="projected")
    warm = _fit(X, y, tasks, groups, mu=1.5, solver="projected")
    warm.set_params(mu=1.0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm.fit(X, y, tasks=tasks, groups=groups)
    np.testing.assert_allclose(warm.decision_function(X, tasks=tasks), cold.decision_function(X, tasks=tasks),
                               atol=1e-5)
    assert warm.n_iter_ < cold.n_iter_


def test_projected_limits_pooled_and_independent() -> None:
    X, y, tasks, _ = make_problem()
    pooled = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X, y)
    est = _fit(X, y, tasks, alpha=1.0, mu=1e7, solver="projected")
    np.testing.assert_allclose(est.decision_function(X, tasks=tasks), pooled.decision_function(X), atol=1e-4)
    mu = 1e-6
    est = _fit(X, y, tasks, alpha=1.0 / mu, mu=mu, solver="projected")
    blocks = [sp.csr_matrix(X.multiply((tasks == t).astype(float)[:, None])) for t in TASKS]
    blocks += [sp.csr_matrix((tasks == t).astype(float)[:, None]) for t in TASKS]
    Z = sp.hstack(blocks).tocsr()
    independent = LogisticRegression(C=1.0, tol=1e-12, max_iter=20_000).fit(Z, y)
    np.testing.assert_allclose(est.decision_function(X, tasks=tasks), independent.decision_function(Z), atol=1e-3)


def test_unknown_solver_is_refused() -> None:
    X, y, tasks, _ = make_problem()
    with pytest.raises(ValueError, match="solver must be one of"):
        MultiTaskLogisticRegression(solver="newton").fit(X, y, tasks=tasks)


DISK_ROOT = "/dev/vda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n"


@pytest.mark.skipif(not os.access("/var/tmp", os.W_OK), reason="needs a writable /var/tmp")
def test_scratch_goes_to_disk_not_to_a_tmpfs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Chunks kept on a tmpfs would stay in memory: /var/tmp instead, unless TMPDIR says where."""
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert rowfiles.scratch_parent(DISK_ROOT) == "/tmp"
    assert rowfiles.scratch_parent(DISK_ROOT + "tmpfs /tmp tmpfs rw,nosuid 0 0\n") == "/var/tmp"
    assert rowfiles.scratch_parent(DISK_ROOT + "tmpfs /tmp tmpfs rw 0 0\ntmpfs /var/tmp tmpfs rw 0 0\n") == "/tmp"
    assert rowfiles.scratch_parent(DISK_ROOT + "tmpfs /tmpx tmpfs rw 0 0\n") == "/tmp"  # another mount's prefix
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert rowfiles.scratch_parent(DISK_ROOT + "tmpfs /tmp tmpfs rw 0 0\n") == "/tmp"


def test_group_keys_are_every_grouped_rows_columns_per_group() -> None:
    """Against sets, with groups small enough to be sorted and large enough to be marked in a table."""
    rng = np.random.default_rng(4)
    d = 64
    X = sp.random(400, d, density=0.05, random_state=4, format="csr")
    row_group = rng.choice([-1, 0, 1, 2, 3], size=400, p=[0.2, 0.5, 0.27, 0.02, 0.01])
    expected = sorted({g * d + c for r, g in enumerate(row_group) if g >= 0 for c in X[r].indices})
    np.testing.assert_array_equal(projected._group_keys(X, row_group, 5, chunk_rows=7), expected)
    small = [g for g in range(5) if X[row_group == g].nnz * 16 < d]
    assert small and len(small) < 5  # both ways were taken (group 4 has no row: no keys)


def _many_users(n_users: int = 40, rows: int = 25, d: int = 30, seed: int = 3):  # type: ignore[no-untyped-def]
    """Many small users sharing a direction, each with a twist: the shape of a real store's mu search."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_users * rows, d, density=0.3, random_state=seed, format="csr")
    tasks = np.repeat([f"u{i:02d}" for i in range(n_users)], rows)
    common, own = rng.normal(size=d), rng.normal(size=(n_users, d))
    margin = X @ common + np.einsum("ij,ij->i", X.toarray(), own[np.repeat(np.arange(n_users), rows)])
    y = (margin + 0.3 * rng.normal(size=len(tasks)) > np.median(margin)).astype(int)
    test = rng.random(len(y)) < 1 / 3
    return X, y, tasks, np.flatnonzero(~test), np.flatnonzero(test)


GRID = [(0.01, 100.0), (0.01, 10.0), (0.01, 3.0), (0.01, 1.0)]  # spamtl's default grid, walked as fit_fold does


def test_the_warm_grid_walk_reaches_each_settings_optimum() -> None:
    """fit_fold walks mu 100 -> 1 warm.  The joint L-BFGS's test sees a user's part through that user's share
    of the weight, so from mu = 100's optimum it passed at once (0 iterations: the held-out scores of mu = 10
    and 3 were mu = 100's).  Each setting's held-out scores must be its optimum's (a tight joint fit): auto's
    projected solver reaches it within 0.3 %; the joint one at tol = 1e-5 is 3-7 % away even cold, and starts
    cold at a new penalty (the test below)."""
    X, y, tasks, train, test = _many_users()
    assert solvers.choose_solver("auto", len(np.unique(tasks[train])), len(train)) == "projected"  # 40 users of ~17 rows
    base = MultiTaskLogisticRegression(idf=False, tol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, walked, _ = fit_fold((X, y, tasks, None), train, test, base, GRID)
    for (alpha, mu), scores in zip(GRID, walked):
        best = _fit(X[train], y[train], tasks[train], alpha=alpha, mu=mu, solver="joint", tol=1e-10, max_iter=20_000)
        np.testing.assert_allclose(scores, best.decision_function(X[test], tasks=tasks[test]), rtol=5e-3,
                                   atol=5e-3, err_msg=f"mu={mu}")


def test_a_joint_warm_start_at_another_penalty_is_a_cold_start() -> None:
    X, y, tasks, groups = make_problem()
    cold = _fit(X, y, tasks, groups, mu=10.0, solver="joint", tol=1e-5)
    warm = _fit(X, y, tasks, groups, mu=100.0, solver="joint", tol=1e-5).set_params(mu=10.0, warm_start=True)
    warm.fit(X, y, tasks=tasks, groups=groups)
    np.testing.assert_array_equal(warm.decision_function(X, tasks=tasks), cold.decision_function(X, tasks=tasks))
    loaded = MultiTaskLogisticRegression.from_weights(warm.to_weights())  # the fitted penalty is kept
    again = MultiTaskLogisticRegression.from_weights(warm.to_weights()).set_params(warm_start=True)
    assert loaded.penalty_ == (1.0, 10.0, 1.0)
    again.fit(X, y, tasks=tasks, groups=groups)  # same penalty: a true warm start, from the optimum
    assert again.n_iter_ < cold.n_iter_ / 2


def test_auto_solver_is_projected_for_many_small_users_only() -> None:
    assert solvers.choose_solver("auto", 19, 19 * 10) == "joint"
    assert solvers.choose_solver("auto", 20, 20 * 256) == "projected"
    assert solvers.choose_solver("auto", 20, 20 * 256 + 1) == "joint"
    assert solvers.choose_solver("auto", solvers.PROJECTED_FROM_TASKS, 1000 * 5000) == "projected"
    assert solvers.choose_solver("joint", 5000, 5000) == "joint"


def test_a_threaded_fit_gives_back_control_of_blas_threads() -> None:
    """threadpoolctl lets one thread at a time set OpenBLAS's threads and gives that control back only when a
    limit is left as a context manager.  Catches: a fit (here in a thread that lives on, as a server's does)
    that keeps control, after which another thread's limit (a feedback refit's one BLAS thread) does nothing."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS has one thread whatever is asked")
    X, y, tasks, groups = _sixty_users(everyone_grouped=False)
    fitted, done = threading.Event(), threading.Event()

    def server() -> None:
        est = MultiTaskLogisticRegression(alpha=0.05, mu=0.5, solver="projected", max_iter=200,
                                          solver_options={"chunk_rows": 150})
        est.fit(X, y, tasks=tasks, groups=groups, threads=2)
        fitted.set()
        done.wait(60)  # alive, as a server's training thread stays

    thread = threading.Thread(target=server)
    thread.start()
    try:
        assert fitted.wait(120)
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas
        want = 1 if max(blas) > 1 else 2
        with threadpool_limits(limits=want, user_api="blas"):
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {want}
    finally:
        done.set()
        thread.join()


def test_a_fit_of_twice_split_rows_is_cut_in_two_chunks_in_memory() -> None:
    """Catches: a mid-size fit (the search's folds) in one chunk, which leaves the second thread idle, or its
    two chunks spilled to disk."""
    X, y, tasks, _ = _sixty_users(everyone_grouped=False)
    _, tidx = np.unique(tasks, return_inverse=True)
    assert len(y) >= 800
    for n_rows, chunks in ((799, 1), (len(y), 2)):
        keep = tidx < np.searchsorted(np.cumsum(np.bincount(tidx)), n_rows, side="right")
        assert 0 < keep.sum() <= n_rows and (keep.sum() >= 800) == (chunks == 2)
        labels, t = np.unique(tidx[keep], return_inverse=True)
        obj = ProjectedLoss(X[keep], np.where(y[keep] == 1, 1.0, -1.0), np.ones(int(keep.sum())), t,
                            np.full(len(labels), -1), alpha=0.1, mu=1.0, mu_group=1.0, tol=1e-6, threads=2,
                            split_rows=400)
        try:
            assert len(obj.chunks) == chunks
            assert obj.store.directory is None
        finally:
            obj.close()
