"""Initializations: k-means|| + Lloyd on dask blocks, random and minmax (pyGMMis)."""

import warnings

import dask.array as da
import numpy as np
from scipy.special import gamma

import daskgmmis as dg
from daskgmmis import init
from daskgmmis.blocks import compute as _compute
from daskgmmis.em import _Plan, _summary_task
from daskgmmis.init import DataSummary, init_kmeans, init_minmax, init_random, sphere_scale


def _plan(x, chunks):
    """A fit's data plan over a numpy array or an existing dask array."""
    if isinstance(x, np.ndarray):
        x = da.from_array(x, chunks=(chunks, x.shape[1]))
    return _Plan(x, None, "none")


def _kmeans(X, K, seed=0, chunks=700, **kwargs):
    plan = _plan(X, chunks)
    summary = _compute(plan.summary_graph(), None)
    return init_kmeans(K, plan, summary, np.random.default_rng(seed), None, **kwargs)


def _blobs(centres, n_each, rng, sd=1.0):
    centres = np.asarray(centres, dtype=float)
    X = np.concatenate([c + sd * rng.standard_normal((n_each, centres.shape[1]))
                        for c in centres])
    return X[rng.permutation(len(X))]


def _check_params(amp, mean, covar, K, D):
    assert amp.shape == (K,) and mean.shape == (K, D) and covar.shape == (K, D, D)
    assert np.isfinite(amp).all() and np.isfinite(mean).all() and np.isfinite(covar).all()
    assert (amp > 0).all() and abs(amp.sum() - 1) < 1e-12
    np.testing.assert_allclose(covar, np.swapaxes(covar, 1, 2))
    assert (np.linalg.eigvalsh(covar) > 0).all()


def _match(found, truth):
    """Distance from every true centre to the nearest found one."""
    return np.sqrt(((truth[:, None, :] - found[None]) ** 2).sum(-1)).min(axis=1)


# ------------------------------------------------------------------------ k-means


def test_kmeans_resolves_two_overlapping_blobs():
    rng = np.random.default_rng(0)
    X = _blobs([[-1.5, 0.0], [1.5, 0.0]], 3000, rng)
    amp, mean, covar = _kmeans(X, 2)
    _check_params(amp, mean, covar, 2, 2)
    order = np.argsort(mean[:, 0])
    # the blobs overlap, so each cluster is a truncated blob: centre beyond 1.5,
    # x-variance below 1
    assert -2.0 < mean[order[0], 0] < -1.4 and 1.4 < mean[order[1], 0] < 2.0
    np.testing.assert_allclose(mean[:, 1], 0.0, atol=0.1)
    np.testing.assert_allclose(amp, 0.5, atol=0.03)
    assert (covar[:, 0, 0] < 1.0).all() and np.allclose(covar[:, 1, 1], 1.0, atol=0.1)


def test_kmeans_finds_twenty_blobs_in_seven_dimensions():
    rng = np.random.default_rng(1)
    truth = rng.uniform(-12, 12, size=(20, 7))
    X = _blobs(truth, 250, rng, sd=0.5)
    amp, mean, covar = _kmeans(X, 20, seed=3, chunks=1000)
    _check_params(amp, mean, covar, 20, 7)
    assert _match(mean, truth).max() < 0.2
    np.testing.assert_allclose(amp, 1 / 20, atol=0.005)
    np.testing.assert_allclose(np.diagonal(covar, axis1=1, axis2=2), 0.25, rtol=0.3)


def test_kmeans_zarr_equals_numpy_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(2)
    X = _blobs([[0, 0, 0], [6, 0, 1], [0, 7, -3]], 1500, rng)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    cat = dg.write_catalog(tmp_path / "c.zarr", X, chunks=800)
    from_zarr = _kmeans(cat.data, 3, seed=7)          # streamed from Zarr, same chunks
    from_numpy = _kmeans(X, 3, seed=7, chunks=800)
    again = _kmeans(X, 3, seed=7, chunks=800)
    for a, b, c in zip(from_zarr, from_numpy, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
    other = _kmeans(X, 3, seed=8, chunks=800)
    assert _match(other[1], from_numpy[1]).max() < 0.05       # same clustering anyway


def test_kmeans_does_not_depend_on_the_number_of_workers(monkeypatch):
    rng = np.random.default_rng(4)
    X = _blobs(rng.uniform(-8, 8, size=(6, 3)), 500, rng)
    threaded = _kmeans(X, 6, seed=1, chunks=250)
    import dask
    monkeypatch.setattr(init, "compute",
                        lambda obj, client: dask.compute(obj, scheduler="synchronous")[0])
    serial = _kmeans(X, 6, seed=1, chunks=250)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)


def test_kmeans_is_missing_feature_aware():
    """30% missing values: the centres are found without a pull towards 0 (no zero
    filling) and the covariances are not shrunk."""
    rng = np.random.default_rng(5)
    truth = np.array([[5.0, 5.0, 20.0], [15.0, 12.0, 20.0], [5.0, 15.0, 30.0]])
    X = _blobs(truth, 2000, rng)
    complete_fit = _kmeans(X.copy(), 3, seed=2)
    X[rng.random(X.shape) < 0.3] = np.nan
    empty = np.isnan(X).all(axis=1)
    X = X[~empty]
    amp, mean, covar = _kmeans(X, 3, seed=2)
    _check_params(amp, mean, covar, 3, 3)
    assert _match(mean, truth).max() < 0.2
    assert _match(mean, complete_fit[1]).max() < 0.2
    np.testing.assert_allclose(np.diagonal(covar, axis1=1, axis2=2), 1.0, atol=0.2)
    np.testing.assert_allclose(np.sort(amp), 1 / 3, atol=0.03)


