"""Truncated catalogs: imputation recovers the population before selection."""

import pickle
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.selection import Box, Sigmoid


def fit_quiet(g, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        return dg.fit(g, X, **kw)


def perturbed(t):
    g = t.copy()
    g.mean = g.mean + 0.3
    g.covar = g.covar * 1.3
    g.amp = np.full(g.K, 1.0 / g.K)
    return g


def mixture_1d():
    t = dg.GMM(2, 1)
    t.amp = np.array([0.15, 0.85])
    t.mean = np.array([[-5.0], [0.0]])
    t.covar = np.array([[[1.0]], [[1.0]]])
    return t


def mixture_2d():
    t = dg.GMM(2, 2)
    t.amp = np.array([0.15, 0.85])
    t.mean = np.array([[-5.0, 1.0], [0.0, 0.0]])
    t.covar = np.array([[[1.0, 0.3], [0.3, 0.8]], [[1.0, 0.5], [0.5, 1.5]]])
    return t


def mixture_3():
    """Three components for the fractional selections (nothing cut away)."""
    t = dg.GMM(3, 2)
    t.amp = np.array([0.3, 0.4, 0.3])
    t.mean = np.array([[-3.0, 0.0], [1.0, 2.0], [2.0, -2.0]])
    t.covar = np.array([[[1.0, 0.3], [0.3, 0.8]], [[1.0, -0.4], [-0.4, 1.5]],
                        [[0.7, 0.0], [0.0, 0.5]]])
    return t


# Both cuts go through the mode of the dominant component (40% removed). Over
# seeds the truncated MLE's N_orig scatters by ~2% at these sizes (~4-5% at a
# quarter of them), so the stated tolerances are ~3 sigma of the estimator itself.
@pytest.mark.parametrize("truth, sel, N", [
    (mixture_1d(), Box(upper=[0.0]), 40_000),
    (mixture_2d(), Box(upper=[0.0, np.inf]), 60_000),
])
def test_hard_cut_recovers_population(truth, sel, N):
    X, _, N0 = dg.draw(truth, orig_size=N, sel_callback=sel, rng=3)
    removed = 1 - len(X) / N0
    assert removed >= 0.40
    g = perturbed(truth)
    res = fit_quiet(g, X, sel_callback=sel, init_method="none", tol=1e-5, rng=1)
    naive = perturbed(truth)
    fit_quiet(naive, X, init_method="none", tol=1e-5)
    # tolerances: a few times the sampling error of the truncated MLE at this N
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.04)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.15)
    np.testing.assert_allclose(g.covar, truth.covar, atol=0.2)
    assert abs(res.N_orig / N0 - 1) < 0.06
    assert abs(g.amp.sum() - 1) < 1e-12
    # the naive fit is biased far beyond those tolerances
    assert np.abs(naive.amp - truth.amp).max() > 0.1
    assert np.abs(naive.mean - truth.mean).max() > 0.5
    assert abs(len(X) / N0 - 1) > 0.4


def test_constant_fractional_selection_keeps_amplitudes():
    truth = mixture_3()
    const = lambda x: np.full(len(x), 0.5)            # noqa: E731 - a plain user callable
    X, _, N0 = dg.draw(truth, orig_size=20_000, sel_callback=const, rng=4)
    g = truth.copy()
    res = fit_quiet(g, X, sel_callback=const, init_method="none", tol=1e-6, rng=2)
    assert abs(g.amp.sum() - 1) < 1e-12
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.02)
    # N_orig = N / 0.5 up to the importance weights' Monte-Carlo error (the fixed
    # sample is drawn from widened components), which the fit reports
    assert res.N_orig == pytest.approx(2 * len(X), rel=1e-5)
    assert abs(res.N_orig - 2 * len(X)) < 3 * res.mc_error["N_orig"]


def test_position_dependent_fractional_selection_is_unbiased():
    truth = mixture_3()
    sel = Sigmoid(0, threshold=0.0, width=1.0, direction=-1)     # fades out to the right
    X, _, N0 = dg.draw(truth, orig_size=20_000, sel_callback=sel, rng=5)
    g = perturbed(truth)
    res = fit_quiet(g, X, sel_callback=sel, init_method="none", tol=1e-5, rng=3)
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.04)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.15)
    assert abs(res.N_orig / N0 - 1) < 0.05


