"""The nightly search on a sample of users, independent fits side by side, the large solver.

Each test names the defect it exists to catch (they were planted and seen to fail).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import spamtl.model.loss as objective
from spamtl.model.estimator import MultiTaskLogisticRegression
from spamtl.model.refit import score_refitted_tasks
from spamtl.model.selection import select_hyperparameters
from spamtl.parallel import SerialExecutor, executor
from spamtl.services.dataset import TrainingData
from spamtl.services.training import (
    choose_and_fit,
    choose_mu,
    cross_fit_and_fit,
    cross_fit_folds,
    fit_candidate,
    one_se_for_all_users,
    search_sample,
    train,
)
from spamtl.settings import Settings

from ..services.test_training import NEXT_NIGHT, NOW, _build
from .test_estimator import make_problem


def _store_like(n_users: int, personal: float, seed: int = 0, per_user: int = 40, d: int = 400) -> TrainingData:
    """Bag-of-words-like rows for many users: a shared spam direction plus ``personal`` times each user's own."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    X = sp.random(n, d, density=0.04, random_state=seed, format="csr", data_rvs=lambda k: np.ones(k))
    users = np.repeat([f"u{i:03d}" for i in range(n_users)], per_user)
    shared = rng.normal(size=d)
    own = rng.normal(size=(n_users, d))
    margin = X @ shared + personal * np.einsum("ij,ij->i", X.toarray(), own[np.repeat(np.arange(n_users), per_user)])
    y = (margin > np.median(margin)).astype(np.int64)
    return TrainingData(X, y, users, np.full(n, None, dtype=object), np.arange(n), np.zeros(n))


def _settings(**overrides) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url="sqlite://", **{"train_workers": 1, **overrides})


@pytest.mark.parametrize(("personal", "d", "per_user", "expected_mu"), [(0.0, 40, 40, 100.0), (3.0, 30, 80, 10.0)],
                         ids=["pooled", "personal"])
def test_sampled_search_chooses_what_the_full_search_chooses(personal: float, d: int, per_user: int,
                                                             expected_mu: float) -> None:
    """Catches: a sampled search that searches on the wrong rows or is not scaled to all users.

    Stores where the shared part is learned as well from half the users as from all (as at hundreds of
    users of real mail); on tiny random stores the choice is noise either way."""
    data = _store_like(24, personal, d=d, per_user=per_user)
    folds = cross_fit_folds(data, 3, seed=0)
    full = choose_mu(data, data.y, folds, _settings(mu_search_users=0), executor=SerialExecutor())
    sampled = choose_mu(data, data.y, folds, _settings(mu_search_users=12), executor=SerialExecutor())
    assert full.searched_users is None and sampled.searched_users == 12
    # The two stores ask for different settings, so this is not one answer for everything.
    assert sampled.params["mu"] == full.params["mu"] == expected_mu
    # Out-of-fold scores only where the sample was cross-fitted, every row of a sampled user.
    rows = search_sample(data, _settings(mu_search_users=12))
    assert rows is not None and len(np.unique(data.users[rows])) == 12
    np.testing.assert_array_equal(np.isfinite(sampled.oof_scores), rows)


def test_one_se_rule_on_a_sample_uses_the_standard_error_all_users_would_give() -> None:
    """Catches: the sample's own standard error in the one-SE rule (a smaller sample would pick a more
    shared mu than the full search).  Figures from the 300-user store searched on 100 users."""
    table = [{"alpha": 0.01, "mu": 10.0, "gap_to_best": 0.00261, "gap_se": 0.00092},
             {"alpha": 0.01, "mu": 3.0, "gap_to_best": 0.00027, "gap_se": 0.0004},
             {"alpha": 0.01, "mu": 1.0, "gap_to_best": 0.0, "gap_se": 0.0}]
    scaled, pick = one_se_for_all_users(table, 100, 300)
    assert pick["mu"] == 1.0  # 0.00027 > 0.0004 * sqrt(1/3) = 0.00023; unscaled, mu=3 would be within one SE
    assert scaled[1]["gap_se_all_users"] == pytest.approx(0.0004 / np.sqrt(3))
    assert one_se_for_all_users(table, 300, 300)[1]["mu"] == 3.0


