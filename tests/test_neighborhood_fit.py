"""Neighborhood-restricted fits against unrestricted ones; order-preserving catalogs."""

import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.selection import Box


def fragmented(K=30, D=3, N=30_000, seed=0):
    rng = np.random.default_rng(seed)
    t = dg.GMM(K, D)
    t.amp = rng.dirichlet(np.full(K, 5.0))
    t.mean = rng.uniform(0, 100, size=(K, D))
    t.covar = np.array([np.eye(D) * rng.uniform(0.5, 2.0) for _ in range(K)])
    return t, t.draw(N, rng=rng)


def quiet(g, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        return dg.fit(g, X, **kw)


def test_large_cutoff_equals_no_cutoff(tmp_path):
    t, X = fragmented()
    cat = dg.write_catalog(tmp_path / "s.zarr", X, order="spatial", chunks=5000)
    a, b = t.copy(), t.copy()
    ra = quiet(a, cat, init_method="none", maxiter=10, tol=0)
    rb = quiet(b, cat, init_method="none", maxiter=10, tol=0, cutoff=8.0)
    np.testing.assert_allclose(b.mean, a.mean, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.covar, a.covar, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.amp, a.amp, rtol=0, atol=1e-10)
    assert rb.history == pytest.approx(ra.history, abs=1e-8)


def test_moderate_cutoff_close_and_outside_rows_counted():
    t, X = fragmented(seed=1)
    far = np.vstack([X, [[500.0, 500.0, 500.0]]])      # one row far from everything
    a, b, c = t.copy(), t.copy(), t.copy()
    quiet(a, X, init_method="none", tol=1e-6)
    rb = quiet(b, X, init_method="none", tol=1e-6, cutoff=5.0)
    rc = quiet(c, far, init_method="none", tol=1e-6, cutoff=5.0)
    assert rc.n_outside == rb.n_outside + 1            # reported, not dropped silently
    np.testing.assert_allclose(b.mean, a.mean, atol=0.02)
    np.testing.assert_allclose(b.covar, a.covar, rtol=0.02, atol=0.02)
    # with a background, the far row goes to the background instead
    bg = dg.Background(([-10] * 3, [600] * 3), amp=0.01)
    rd = quiet(t.copy(), far, init_method="none", tol=1e-6, cutoff=5.0, background=bg)
    assert rd.n_outside == 0


def test_cutoff_with_truncation_and_noise():
    t, X = fragmented(K=8, N=20_000, seed=2)
    sel = Box(upper=[80.0, np.inf, np.inf])
    X = X[sel(X) > 0]
    var = np.full(X.shape, 0.2)
    a, b = t.copy(), t.copy()
    kw = dict(init_method="none", maxiter=6, tol=0, sel_callback=sel, rng=3,
              covar_callback=lambda x: np.full(x.shape, 0.2))
    ra = quiet(a, X, covar=var, **kw)
    rb = quiet(b, X, covar=var, cutoff=8.0, **kw)
    np.testing.assert_allclose(b.mean, a.mean, rtol=0, atol=1e-6)
    assert rb.N_orig == pytest.approx(ra.N_orig, rel=1e-9)


def test_spatial_order_round_trips_rows(tmp_path):
    t, X = fragmented(N=5000, seed=4)
    cat = dg.write_catalog(tmp_path / "sp.zarr", X, order="spatial", chunks=1000)
    data = cat.data.compute()
    idx = cat.row_index.compute()
    assert sorted(idx.tolist()) == list(range(len(X)))
    np.testing.assert_array_equal(data, X[idx])
    # per-row outputs map back to the input order through row_index
    logl_spatial = t.logL(cat.data).compute()
    back = np.empty_like(logl_spatial)
    back[idx] = logl_spatial
    np.testing.assert_allclose(back, t.logL(X), rtol=1e-13)
    # blocks are compact: their boxes are much smaller than random blocks'
    width = lambda a: np.ptp(a, axis=0).prod()  # noqa: E731
    assert np.mean([width(data[i:i + 500]) for i in range(0, 5000, 500)]) < \
        0.25 * np.mean([width(X[i:i + 500]) for i in range(0, 5000, 500)])
