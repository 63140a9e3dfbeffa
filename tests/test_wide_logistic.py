"""The preconditioned logistic regression (probes/wide_logistic.py) against scikit-learn's, on digits."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from cvae_features.errors import ConfigError
from cvae_features.probes.linear import WIDE_COLUMNS, resolve_solver
from cvae_features.probes.wide_logistic import LowRankSketch, PreconditionedLogistic, _Preconditioner


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400]


def _objective(model, X, y, C):
    """scikit-learn's lbfgs objective at the model's coefficients: mean log-loss + ||W||^2 / (2 C n)."""
    from sklearn.metrics import log_loss

    scores = X @ model.coef_.T + model.intercept_
    if scores.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        proba = np.c_[1 - p1, p1]
    else:
        proba = np.exp(scores - scores.max(1, keepdims=True))
        proba /= proba.sum(1, keepdims=True)
    return log_loss(y, proba, labels=model.classes_) + np.sum(model.coef_ ** 2) / (2 * C * X.shape[0])


@pytest.mark.parametrize("C", [0.05, 5.0])
@pytest.mark.parametrize("classes", ["multiclass", "binary"])
def test_reaches_scikit_learns_optimum(digits, C, classes):
    X, y = digits
    y = np.array([3, 5, 9])[y % 3] if classes == "multiclass" else np.where(y > 4, 8, 2)  # labels not 0..k-1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=20_000).fit(X, y)
    ours = PreconditionedLogistic(C, tol=1e-10, max_iter=20_000, rank=10).fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    assert np.array_equal(ours.classes_, ref.classes_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=2e-4)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=2e-3)
    assert np.array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), atol=2e-3)
    assert _objective(ours, X, y, C) == pytest.approx(_objective(ref, X, y, C), rel=1e-9)
    assert 0 < ours.n_iter_[0] < ref.n_iter_[0] / 2  # the point of it: far fewer iterations


@pytest.mark.parametrize("binary", [False, True])
def test_objective_and_gradient(digits, binary):
    X, y = digits
    X, y = X[:60], (y[:60] > 4).astype(int) if binary else y[:60] % 4
    model = PreconditionedLogistic(0.3)
    model._binary = binary
    k = 1 if binary else 4
    Y = np.eye(2 if binary else 4)[y]
    Wb = np.random.default_rng(0).normal(0, 0.1, (k, X.shape[1] + 1))
    lam = 1 / (0.3 * 60)
    loss, grad, P = model._loss_grad(X, Y, Wb, lam)
    model.coef_, model.intercept_, model.classes_ = Wb[:, :-1], Wb[:, -1], np.arange(Y.shape[1])
    assert loss == pytest.approx(_objective(model, X, y, 0.3), rel=1e-12)
    np.testing.assert_allclose(P.sum(1), 1.0)
    step = 1e-6
    for i, j in [(0, 0), (0, 20), (k - 1, 35), (k - 1, 64), (0, 64)]:  # column 64: the intercept
        hi, lo = Wb.copy(), Wb.copy()
        hi[i, j] += step
        lo[i, j] -= step
        numeric = (model._loss_grad(X, Y, hi, lam)[0] - model._loss_grad(X, Y, lo, lam)[0]) / (2 * step)
        assert grad[i, j] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_stops_by_scikit_learns_rule(digits):
    X, y = digits
    model = PreconditionedLogistic(1.0, tol=1e-3, rank=10, warm_start=True).fit(X, y)
    Y = np.eye(10)[y]
    lam = 1 / X.shape[0]
    Wb = np.c_[model.coef_, model.intercept_]
    assert np.abs(model._loss_grad(X, Y, Wb, lam)[1]).max() <= 1e-3  # stopped with the gradient within tol
    first = model.n_iter_[0]
    assert first > 0
    model.fit(X, y)  # warm start at a point that already meets tol: no iteration, nothing moves
    assert model.n_iter_[0] == 0
    np.testing.assert_array_equal(np.c_[model.coef_, model.intercept_], Wb)
    model.set_params(C=10.0, tol=1e-12).fit(X, y)  # a new C from the last solution
    assert model.n_iter_[0] > 0 and not np.array_equal(np.c_[model.coef_, model.intercept_], Wb)
    capped = PreconditionedLogistic(1.0, tol=1e-12, max_iter=3, rank=10).fit(X, y)
    assert capped.n_iter_[0] == 3  # max_iter respected (the probe records it as not converged)
    cold = PreconditionedLogistic(1.0, tol=1e-3, rank=10).fit(X, y)
    assert cold.n_iter_[0] == first  # same start, same path: deterministic
    np.testing.assert_array_equal(np.c_[cold.coef_, cold.intercept_], Wb)


def test_warm_start_only_from_a_matching_fit(digits):
    X, y = digits
    model = PreconditionedLogistic(1.0, tol=1e-3, rank=10, warm_start=True).fit(X, y)
    fresh = PreconditionedLogistic(1.0, tol=1e-3, rank=10)
    model.fit(X[:, 1:], y)  # other columns: a cold start, as from a new model
    np.testing.assert_array_equal(model.coef_, fresh.fit(X[:, 1:], y).coef_)
    model.fit(X, y % 5)  # other classes: a cold start too
    np.testing.assert_array_equal(model.coef_, fresh.fit(X, y % 5).coef_)
    off = PreconditionedLogistic(1.0, tol=1e-3, rank=10, warm_start=False).fit(X, y)
    assert off.fit(X, y).n_iter_[0] > 0  # without warm_start every fit starts at zero


def test_sketch_is_kept_for_the_same_array_only(digits):
    X, y = digits
    model = PreconditionedLogistic(1.0, rank=5).fit(X, y)
    sketch = model._sketch
    model.set_params(C=2.0).fit(X, y)
    assert model._sketch is sketch
    model.fit(X.copy(), y)
    assert model._sketch is not sketch


def test_low_rank_sketch_is_the_top_of_the_spectrum():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 12))  # rank 4 (5 with the ones column)
    sk = LowRankSketch(X, rank=5, rows=100, seed=0)
    A = np.c_[X, np.ones(50)]
    exact = np.linalg.svd(A, compute_uv=False) ** 2 / 50
    np.testing.assert_allclose(sk.values, exact[:5], rtol=1e-8)
    np.testing.assert_allclose(sk.vectors.T @ sk.vectors, np.eye(5), atol=1e-10)
    assert sk.rest == pytest.approx(0.0, abs=1e-9)  # nothing left outside the top 5
    small = LowRankSketch(X, rank=2, rows=30, seed=0)  # 30 of the 50 rows, top 2
    assert small.vectors.shape == (13, 2)
    total = None
    for seed in (0,):
        picked = np.sort(np.random.default_rng(seed).choice(50, 30, replace=False))
        B = A[picked]
        s = np.linalg.svd(B, compute_uv=False) ** 2 / 30
        total = float((B ** 2).sum()) / 30
        np.testing.assert_allclose(small.values, s[:2], rtol=1e-6)
    assert small.rest == pytest.approx((total - small.values.sum()) / 11)
    assert LowRankSketch(X[:3], rank=300, rows=100, seed=0).vectors.shape == (13, 2)  # rank capped by the rows


def test_preconditioner_powers():
    rng = np.random.default_rng(2)
    sk = LowRankSketch(rng.normal(size=(40, 9)), rank=3, rows=40, seed=0)
    pre = _Preconditioner(sk, curvature=0.2, lam=0.05)
    V = sk.vectors
    M = V @ np.diag(0.2 * sk.values + 0.05) @ V.T + (0.2 * sk.rest + 0.05) * (np.eye(10) - V @ V.T)
    W = rng.normal(size=(4, 10))
    np.testing.assert_allclose(pre.power(W, 1.0), W @ M, rtol=1e-10)
    np.testing.assert_allclose(pre.power(pre.power(W, 0.5), 0.5), W @ M, rtol=1e-10)
    np.testing.assert_allclose(pre.power(pre.power(W, -0.5), 0.5), W, rtol=1e-10)


def test_bad_input(digits):
    X, y = digits
    with pytest.raises(ConfigError, match="at least 2 classes, got 1"):
        PreconditionedLogistic().fit(X, np.zeros(len(y), int))
    with pytest.raises(ConfigError, match="unknown parameter 'penalty'"):
        PreconditionedLogistic().set_params(penalty="l1")


def test_resolve_solver():
    assert resolve_solver("auto", WIDE_COLUMNS - 1) == "lbfgs"
    assert resolve_solver("auto", WIDE_COLUMNS) == "preconditioned"
    assert WIDE_COLUMNS == 1024
    assert resolve_solver("lbfgs", 50_000) == "lbfgs"
    assert resolve_solver("preconditioned", 3) == "preconditioned"
    with pytest.raises(ConfigError, match="solver"):
        resolve_solver("newton", 10)


def test_mixed_precision_meets_the_rule_in_float64(digits):
    X, y = digits
    tight = {p: PreconditionedLogistic(0.5, tol=1e-9, rank=10, precision=p).fit(X, y) for p in ("mixed", "float64")}
    np.testing.assert_allclose(tight["mixed"].coef_, tight["float64"].coef_, atol=1e-6)
    assert tight["mixed"]._low.dtype == np.float32 and tight["float64"]._low is None
    loose = PreconditionedLogistic(0.5, tol=1e-3, rank=10).fit(X, y)  # float32 products only, checked in float64
    Wb = np.c_[loose.coef_, loose.intercept_]
    grad = loose._loss_grad(X, np.eye(10)[y], Wb, 1 / (0.5 * X.shape[0]))[1]
    assert 1e-4 < np.abs(grad).max() <= 1e-3
    low = loose._loss_grad(X.astype(np.float32), np.eye(10)[y], Wb, 1 / (0.5 * X.shape[0]))
    assert low[0] == pytest.approx(loose._loss_grad(X, np.eye(10)[y], Wb, 1 / (0.5 * X.shape[0]))[0], rel=1e-6)
    with pytest.raises(ConfigError, match="precision"):
        PreconditionedLogistic(precision="float16").fit(X, y)


# ---------------------------------------------------------------- mutation testing (benchmarks/mutation.py, group wide)

def _start(model, X, y, C):
    """(Y, lam, zero start, float64 gradient at it, P) as fit computes them."""
    classes, codes = np.unique(y, return_inverse=True)
    model._binary = classes.size == 2
    Y = np.eye(classes.size)[codes]
    lam = 1.0 / (float(C) * X.shape[0])
    W0 = np.zeros((1 if model._binary else classes.size, X.shape[1] + 1))
    _, grad, P = model._loss_grad(X, Y, W0, lam)
    return Y, lam, W0, grad, P


def _gmax(model, X, y, C, data=None):
    """max |gradient| of the objective at the model's coefficients, products with ``data`` (default X)."""
    Y, lam, _, _, _ = _start(model, X, y, C)
    Wb = np.c_[model.coef_, model.intercept_]
    return float(np.abs(model._loss_grad(X if data is None else data, Y, Wb, lam)[1]).max())