def test_kmeans_is_equivariant_under_similarity_transforms():
    """Distances are in data units: a common scale factor and a shift of the data
    (even far from the origin) carry over to the result."""
    rng = np.random.default_rng(6)
    X = _blobs([[0, 0], [4, 0], [0, 4]], 800, rng)
    base = _kmeans(X, 3, seed=0)
    moved = _kmeans(1000.0 * X + [0.0, 5e6], 3, seed=0)
    np.testing.assert_allclose(moved[1], 1000.0 * base[1] + [0.0, 5e6], rtol=1e-9, atol=1e-3)
    np.testing.assert_allclose(moved[2], 1e6 * base[2], rtol=1e-6)
    np.testing.assert_allclose(moved[0], base[0], rtol=1e-9)


def test_lloyd_reseeds_empty_clusters():
    """Three identical starting centres: two clusters are empty at first and get
    re-seeded at far rows; all three blobs end up resolved."""
    rng = np.random.default_rng(7)
    truth = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    X = _blobs(truth, 400, rng, sd=0.5)
    passes = init._KMeansPasses(_plan(X, 300), None)
    shift = np.zeros(2)
    start = np.repeat(X[:1], 3, axis=0)
    centres, n_iter, n_reseeded = init._lloyd(passes, shift, start, 30, 1e-8)
    assert n_reseeded >= 1
    assert _match(centres, truth).max() < 0.1
    assert (passes.lloyd(shift, centres).n > 0).all()


def test_kmeans_with_fewer_distinct_rows_than_components():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 7.0]]), 50, axis=0)
    amp, mean, covar = _kmeans(X, 5, chunks=40)
    _check_params(amp, mean, covar, 5, 2)
    assert _match(mean, X[::50]).max() < 1e-9
    big = np.sort(amp)[-3:]
    np.testing.assert_allclose(big, 50 / 152, rtol=1e-12)      # empty clusters: one row each


def test_fit_with_kmeans_init_resolves_both_blobs():
    rng = np.random.default_rng(8)
    X = _blobs([[-1.5, 0.0], [1.5, 0.0]], 2000, rng)
    g = dg.GMM(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        res = dg.fit(g, X, init_method="kmeans", rng=1, tol=1e-6, maxiter=300)
    assert np.isfinite(res.logL) and np.isfinite(g.covar).all()
    order = np.argsort(g.mean[:, 0])
    np.testing.assert_allclose(g.mean[order], [[-1.5, 0.0], [1.5, 0.0]], atol=0.2)
    np.testing.assert_allclose(g.amp, 0.5, atol=0.08)
    g2 = dg.GMM(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        dg.fit(g2, X, init_method="kmeans", rng=1, tol=1e-6, maxiter=300)
    np.testing.assert_array_equal(g.mean, g2.mean)


# ---------------------------------------------------------------- random / minmax


def _summary(X):
    return _summary_task(X, None, "none", None, 0)


def test_sphere_scale_matches_pygmmis():
    rng = np.random.default_rng(9)
    for D, K in [(1, 3), (2, 5), (3, 10), (7, 20)]:
        lo, hi = rng.uniform(-3, 0, D), rng.uniform(1, 4, D)
        vol = np.prod(hi - lo)
        expected = (vol / K * gamma(D * 0.5 + 1)) ** (1 / D) / np.sqrt(np.pi)
        assert np.isclose(sphere_scale(lo, hi, K), expected, rtol=1e-12)
        # K spheres of radius s fill the box's volume
        sphere_vol = np.pi ** (D / 2) / gamma(D / 2 + 1) * sphere_scale(lo, hi, K) ** D
        assert np.isclose(K * sphere_vol, vol, rtol=1e-12)


def test_minmax_and_random_follow_pygmmis_and_ignore_missing_values():
    rng = np.random.default_rng(10)
    X = rng.uniform([0, 10], [1, 30], size=(500, 2))
    X[::3, 1] = np.nan
    summary = _summary(X)
    s = sphere_scale(summary.lo, summary.hi, 4)
    amp, mean, covar = init_minmax(4, summary, np.random.default_rng(0))
    np.testing.assert_array_equal(amp, 0.25)
    assert ((mean >= summary.lo) & (mean <= summary.hi)).all()
    np.testing.assert_allclose(covar, s**2 * np.eye(2)[None].repeat(4, axis=0))
    rows = X[:4]                                   # row 0 and 3 miss feature 1
    amp, mean, covar = init_random(4, summary, rows, np.random.default_rng(0))
    assert np.isfinite(mean).all()
    # the missing feature was drawn inside the data range (+ jitter), not set to 0
    assert (mean[[0, 3], 1] > summary.lo[1] - 5 * s).all()
    assert isinstance(summary, DataSummary)