def test_truncation_with_noise_and_missing_entries():
    truth = mixture_2d()
    sel = Box(upper=[0.0, np.inf])
    noise = np.diag([0.3, 0.2])
    cov_cb = lambda x: noise                                      # noqa: E731
    X, S, N0 = dg.draw(truth, orig_size=40_000, sel_callback=sel, covar_callback=cov_cb, rng=6)
    rng = np.random.default_rng(7)
    X = X.copy()
    X[rng.random(len(X)) < 0.15, 1] = np.nan     # feature 1 missing in 15% of rows
    g = perturbed(truth)
    res = fit_quiet(g, X, covar=noise, sel_callback=sel, covar_callback=cov_cb,
                    init_method="none", tol=1e-5, rng=4)
    # noise and missing values widen the estimator's scatter (~3% in N_orig)
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.05)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.2)
    np.testing.assert_allclose(g.covar, truth.covar, atol=0.3)
    assert abs(res.N_orig / N0 - 1) < 0.09


def test_imputation_deterministic_and_worker_independent(cluster_client, tmp_path):
    truth = mixture_2d()
    sel = Box(upper=[1.0, np.inf])
    X, _, _ = dg.draw(truth, orig_size=6000, sel_callback=sel, rng=8)
    path = tmp_path / "trunc.zarr"
    dg.write_catalog(path, X, chunks=1000)
    kw = dict(sel_callback=sel, init_method="none", maxiter=8, tol=0, rng=11)
    a, b, c = perturbed(truth), perturbed(truth), perturbed(truth)
    ra = fit_quiet(a, str(path), **kw)
    rb = fit_quiet(b, str(path), **kw)
    rc = fit_quiet(c, str(path), client=cluster_client, **kw)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert ra.N_orig == rb.N_orig
    np.testing.assert_allclose(c.mean, a.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(c.covar, a.covar, rtol=0, atol=1e-10)
    assert rc.N_orig == pytest.approx(ra.N_orig, rel=1e-12)
    d = perturbed(truth)
    rd = fit_quiet(d, str(path), **{**kw, "rng": 12})
    assert rd.N_orig != ra.N_orig          # the seed matters


def test_driver_memory_independent_of_imputed_rows(cluster_client, tmp_path):
    truth = mixture_2d()
    sel = Box(upper=[1.0, np.inf])
    X, _, _ = dg.draw(truth, orig_size=20_000, sel_callback=sel, rng=9)
    path = tmp_path / "mem.zarr"
    dg.write_catalog(path, X, chunks=2000)
    peaks = {}
    for oversampling in (1, 50):   # ~25k vs ~1.2M candidates per iteration
        tracemalloc.start()
        fit_quiet(perturbed(truth), str(path), sel_callback=sel, init_method="none",
                  maxiter=2, tol=0, rng=1, oversampling=oversampling, client=cluster_client)
        peaks[oversampling] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 1.2M candidates x 2 features x 8 B = 19 MB if they reached the driver
    assert peaks[50] < peaks[1] + 4e6, peaks


def zero_at_left(x):
    return (x[:, 0] > -2.0).astype(float)


@pytest.mark.parametrize("callback, words", [
    (lambda x: np.ones(len(x) + 1), "shape"),
    (lambda x: np.full(len(x), 1.5), r"\[0, 1\]"),
    (lambda x: np.full(len(x), np.nan), "NaN"),
    (lambda x: 1 / 0, "raised"),
])
def test_misbehaving_selection_callbacks(callback, words):
    X = mixture_2d().draw(500, rng=1)
    with pytest.raises(dg.CallbackError, match=words):
        dg.fit(dg.GMM(2, 2), X, sel_callback=callback, maxiter=2)


def test_zero_selection_on_observed_rows_names_them():
    X = mixture_2d().draw(500, rng=1)
    n_zero = int((X[:, 0] <= -2.0).sum())
    with pytest.raises(dg.CallbackError, match=rf"returned 0 for {n_zero} observed rows"):
        dg.fit(dg.GMM(2, 2), X, sel_callback=zero_at_left, maxiter=2)


def test_unpicklable_callback_on_distributed_client(cluster_client):
    lock = threading.Lock()

    def holds_a_lock(x):
        with lock:
            return np.ones(len(x))

    with pytest.raises(TypeError):
        pickle.dumps(lock)
    X = mixture_2d().draw(500, rng=1)
    with pytest.raises(dg.CallbackError, match="sel_callback.*pickl"):
        dg.fit(dg.GMM(2, 2), X, sel_callback=holds_a_lock, client=cluster_client)