@pytest.mark.parametrize("case", ["met_in_float32", "float64_phase", "capped_in_float64"])
def test_fit_is_the_sketch_the_start_curvature_and_two_lbfgs_phases(digits, case):
    """fit written out: sketch of the float32 copy, curvature mean p(1-p) at the start, L-BFGS on float32 products
    until the rule holds (checked in float64), else on float64 from there with the iterations left."""
    X, y = digits[0][:200], digits[1][:200] % 4
    C, rank = 0.7, 8
    helper = PreconditionedLogistic(C, rank=rank)
    Y, lam, W0, _, P = _start(helper, X, y, C)
    low = X.astype(np.float32)
    sketch = LowRankSketch(low, rank, 4000, 0)
    pre = _Preconditioner(sketch, float(np.mean(P * (1.0 - P))), lam)
    tol, max_iter = {"met_in_float32": (1e-3, 1000), "float64_phase": (1e-8, 1000)}.get(case, (1e-13, None))
    if max_iter is None:  # two iterations into the float64 phase
        helper.tol = tol
        max_iter = helper._lbfgs(low, X, Y, W0, lam, pre, 1000)[1] + 2
    helper.tol = tol
    W, used, met = helper._lbfgs(low, X, Y, W0, lam, pre, max_iter)
    phases = 1
    if not met and used < max_iter:
        W, more, met = helper._lbfgs(X, X, Y, W, lam, pre, max_iter - used)
        used, phases = used + more, 2
    assert (phases, met) == {"met_in_float32": (1, True), "float64_phase": (2, True),
                             "capped_in_float64": (2, False)}[case]
    model = PreconditionedLogistic(C, tol=tol, max_iter=max_iter, rank=rank).fit(X, y)
    np.testing.assert_array_equal(model._sketch.values, sketch.values)  # the sketch of the float32 copy
    assert model.n_iter_[0] == used
    np.testing.assert_array_equal(np.c_[model.coef_, model.intercept_], W)
    if case == "capped_in_float64":
        assert used == max_iter