def test_search_sample_is_all_users_up_to_the_limit_and_seeded_beyond() -> None:
    """Catches: sampling below the limit (changing small stores' choice) or an unseeded sample."""
    data = _store_like(12, 1.0, per_user=4, d=20)
    assert search_sample(data, _settings(mu_search_users=12)) is None
    assert search_sample(data, _settings(mu_search_users=0)) is None
    a = search_sample(data, _settings(mu_search_users=5))
    b = search_sample(data, _settings(mu_search_users=5))
    c = search_sample(data, _settings(mu_search_users=5, seed=1))
    assert a is not None and b is not None and c is not None
    assert len(np.unique(data.users[a])) == 5
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_sample_that_cannot_be_cross_fitted_falls_back_to_all_users() -> None:
    """Catches: a crash (one class in a fold's training rows) when the sampled users all have one label."""
    data = _store_like(12, 0.0, per_user=30, d=60)
    rows = search_sample(data, _settings(mu_search_users=2))
    assert rows is not None
    data.y[rows] = 0  # the two sampled users have ham only
    folds = cross_fit_folds(data, 3, seed=0)
    choice = choose_mu(data, data.y, folds, _settings(mu_search_users=2, mus=(10.0, 1.0)), executor=SerialExecutor())
    assert choice.searched_users is None
    assert np.isfinite(choice.oof_scores).all()


def test_folds_on_worker_processes_give_the_serial_results() -> None:
    """Catches: folds whose results come back out of order, or workers that see other data than the parent."""
    X, y, tasks, groups = make_problem(n_per_task=30)
    kwargs = dict(alphas=(1.0,), mus=(10.0, 1.0), n_splits=3, random_state=0)
    serial = select_hyperparameters(X, y, tasks, groups, **kwargs)
    with executor(2, kind="processes") as pool:
        assert not isinstance(pool, SerialExecutor)  # no other thread alive in this test
        parallel = select_hyperparameters(X, y, tasks, groups, executor=pool, **kwargs)
    assert (parallel.alpha, parallel.mu) == (serial.alpha, serial.mu)
    np.testing.assert_allclose(parallel.oof_scores, serial.oof_scores, rtol=1e-9, atol=1e-12)
    assert [r["score"] for r in parallel.table] == pytest.approx([r["score"] for r in serial.table], rel=1e-9)


@pytest.mark.parametrize(("cores", "workers", "alongside", "expected"),
                         [(2, 2, True, 1), (2, 2, False, 2), (8, 4, True, 4), (8, 8, True, 7), (1, 2, True, 0),
                          (2, 1, True, 0), (4, 1, False, 0)])
def test_workers_beside_the_trainer_leave_it_a_core(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int,
                                                     alongside: bool, expected: int) -> None:
    """Catches: cross-fitting workers that take every core while the trainer fits beside them (on 2 cores a
    second fold worker only shares the trainer's core and adds ~1 GB at 10,000 users), and train_workers = 1
    no longer meaning in-process (the setting that trades time for memory)."""
    import spamtl.parallel as parallel

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: cores)
    pool = executor(workers, kind="processes", alongside=alongside)
    try:
        if expected == 0:
            assert isinstance(pool, SerialExecutor)
        else:
            assert not isinstance(pool, SerialExecutor) and pool._max_workers == expected  # type: ignore[attr-defined]
    finally:
        pool.shutdown()


def test_no_fork_pool_while_another_thread_runs() -> None:
    """Catches: forking fold workers while another thread runs (a train called from a thread while another
    thread recorded feedback: the worker inherited a lock held by the other thread and the train never
    returned), or the training lock's own heartbeat thread turning every nightly train serial."""
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from spamtl.parallel import fork_pool_is_safe, mark_fork_safe

    assert fork_pool_is_safe()
    release_it = threading.Event()
    other = threading.Thread(target=release_it.wait, daemon=True)
    other.start()
    try:
        assert not fork_pool_is_safe()
        assert isinstance(executor(2, kind="processes"), SerialExecutor)
    finally:
        release_it.set()
        other.join()
    heartbeat_stop = threading.Event()
    heartbeat = mark_fork_safe(threading.Thread(target=heartbeat_stop.wait, daemon=True))
    heartbeat.start()
    try:
        with executor(2, kind="processes") as pool:
            assert isinstance(pool, ProcessPoolExecutor)
            assert pool.submit(sum, [1, 2]).result(timeout=60) == 3
    finally:
        heartbeat_stop.set()
        heartbeat.join()