def test_the_rule_is_checked_on_the_float64_gradient_when_float32_says_met(digits):
    # features not exact in float32 (x 0.3 + 3.3): find an iteration j where the float32 gradient first meets a tol
    # that the float64 one does not; the fit must go on past j (in float64) and end within tol in float64
    X, y = digits[0][:200] * 0.3 + 3.3, (digits[1][:200] > 4).astype(int)
    low, best32, found = X.astype(np.float32), np.inf, None
    for j in range(1, 40):
        at = PreconditionedLogistic(1.0, tol=1e-13, max_iter=j, rank=10).fit(X, y)
        g32, g64 = _gmax(at, X, y, 1.0, low), _gmax(at, X, y, 1.0)
        if g32 < g64 and (g32 + g64) / 2 < best32:
            found = j, (g32 + g64) / 2
            break
        best32 = min(best32, g32)
    assert found is not None
    j, tol = found
    model = PreconditionedLogistic(1.0, tol=tol, rank=10).fit(X, y)
    assert model.n_iter_[0] > j and _gmax(model, X, y, 1.0) <= tol


def test_ties_with_tol_stop(digits):
    """The rule is 'max |gradient| <= tol': a gradient exactly at tol stops (at the start, or at an iteration)."""
    X, y = digits[0][:150], digits[1][:150] % 3
    g0 = float(np.abs(_start(PreconditionedLogistic(), X, y, 1.0)[3]).max())
    at_start = PreconditionedLogistic(1.0, tol=g0, rank=6).fit(X, y)
    assert at_start.n_iter_[0] == 0 and not at_start.coef_.any() and not at_start.intercept_.any()
    for precision in ("float64", "mixed"):
        best, j = np.inf, None
        for it in range(1, 12):
            m = PreconditionedLogistic(1.0, tol=1e-13, max_iter=it, rank=6, precision=precision).fit(X, y)
            g64 = _gmax(m, X, y, 1.0)
            g32 = _gmax(m, X, y, 1.0, X.astype(np.float32)) if precision == "mixed" else g64
            if it >= 3 and g64 < best and g32 <= g64:
                j, coef = it, np.c_[m.coef_, m.intercept_]
                break
            best = min(best, g64)
        assert j is not None
        tied = PreconditionedLogistic(1.0, tol=g64, rank=6, precision=precision).fit(X, y)
        assert tied.n_iter_[0] == j
        np.testing.assert_array_equal(np.c_[tied.coef_, tied.intercept_], coef)


def test_lbfgs_is_called_as_scikit_learn_calls_it(digits, monkeypatch):
    """The same scipy L-BFGS-B call as scikit-learn's lbfgs (method, line-search length, ftol), gtol 0 (the rule is
    ours), the iterations left as maxiter, and no warning."""
    import scipy.optimize

    real, calls = scipy.optimize.minimize, []

    def spy(fun, x0, *args, **kwargs):
        calls.append(kwargs)
        return real(fun, x0, *args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 7 iterations
        LogisticRegression(max_iter=7).fit(X, y)
    (ref,) = calls
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PreconditionedLogistic(1.0, max_iter=7, rank=10, precision="float64").fit(X, y)
    (ours,) = calls
    assert ours["method"] == ref["method"] == "L-BFGS-B" and ours["jac"] is True
    assert ours["options"] == {"maxiter": 7, "maxls": ref["options"]["maxls"], "gtol": 0.0,
                               "ftol": ref["options"]["ftol"]}


def test_float32_products_in_the_first_phase(digits):
    X, y = digits[0][:80] * 0.3 + 0.11, digits[1][:80] % 3
    model = PreconditionedLogistic()
    model._binary = False
    Wb = np.random.default_rng(4).normal(0, 0.3, (3, X.shape[1] + 1))
    low = X.astype(np.float32)
    expected = (low @ Wb[:, :-1].T.astype(np.float32)).astype(np.float64) + Wb[:, -1]
    np.testing.assert_array_equal(model._logits(low, Wb), expected)
    assert not np.array_equal(model._logits(low, Wb), model._logits(X, Wb))  # not float64 in disguise
    # the input is taken in float64 whatever its dtype: a float32 array fits as its float64 copy
    a = PreconditionedLogistic(0.5, tol=1e-8, rank=5, precision="float64").fit(low, y)
    b = PreconditionedLogistic(0.5, tol=1e-8, rank=5, precision="float64").fit(low.astype(np.float64), y)
    np.testing.assert_array_equal(np.c_[a.coef_, a.intercept_], np.c_[b.coef_, b.intercept_])
    # a new precision on the same array makes a new sketch (the float32 copy only for 'mixed')
    model = PreconditionedLogistic(0.5, rank=5).fit(X, y)
    assert model._low.dtype == np.float32
    model.set_params(precision="float64").fit(X, y)
    assert model._low is None and model._sketch.values.dtype == np.float64


def test_defaults_private_names_ties_and_messages(digits):
    m = PreconditionedLogistic()
    ref = LogisticRegression()
    assert (m.C, m.tol) == (ref.C, ref.tol) == (1.0, 1e-4)
    assert (m.max_iter, m.warm_start, m.rank, m.sketch_rows, m.precision, m.seed) == (1000, False, 300, 4000,
                                                                                       "mixed", 0)
    with pytest.raises(ConfigError, match="unknown parameter '_low_for'"):
        m.set_params(_low_for="float64")  # an attribute, but a private one
    with pytest.raises(ConfigError, match="^precision: expected one of"):
        PreconditionedLogistic(precision="half").fit(*digits)
    with pytest.raises(ConfigError, match="^solver: expected one of"):
        resolve_solver("newton", 10)
    # a score of exactly 0 picks the first class, as scikit-learn's predict does
    m.coef_, m.intercept_, m.classes_, m._binary = np.array([[1.0, -1.0]]), np.array([0.0]), np.array([2, 8]), True
    ref.coef_, ref.intercept_, ref.classes_ = m.coef_, m.intercept_, m.classes_
    Xt = np.array([[2.0, 2.0], [3.0, 1.0], [1.0, 3.0]])
    assert m.predict(Xt).tolist() == ref.predict(Xt).tolist() == [2, 8, 2]
    scores = m.decision_function(Xt.astype(np.longdouble))  # float64 scores whatever the input's dtype
    assert scores.dtype == np.float64 and scores.tolist() == [0.0, 2.0, -2.0]


def test_sketch_rank_one_rank_d_and_the_randomized_svd_settings():
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 6))
    A = np.c_[X, np.ones(40)]
    exact = np.linalg.svd(A, compute_uv=False) ** 2 / 40
    one = LowRankSketch(X, rank=1, rows=40, seed=0)
    assert one.vectors.shape == (7, 1)
    np.testing.assert_allclose(one.values, exact[:1], rtol=1e-6)
    full = LowRankSketch(X, rank=6, rows=40, seed=0)  # all but one direction: the rest is the last eigenvalue
    np.testing.assert_allclose(full.values, exact[:6], rtol=1e-8)
    assert full.rest == pytest.approx(exact[6], rel=1e-6)
    # a full-rank wide matrix: the sketch is scikit-learn's randomized SVD (10 oversamples, 2 power iterations)
    Xw = rng.normal(size=(60, 80))
    picked = np.sort(np.random.default_rng(3).choice(60, 50, replace=False))
    _, s, vt = randomized_svd(np.c_[Xw[picked], np.ones(50)], 4, n_oversamples=10, n_iter=2, random_state=3)
    wide = LowRankSketch(Xw, rank=4, rows=50, seed=3)
    np.testing.assert_array_equal(wide.values, s ** 2 / 50)
    np.testing.assert_array_equal(wide.vectors, vt.T)