@pytest.mark.parametrize(("sampled", "given_folds"), [(False, False), (True, False), (True, True)],
                         ids=["all-users", "sample", "sample-folds-given"])
def test_cross_fit_and_fit_gives_every_row_a_score_and_the_candidate_on_all_rows(
        monkeypatch: pytest.MonkeyPatch, sampled: bool, given_folds: bool) -> None:
    """Catches: out-of-fold scores written to the wrong rows, a fold fitted on rows it then scores (or on
    users outside the sample), a user's personal part not refitted on their own training rows, a candidate
    fitted on a fold instead of all rows, or the process pool changing any of it.

    The reference is built by hand: each fold's model fitted on the sampled users' training rows, then
    each user's part fitted with ``refit_task`` (``refit_user``: its own code path, one L-BFGS a user) on that user's training
    rows of the fold, and the user's held-out rows scored by ``decision_function``.

    With the folds' fits given (the sampled search's, without their users' parts), only the users' parts are
    fitted: catches a fold fitted again or a given fit not used."""
    data = _store_like(8, 1.0, per_user=30, d=200)
    data.groups = np.array(["even" if int(u[1:]) % 2 == 0 else "odd" for u in data.users], dtype=object)
    folds = cross_fit_folds(data, 3, seed=0)
    params = {"task_weighting": "task" if sampled else "sample", "tol": 1e-8, "max_iter": 1000, "idf": True,
              "alpha": 0.01, "mu": 3.0}
    sample = np.isin(data.users, ["u000", "u003", "u005"]) if sampled else None
    fold_fits = []
    for train_rows, _ in folds:
        fit_rows = train_rows if sample is None else train_rows[sample[train_rows]]
        fold_fits.append(fit_candidate(data.subset(fit_rows), data.y[fit_rows], params))
    given = [f.without_tasks() for f in fold_fits] if given_folds else None
    fits = []
    real_fit = MultiTaskLogisticRegression.fit
    monkeypatch.setattr(MultiTaskLogisticRegression, "fit", lambda self, X, *a, **k: fits.append(X.shape[0])
                        or real_fit(self, X, *a, **k))
    oof, candidate = cross_fit_and_fit(data, data.y, folds, params, sample, executor=SerialExecutor(),
                                       fold_models=given)
    assert fits[-1] == len(data.y) and len(fits) == (1 if given_folds else 1 + len(folds))
    monkeypatch.setattr(MultiTaskLogisticRegression, "fit", real_fit)
    expected = np.full(len(data.y), np.nan)
    for (train_rows, test_rows), est in zip(folds, fold_fits):
        for user in np.unique(data.users):
            mine = train_rows[data.users[train_rows] == user]
            est.refit_task(data.X[mine], data.y[mine], task=user, group=data.groups[mine][0])
            held = test_rows[data.users[test_rows] == user]
            expected[held] = est.decision_function(data.X[held], tasks=data.users[held])
    assert np.isfinite(oof).all()
    np.testing.assert_allclose(oof, expected, rtol=1e-4, atol=1e-4)
    whole = fit_candidate(data, data.y, params)  # from the folds' mean: the same optimum, to the fit's tolerance
    np.testing.assert_allclose(candidate.coef_shared_, whole.coef_shared_, rtol=1e-7, atol=1e-4 if given_folds else 0)
    with executor(2, kind="processes") as pool:
        oof2, candidate2 = cross_fit_and_fit(data, data.y, folds, params, sample, executor=pool, fold_models=given)
    np.testing.assert_allclose(oof2, oof, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(candidate2.coef_shared_, candidate.coef_shared_)


def test_the_sampled_search_gives_the_chosen_settings_fold_fits_and_the_first_fit_starts_from_their_mean(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: fold fits of another setting than the one chosen (the sampled search's pick is its own, not
    the search's one-SE choice), of other rows than the fold's sampled training rows, fits that keep their
    users' parts, and a first final fit that does not start from the folds' mean shared part (or that
    starts from it when there is an active model)."""
    import spamtl.services.training as training

    data = _store_like(24, 3.0, d=30, per_user=80)
    folds = cross_fit_folds(data, 3, seed=0)
    settings = _settings(mu_search_users=12)
    choice = choose_mu(data, data.y, folds, settings, executor=SerialExecutor())
    rows = search_sample(data, settings)
    assert choice.searched_users == 12 and rows is not None and len(choice.fold_models) == len(folds)
    for (train_rows, _), model in zip(folds, choice.fold_models):
        assert len(model.tasks_) == 0 and model.coef_tasks_.nnz == 0
        assert (model.alpha, model.mu) == (choice.params["alpha"], choice.params["mu"])
        fit_rows = train_rows[rows[train_rows]]
        cold = fit_candidate(data.subset(fit_rows), data.y[fit_rows], {**choice.params, "tol": 1e-10})
        scale = np.abs(cold.coef_shared_).max()
        np.testing.assert_allclose(model.coef_shared_, cold.coef_shared_, atol=2e-3 * scale)
    assert not choose_mu(data, data.y, folds, _settings(mu_search_users=0), executor=SerialExecutor()).fold_models

    # The pick is the sampled one-SE rule's, which may differ from the search's own choice: the fits follow it.
    smallest = min(settings.mus)
    monkeypatch.setattr(training, "one_se_for_all_users", lambda table, searched, users: (
        table, next(r for r in table if r["mu"] == smallest)))
    other = choose_mu(data, data.y, folds, settings, executor=SerialExecutor())
    assert other.params["mu"] == smallest != choice.params["mu"]
    assert [m.mu for m in other.fold_models] == [smallest] * len(folds)
    monkeypatch.undo()

    starts = []
    real = training.fit_candidate
    monkeypatch.setattr(training, "fit_candidate", lambda d, y, p, warm=None, threads=1: starts.append(warm)
                        or real(d, y, p, warm=warm, threads=threads))
    mean = np.mean([m.coef_shared_ for m in choice.fold_models], axis=0)
    for active in (None, choice.fold_models[1]):
        starts.clear()
        oof, candidate = cross_fit_and_fit(data, data.y, folds, choice.params, rows, warm=active,
                                           executor=SerialExecutor(), fold_models=choice.fold_models)
        (start,) = starts
        if active is None:
            np.testing.assert_allclose(start.coef_shared_, mean, rtol=1e-12)
            intercepts = [m.intercept_shared_ for m in choice.fold_models]
            assert start.intercept_shared_ == pytest.approx(np.mean(intercepts))
        else:
            assert start is active
        assert np.isfinite(oof).all() and len(candidate.tasks_) == 24


def test_refitting_each_users_part_given_the_shared_parts_reproduces_the_joint_fit() -> None:
    """Catches: a per-user refit that is not the joint objective's personal problem (wrong weight, penalty,
    offset or IDF): at the joint optimum each user's part is already optimal given the shared and group
    parts, so refitting it on the same rows must give back the joint fit's scores.  A user with no training
    rows is scored by the shared and group parts alone."""
    data = _store_like(6, 1.0, per_user=30, d=120)
    groups = np.array(["a" if u < "u003" else "b" for u in data.users], dtype=object)
    for weighting in ("sample", "task"):
        est = MultiTaskLogisticRegression(alpha=0.01, mu=3.0, tol=1e-10, max_iter=5000, idf=True,
                                          task_weighting=weighting)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(data.X, data.y, tasks=data.users, groups=groups)
            rows = np.arange(len(data.y))
            scores = score_refitted_tasks((data.X, data.y, data.users, groups), est, rows, rows)
        np.testing.assert_allclose(scores, est.decision_function(data.X, tasks=data.users, groups=groups),
                                   atol=1e-4)
    stranger = np.flatnonzero(data.users == "u004")
    others = np.flatnonzero(data.users != "u004")
    scores = score_refitted_tasks((data.X, data.y, data.users, groups), est, others, stranger)
    np.testing.assert_allclose(scores, est.decision_function(data.X[stranger], groups=groups[stranger]))


@pytest.mark.parametrize(("chunk_rows", "dual_max_rows"), [(25, 512), (70, 512), (10**6, 12)],
                         ids=["a-task-a-chunk", "chunks-of-two-tasks", "primal-users"])
def test_refits_in_chunks_or_in_the_primal_give_the_one_chunk_scores(chunk_rows: int, dual_max_rows: int) -> None:
    """Catches: chunked refits that mix up which task's rows, offsets, weights or group go where (chunks
    of one and of two tasks), and users above ``DUAL_MAX_ROWS`` (solved by their own L-BFGS) refitted
    differently from the batched dual ones."""
    data = _store_like(6, 1.0, per_user=30, d=120)
    groups = np.array(["a" if u < "u003" else None for u in data.users], dtype=object)
    est = MultiTaskLogisticRegression(alpha=0.01, mu=3.0, tol=1e-9, max_iter=5000, idf=True, task_weighting="task")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data.X, data.y, tasks=data.users, groups=groups)
    rng = np.random.default_rng(3)
    train_rows = np.sort(rng.choice(len(data.y), size=120, replace=False))
    test_rows = np.setdiff1d(np.arange(len(data.y)), train_rows)
    payload = (data.X, data.y, data.users, groups)
    whole = score_refitted_tasks(payload, est, train_rows, test_rows)
    parts = score_refitted_tasks(payload, est, train_rows, test_rows, chunk_rows=chunk_rows,
                                 dual_max_rows=dual_max_rows)
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert not np.allclose(whole, est.decision_function(data.X[test_rows], tasks=data.users[test_rows],
                                                        groups=groups[test_rows]), atol=1e-3)


def test_choose_and_fit_beyond_the_sample_size_cross_fits_everyone() -> None:
    """Catches: the sampled path leaving users outside the sample without out-of-fold scores (their
    cutoffs would silently fall back to the shared one and the gate would compare on the sample only)."""
    data = _store_like(12, 1.0, per_user=30, d=200)
    folds = cross_fit_folds(data, 3, seed=0)
    choice, candidate = choose_and_fit(data, data.y, folds, _settings(mu_search_users=6, train_workers=2))
    assert choice.searched_users == 6
    assert np.isfinite(choice.oof_scores).all()
    assert sorted(candidate.tasks_) == sorted(np.unique(data.users))
    assert "gap_se_all_users" in choice.table[0]


def test_nightly_train_reports_the_sampled_search(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Catches: the sampled path not reached from `train`, or its out-of-fold scores missing for the gate."""
    settings = _build(engine, tmp_path, mu_search_users=2, mu_search_days=0, mus=(10.0, 1.0))
    result = train(engine, settings, now=NEXT_NIGHT)
    assert result.metrics["search_users"] == 2
    assert result.metrics["cross_fitted_messages"] == result.messages


def test_a_large_store_searches_mu_weekly_and_cross_fits_the_reused_setting(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Catches: the search skipped on the wrong nights (age compared the wrong way, the date of the last
    search not carried over from a night that reused it), or a reused setting left without out-of-fold
    scores for the gate and the cutoffs."""
    settings = _build(engine, tmp_path, mu_search_users=2, mus=(10.0, 1.0))  # v1, searched at NOW
    first = train(engine, settings, now=NOW + timedelta(hours=1))  # v2: a second run the same night
    assert first.metrics["search"] == [] and first.metrics["search_reused_from"] == 1
    second = train(engine, settings, now=NEXT_NIGHT)
    assert second.metrics["search"] == [] and second.metrics["search_reused_from"] == 2
    assert second.metrics["searched_at"] == NOW.isoformat() and second.metrics["search_users"] == 0
    assert second.metrics["cross_fitted_messages"] == second.messages and second.promoted
    assert (second.metrics["alpha"], second.metrics["mu"]) == (first.metrics["alpha"], first.metrics["mu"])
    # A week after the search that chose it (not after the last night that reused it): searched again.
    week = train(engine, settings, now=NOW + timedelta(days=7, hours=12))
    assert week.metrics["search"] and week.metrics["search_reused_from"] is None
    assert week.metrics["searched_at"] == (NOW + timedelta(days=7, hours=12)).isoformat()


@pytest.mark.parametrize("change", ["mu_search_days=0", "grid without the chosen mu", "small store"])
def test_mu_is_searched_every_night_where_reuse_does_not_apply(engine, tmp_path, change: str) -> None:  # type: ignore[no-untyped-def]
    """Catches: reuse where the admin turned it off, where the grid no longer holds the chosen setting, or
    below mu_search_users users (where the search runs on everyone and costs what a fit costs)."""
    settings = _build(engine, tmp_path, mu_search_users=2, mus=(10.0, 1.0))
    chosen = train(engine, settings, now=NOW + timedelta(hours=1)).metrics["mu"]
    tweaks = {"mu_search_days=0": {"mu_search_days": 0},
              "grid without the chosen mu": {"mus": tuple(m for m in (10.0, 3.0, 1.0) if m != chosen)},
              "small store": {"mu_search_users": 0}}[change]
    night = train(engine, dataclasses.replace(settings, **tweaks), now=NEXT_NIGHT)
    assert night.metrics["search"] and night.metrics["search_reused_from"] is None


@pytest.mark.parametrize(("history_bytes", "slower"), [(2e9, 2), (1.0, 3)], ids=["float64-history", "float32-3-pairs"])
def test_large_problem_solver_reaches_the_scipy_optimum(history_bytes: float, slower: int) -> None:
    """Catches: a wrong two-loop recursion or line search in the numpy L-BFGS (used above LARGE_PROBLEM
    parameters): it must stop where SciPy's L-BFGS-B does, on the mathematics' optimum, in about as many
    iterations (50 and 100 against SciPy's 47; a backtracking search without the curvature condition took
    171 with three float32 pairs)."""
    X, y, tasks, groups = make_problem(n_per_task=40)
    params = dict(alpha=0.3, mu=2.0, tol=1e-8, max_iter=5000)
    reference = MultiTaskLogisticRegression(**params).fit(X, y, tasks=tasks, groups=groups)
    numpy_lbfgs = {"numpy_above": 0, "history_bytes": history_bytes}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ConvergenceWarning fails the test
        large = MultiTaskLogisticRegression(**params, solver="joint", solver_options=numpy_lbfgs).fit(
            X, y, tasks=tasks, groups=groups)
    assert large.gradient_norm_ <= 1e-8
    # A quasi-Newton method, not a crawl that gets there (3 float32 pairs are noisier near tol=1e-8).
    assert large.n_iter_ <= slower * reference.n_iter_
    np.testing.assert_allclose(large.decision_function(X, tasks=tasks), reference.decision_function(X, tasks=tasks),
                               atol=1e-5)
    np.testing.assert_allclose(large.coef_shared_, reference.coef_shared_, atol=1e-5)


def test_numpy_line_search_meets_both_wolfe_conditions() -> None:
    """Catches: a line search that stops at sufficient decrease (plain backtracking), which on a flat
    direction accepts a step far too short to say anything about the curvature."""
    c = 0.01  # f(x) = c x^2 / 2 from x = 1: the first step of 1 is 10x too short
    fun = lambda x: (0.5 * c * float(x @ x), c * x)  # noqa: E731
    x = np.ones(1)
    f, g = fun(x)
    d = -g
    slope = float(g @ d)
    x_new, f_new, g_new = objective._wolfe_step(fun, x, f, slope, d, 1.0)
    step = float((x_new - x)[0] / d[0])
    assert f_new <= f + 1e-4 * step * slope  # sufficient decrease
    assert float(g_new @ d) >= 0.9 * slope  # curvature: step >= 10
    assert 10 <= step <= 190  # and not past the far end of the Armijo interval (step < 2 / c)
    # A step that overshoots is cut back into the interval.
    x_new, f_new, _ = objective._wolfe_step(fun, x, f, slope, d, 1000.0)
    assert f_new <= f + 1e-4 * float((x_new - x)[0] / d[0]) * slope


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mu_search_users", -1, "mu_search_users must be >= 0 (0: search on all users)"),
    ("train_workers", 0, "train_workers must be at least 1"),
    ("mu_search_days", -1, "mu_search_days must be >= 0 (0: search every night)"),
])
def test_scale_settings_are_checked(field: str, value: int, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Settings(database_url="sqlite://", **{field: value})
    assert str(excinfo.value) == message


def test_training_workers_die_with_the_trainer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Catches: fold workers left running (holding their memory, blocked for ever) when the trainer is
    killed, e.g. by the out-of-memory killer."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(
        "import time\n"
        "from spamtl.parallel import executor\n"
        "pool = executor(2, kind='processes')\n"
        "futures = [pool.submit(time.sleep, 600) for _ in range(2)]\n"
        "print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30  # a generous budget, not a timing assertion
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == []


def test_blockwise_vectors_match_the_full_vectors_bit_for_bit() -> None:
    """Catches: a block left out, or a block's operation other than the elementwise one (a fit's penalty and
    preconditioner are kept per block, and fits must stay exactly what the full vectors gave)."""
    rng = np.random.default_rng(0)
    slices = {"a": slice(0, 3), "empty": slice(3, 3), "b": slice(3, 10), "c": slice(10, 11)}
    values = {"a": 0.3, "empty": 5.0, "b": 7.0, "c": 1e-3}
    full = np.concatenate([np.full(sl.stop - sl.start, values[k]) for k, sl in slices.items()])
    block = objective.Blockwise(slices, values)
    x = rng.normal(size=11)
    assert np.array_equal(block.times(x), x * full)
    assert np.array_equal(block.divide(x), x / full)
    assert np.array_equal(block.inverse().over(7.5).times(x), x * ((1.0 / full) / 7.5))
    y = x.copy()
    block.times(y, out=y)
    assert np.array_equal(y, x * full)


def test_loss_gradient_is_the_same_with_or_without_a_grouped_key_index() -> None:
    """Catches: the every-task-grouped shortcut (no index array) adding group weights to the wrong keys."""
    X, y, tasks, _ = make_problem(n_per_task=20)
    groups = np.array([f"g{int(t == tasks[0])}" for t in tasks], dtype=object)  # every task in a group
    tidx = np.unique(tasks, return_inverse=True)[1].astype(np.int64)
    names, gidx = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    task_group = np.zeros(tidx.max() + 1, np.int64)
    task_group[tidx] = gidx
    layout = objective.TaskLayout.build(sp.csr_matrix(X), tidx, len(task_group), task_group, len(names))
    y_pm = np.where(y == 1, 1.0, -1.0)
    loss = objective.MultiTaskLogisticLoss(layout, y_pm, np.ones(len(y)), tidx, task_group, alpha=0.5, mu=2.0,
                                           mu_group=3.0)
    assert isinstance(loss._grouped, slice)
    theta = np.random.default_rng(1).normal(size=loss.n_params)
    f, g = loss.loss_gradient(theta)
    loss._grouped = np.flatnonzero(layout.key_group >= 0)  # the general path, as for a store with ungrouped users
    loss._grouped_key = layout.key_group[loss._grouped]
    f2, g2 = loss.loss_gradient(theta)
    assert f == f2
    assert np.array_equal(g, g2)


@pytest.mark.parametrize("block_nnz", [1 << 23, 40, 1], ids=["one-block", "blocks", "a-task-a-block"])
def test_task_layout_keys_are_np_unique_of_task_and_column(block_nnz: int) -> None:
    """Catches: a lean key index that differs from the plain one (np.unique of task * d + column, of the
    keys' columns, and of group * d + column) on rows out of task order, empty rows, tasks without rows,
    tasks in no group, or repeated columns, built in one block of tasks or in several."""
    rng = np.random.default_rng(3)
    X = sp.random(60, 50, density=0.1, random_state=3, format="lil")
    X[5] = 0.0  # an empty row
    X = X.tocsr()
    task_index = rng.integers(0, 7, size=60).astype(np.int64)
    task_index[task_index == 4] = 5  # task 4 has no rows
    task_group = np.array([1, -1, 0, 1, 0, -1, 1], dtype=np.int64)  # tasks 1 and 5 in no group
    layout = objective.TaskLayout.build(X, task_index, 7, task_group, 2, block_nnz=block_nnz)
    key = np.repeat(task_index, np.diff(X.indptr)) * 50 + X.indices
    keys, inverse = np.unique(key, return_inverse=True)
    np.testing.assert_array_equal(layout.key_cols, keys % 50)
    shared_cols, key_shared = np.unique(keys % 50, return_inverse=True)
    np.testing.assert_array_equal(layout.shared_cols, shared_cols)
    np.testing.assert_array_equal(layout.key_shared, key_shared)
    kg = task_group[keys // 50]
    gkeys, ginv = np.unique(kg[kg >= 0] * 50 + (keys % 50)[kg >= 0], return_inverse=True)
    np.testing.assert_array_equal(layout.group_cols, gkeys % 50)
    np.testing.assert_array_equal(layout.group_offsets, np.searchsorted(gkeys // 50, np.arange(3)))
    expected_group = np.full(len(keys), -1, dtype=np.int64)
    expected_group[kg >= 0] = ginv
    np.testing.assert_array_equal(layout.key_group, expected_group)
    np.testing.assert_array_equal(layout.task_offsets, np.searchsorted(keys // 50, np.arange(8)))
    np.testing.assert_array_equal(layout.Xk.indices, inverse)
    np.testing.assert_array_equal(layout.Xk.data, X.data)
    np.testing.assert_allclose(layout.Xk.toarray()[:, :], np.array(
        [[X[i, layout.key_cols[k]] if keys[k] // 50 == task_index[i] else 0.0 for k in range(len(keys))]
         for i in range(60)]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; elsewhere a no-op")
def test_return_free_memory_gives_freed_heap_back_to_the_system() -> None:
    """Catches: a no-op (cross-fitting workers then hold their folds' freed memory through the final fit).
    Freed arrays below the mmap threshold stay in the heap (the control run shows it) until trimmed."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from spamtl.parallel import return_free_memory
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        blocks = [np.ones(12_000) for _ in range(5_000)]  # 96 KB each, 480 MB
        keep = blocks[-1]  # the heap's top stays in use: free alone cannot shrink it
        del blocks
        if sys.argv[1] == "trim":
            return_free_memory()
        print(rss())
    """)
    held, trimmed = (int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                        check=True, cwd=str(Path(__file__).parents[2])).stdout)
                     for mode in ("control", "trim"))
    assert held > 400 * 2**20  # the freed blocks are still counted without a trim
    assert trimmed < held - 300 * 2**20


def test_a_warm_started_candidate_leaves_the_active_model_as_it_was() -> None:
    """Catches: a warm start that fits the active model itself (the active model in memory would become the
    candidate, which the gate may refuse) or that differs from starting from a full copy of it."""
    data = _store_like(6, 1.0, per_user=30, d=120)
    params = {"task_weighting": "sample", "tol": 1e-6, "max_iter": 500, "idf": True, "alpha": 0.01, "mu": 3.0}
    active = fit_candidate(data.subset(np.arange(0, len(data.y), 2)), data.y[::2], {**params, "mu": 10.0})
    before = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in vars(active).items() if k.endswith("_")}
    candidate = fit_candidate(data, data.y, params, warm=active)
    assert active.mu == 10.0 and candidate.mu == 3.0
    for name, value in before.items():
        now = getattr(active, name)
        if sp.issparse(value):
            assert (value != now).nnz == 0, name
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(now, value, err_msg=name)
    reference = MultiTaskLogisticRegression.from_weights(active.to_weights())
    reference.set_params(**params, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference.fit(data.X, data.y, tasks=data.users)
    np.testing.assert_array_equal(candidate.coef_shared_, reference.coef_shared_)
    assert candidate.n_iter_ == reference.n_iter_


def test_the_mean_shared_part_averages_each_group_over_the_folds_that_have_it() -> None:
    """Catches: group parts dropped or averaged over folds that lack the group (a start further from the
    optimum), or the shared part not averaged."""
    from spamtl.services.training import mean_shared_part

    data = _store_like(9, 1.0, per_user=30, d=80)
    data.groups = np.array(["g" + str(int(u[1:]) % 3) for u in data.users], dtype=object)
    params = {"task_weighting": "sample", "tol": 1e-6, "max_iter": 500, "idf": False, "alpha": 0.1, "mu": 3.0}
    fits = []
    for users in (["u000", "u001", "u002", "u004"], ["u003", "u004", "u005", "u007"], ["u001", "u004", "u007"]):
        rows = np.flatnonzero(np.isin(data.users, users))
        fits.append(fit_candidate(data.subset(rows), data.y[rows], params).without_tasks())
    assert [list(f.groups_) for f in fits] == [["g0", "g1", "g2"], ["g0", "g1", "g2"], ["g1"]]
    mean = mean_shared_part(fits)
    np.testing.assert_allclose(mean.coef_shared_, (fits[0].coef_shared_ + fits[1].coef_shared_
                                                   + fits[2].coef_shared_) / 3)
    assert list(mean.groups_) == ["g0", "g1", "g2"]
    dense = [f.coef_groups_.toarray() for f in fits]
    np.testing.assert_allclose(mean.coef_groups_.toarray(),
                               [(dense[0][0] + dense[1][0]) / 2, (dense[0][1] + dense[1][1] + dense[2][0]) / 3,
                                (dense[0][2] + dense[1][2]) / 2])
    np.testing.assert_allclose(mean.intercept_groups_, [
        (fits[0].intercept_groups_[0] + fits[1].intercept_groups_[0]) / 2,
        (fits[0].intercept_groups_[1] + fits[1].intercept_groups_[1] + fits[2].intercept_groups_[0]) / 3,
        (fits[0].intercept_groups_[2] + fits[1].intercept_groups_[2]) / 2])
    assert len(mean.tasks_) == 0 and not np.array_equal(mean.coef_shared_, fits[0].coef_shared_)