def test_fit_logistic_builds_the_preconditioned_model_warm_seeded_and_capped(digits, monkeypatch):
    import cvae_features.probes.linear as linear

    X, y = digits[0][:150], digits[1][:150] % 3
    capped = linear._fit_logistic(X, y, 1.0, 3, solver="preconditioned", seed=7)
    assert isinstance(capped, PreconditionedLogistic) and (capped.seed, capped.max_iter, capped.warm_start) == (7, 3, True)
    assert capped.n_iter_[0] == 3 and capped.C == 1.0
    assert linear._fit_logistic(X, y, 1.0, 3, solver="preconditioned").seed == 0  # linear_probe's default seed
    done = linear._fit_logistic(X, y, 0.5, 1000, solver="preconditioned")
    assert done.n_iter_[0] > 0
    again = linear._fit_logistic(X, y, 0.5, 1000, done, "preconditioned")  # warm: from a point that meets tol
    assert again is done and again.n_iter_[0] == 0
    started = linear._fit_logistic(X, y, 0.5, 1000, solver="preconditioned",
                                   start=(done.coef_.copy(), done.intercept_.copy(), done.classes_))
    assert started.n_iter_[0] == 0
    np.testing.assert_array_equal(started.coef_, done.coef_)
    # linear_probe hands its seed to every fit, the selection's and the refit
    seen, real = [], linear._fit_logistic

    def spy(X, y, C, max_iter, model=None, solver="lbfgs", seed=0, start=None):
        seen.append((solver, seed))
        return real(X, y, C, max_iter, model, solver, seed, start)

    monkeypatch.setattr(linear, "_fit_logistic", spy)
    linear.linear_probe(X[:100], y[:100], X[100:], y[100:], Cs=(0.1, 1.0), preprocessings=("none",),
                        solver="preconditioned", seed=3)
    assert seen == [("preconditioned", 3)] * 3
