"""Numerical robustness and "nothing lost": degenerate data, extreme scales, big D and K,
inputs never modified, atomic writes.

Tolerances are stated where they are used. Every fit here is bounded (small N,
``maxiter`` at most a few hundred on tiny problems) so the module runs in well
under a minute on two cores.
"""

import hashlib
import os
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

import daskgmmis as dg
from daskgmmis import kernels
from daskgmmis import model as model_module
from daskgmmis.errors import OutputError, OutputExistsError
from daskgmmis.selection import Box

from conftest import make_truth


def fit_recording(g, X, covar=None, **kw):
    """Fit and return (result, set of warning classes raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = dg.fit(g, X, covar, **kw)
    return res, {w.category for w in caught}


def assert_valid_model(g, bg_amp=0.0):
    """Finite parameters, amplitudes >= 0 summing to 1, PD symmetric covariances."""
    for name in ("amp", "mean", "covar"):
        assert np.all(np.isfinite(getattr(g, name))), name
    assert np.all(g.amp >= 0)
    assert abs(g.amp.sum() + bg_amp - 1.0) < 1e-9
    np.testing.assert_array_equal(g.covar, np.swapaxes(g.covar, 1, 2))
    assert np.all(np.linalg.eigvalsh(g.covar) > 0)


# ------------------------------------------------------ degenerate data (pyGMMis #6)


def test_identical_rows_reseed_instead_of_nan():
    """pyGMMis issue #6: many identical rows make a component collapse onto them.

    Without regularization the collapsed covariance is singular; the M-step
    re-seeds such a component with a DeadComponentWarning (never NaN). With
    w > 0 the documented remedy holds: the variance floor is w**2, nothing dies.
    """
    rng = np.random.default_rng(1)
    X = np.r_[rng.normal(size=(300, 2)), np.tile([[3.0, 3.0]], (200, 1))]
    g = dg.GMM(3, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=60)
    assert dg.DeadComponentWarning in warned
    assert_valid_model(g)
    assert np.isfinite(res.logL) and np.all(np.isfinite(res.history))

    g = dg.GMM(3, 2)
    w = 0.1
    res, warned = fit_recording(g, X, rng=1, maxiter=60, w=w)
    assert dg.DeadComponentWarning not in warned
    assert_valid_model(g)
    assert np.linalg.eigvalsh(g.covar).min() >= w**2 * (1 - 1e-9)
    # one component sits on the duplicates with the floor as its covariance
    k = np.argmin(np.linalg.norm(g.mean - 3.0, axis=1))
    np.testing.assert_allclose(g.mean[k], [3.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(g.covar[k], w**2 * np.eye(2), rtol=1e-6, atol=1e-12)
    assert g.amp[k] == pytest.approx(0.4, abs=1e-3)


def test_integer_valued_data():
    """Counts on a few integer values: components would collapse onto single values."""
    rng = np.random.default_rng(2)
    X = rng.poisson(3.0, size=(2000, 1)).astype(np.int64)      # ~10 distinct values
    g = dg.GMM(6, 1)
    res, warned = fit_recording(g, X, rng=3, maxiter=80)
    assert_valid_model(g)
    assert np.isfinite(res.logL)
    # w of half the lattice spacing: components stay broader than one value
    g = dg.GMM(6, 1)
    res, warned = fit_recording(g, X, rng=3, maxiter=300, tol=1e-9, w=0.5)
    assert dg.DeadComponentWarning not in warned
    assert_valid_model(g)
    assert g.covar.min() >= 0.25 * (1 - 1e-9)
    # the regularized fit still describes the data: at a fixed point of EM the
    # mixture's mean is the sample mean (to the convergence tolerance)
    np.testing.assert_allclose(g.amp @ g.mean[:, 0], X.mean(), rtol=1e-5)


def test_single_component_on_identical_rows_warns():
    """K=1 on identical rows: nothing to re-seed from; the fit warns, stays finite."""
    X = np.tile([[1.0, 2.0]], (100, 1))
    g = dg.GMM(1, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=20)
    assert dg.DeadComponentWarning in warned
    assert_valid_model(g)
    np.testing.assert_allclose(g.mean[0], [1.0, 2.0], atol=1e-6)
    g = dg.GMM(1, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=20, w=0.1)
    assert dg.DeadComponentWarning not in warned
    np.testing.assert_allclose(g.covar[0], 0.01 * np.eye(2), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("K", [1, 2])
def test_constant_feature_warns_unless_regularized(K):
    """A constant column without noise: unbounded likelihood, singular covariances."""
    rng = np.random.default_rng(4)
    X = np.c_[rng.normal(size=300), np.full(300, 7.0)]
    g = dg.GMM(K, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=30)
    assert dg.DeadComponentWarning in warned
    assert_valid_model(g)
    g = dg.GMM(K, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=30, w=1e-3)
    assert dg.DeadComponentWarning not in warned
    assert_valid_model(g)
    np.testing.assert_allclose(g.covar[:, 1, 1], 1e-6, rtol=1e-6)


def test_near_singular_component_is_exact():
    """Rows within 1e-4 of a line: the thin covariance is resolved, not floored."""
    rng = np.random.default_rng(5)
    t = rng.normal(size=5000)
    X = np.c_[t, 2 * t + 1e-4 * rng.normal(size=5000)]
    g = dg.GMM(1, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=20)
    assert dg.DeadComponentWarning not in warned
    sample = np.cov(X.T, bias=True)
    np.testing.assert_allclose(g.covar[0], sample, rtol=1e-9)
    # the smallest eigenvalue (~2e-9, 1e-9 of the largest) to 1e-4 relative
    np.testing.assert_allclose(np.linalg.eigvalsh(g.covar[0])[0],
                               np.linalg.eigvalsh(sample)[0], rtol=1e-4)


def test_numerically_singular_component_is_flagged():
    """Rows within 1e-7 of a line: below float precision, warned, never NaN."""
    rng = np.random.default_rng(5)
    t = rng.normal(size=2000)
    X = np.c_[t, 2 * t + 1e-7 * rng.normal(size=2000)]
    g = dg.GMM(2, 2)
    res, warned = fit_recording(g, X, rng=1, maxiter=50)
    assert dg.DeadComponentWarning in warned
    assert_valid_model(g)


# ------------------------------------------------------------ scale invariance

SCALES = [1e-8, 1e8]


def _scaled_problem(kind, s):
    truth = make_truth(3, 2, seed=1)
    rng = np.random.default_rng(2)
    X = truth.draw(2000, rng=rng)
    noise = None
    if kind == "diag":
        noise = rng.uniform(0.05, 0.3, size=X.shape)
    elif kind == "full":
        A = rng.normal(size=(len(X), 2, 2)) * 0.3
        noise = A @ np.swapaxes(A, 1, 2) + 0.02 * np.eye(2)
    elif kind == "shared":
        noise = np.array([[0.1, 0.03], [0.03, 0.2]])
    if kind == "missing":
        X[rng.random(X.shape) < 0.1] = np.nan
        X = X[~np.isnan(X).all(axis=1)]
    return X * s, None if noise is None else noise * s**2


@pytest.mark.parametrize("kind", ["none", "diag", "full", "shared", "missing"])
@pytest.mark.parametrize("init", ["random", "kmeans"])
def test_fit_is_scale_equivariant(kind, init):
    """Features x 1e-8 or x 1e8 give the unit-scale fit, scaled.

    Tolerance: 1e-7 in unit-scale parameter units (data spread ~ 1-10) and
    1e-9 on the mean log-likelihood (shifted by the mean number of observed
    features times log s). Exact equivariance
    holds up to rounding; the tolerance leaves room for the float64 rounding of
    the scaled data to be amplified by up to ~1e8 along the EM path. ``tol=1e-6``
    and ``maxiter=100``: the diagonal-noise fit converges slowly (67 iterations),
    and the random-start fit with missing values crawls (a component dying; not
    converged after 300): past ~120 iterations the rounding of the scaled data,
    amplified by the acceleration's least squares, separated those paths
    (measured: means equal to 2e-15 at 100 iterations, 0.014 apart at 150), and at
    ``tol=1e-8`` the stopping rule (a ratio of small steps) may decide at
    different iterations (159 vs 173). That crawl leaves a saddle, where over-relaxed
    steps of up to 64 EM steps amplify the rounding further (measured: mean logL
    equal to 1e-14 at 60 iterations, 1e-10 apart from 63, 1e-6 at 100): ``maxiter=60``
    for it.
    """
    results = {}
    maxiter = 60 if (kind, init) == ("missing", "random") else 100
    for s in [1.0] + SCALES:
        X, noise = _scaled_problem(kind, s)
        g = dg.GMM(3, 2)
        res, _ = fit_recording(g, X, noise, init_method=init, rng=3, tol=1e-6,
                               maxiter=maxiter)
        results[s] = (g, res)
    g1, r1 = results[1.0]
    X, _ = _scaled_problem(kind, 1.0)
    n_obs = (~np.isnan(X)).sum(axis=1).mean()   # a row's density scales as s**-|observed|
    for s in SCALES:
        g, r = results[s]
        assert r.n_iter == r1.n_iter
        assert r.logL + n_obs * np.log(s) == pytest.approx(r1.logL, abs=1e-9)
        np.testing.assert_allclose(g.amp, g1.amp, atol=1e-7)
        np.testing.assert_allclose(g.mean / s, g1.mean, atol=1e-7)
        np.testing.assert_allclose(g.covar / s**2, g1.covar, atol=1e-7)


@pytest.mark.parametrize("s", SCALES)
def test_truncated_fit_with_background_is_scale_equivariant(s):
    """Selection (imputation) and a background scale too: same N_orig, same model."""
    truth = make_truth(2, 2, seed=3)
    rng = np.random.default_rng(4)
    V = np.r_[truth.draw(3000, rng=rng), rng.uniform(-10, 10, size=(300, 2))]
    X = V[V[:, 1] <= 2.0]

    def run(scale):
        g = dg.GMM(2, 2)
        bg = dg.Background(([-10 * scale] * 2, [10 * scale] * 2), 0.1)
        res, _ = fit_recording(g, X * scale, init_method="kmeans", rng=7, tol=1e-9,
                               maxiter=100, background=bg,
                               sel_callback=Box(None, [np.inf, 2.0 * scale]))
        return g, res, bg

    g1, r1, bg1 = run(1.0)
    g, r, bg = run(s)
    assert r.n_iter == r1.n_iter
    assert r.N_orig == pytest.approx(r1.N_orig, rel=1e-9)
    assert bg.amp == pytest.approx(bg1.amp, abs=1e-9)
    np.testing.assert_allclose(g.amp, g1.amp, atol=1e-7)
    np.testing.assert_allclose(g.mean / s, g1.mean, atol=1e-7)
    np.testing.assert_allclose(g.covar / s**2, g1.covar, atol=1e-7)


def test_scale_checks_can_fail():
    """The equivariance test compares something: a differently-seeded fit differs."""
    X, _ = _scaled_problem("none", 1.0)
    a, b = dg.GMM(3, 2), dg.GMM(3, 2)
    fit_recording(a, X, rng=3, maxiter=3)
    fit_recording(b, X, rng=4, maxiter=3)
    assert np.abs(a.mean - b.mean).max() > 1e-7


# ------------------------------------------------------------- dtypes and size


@pytest.mark.parametrize("float32_kernel", [True, False])
def test_float32_input_matches_float64(float32_kernel, monkeypatch):
    """float32 rows with per-row noise are factored in float32 (kernels._ROWCOV_FLOAT32,
    on by default) with statistics accumulated in float64: the fit matches the float64
    fit of the same values to 1e-7 in logL per row and 1e-6 in the parameters (data
    spread ~1-10; measured 4e-9 and 2e-7). With the switch off they are promoted
    exactly and the fits are equal."""
    monkeypatch.setattr(kernels, "_ROWCOV_FLOAT32", float32_kernel)
    rng = np.random.default_rng(6)
    X32 = (make_truth(3, 3, seed=6).draw(4000, rng=rng)).astype(np.float32)
    var32 = rng.uniform(0.05, 0.2, size=X32.shape).astype(np.float32)
    fits = []
    for X, var in ((X32, var32), (X32.astype(np.float64), var32.astype(np.float64))):
        g = dg.GMM(3, 3)
        res, _ = fit_recording(g, X, var, rng=1, maxiter=40)
        assert_valid_model(g)
        assert g.mean.dtype == np.float64
        fits.append((g, res))
    (a, ra), (b, rb) = fits
    if not float32_kernel:
        assert ra.history == rb.history
        np.testing.assert_array_equal(a.covar, b.covar)
        return
    assert ra.n_iter == rb.n_iter
    np.testing.assert_allclose(ra.history, rb.history, rtol=0, atol=1e-7)
    assert ra.history != rb.history             # float32 arithmetic did run
    for name in ("amp", "mean", "covar"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6)


def test_float32_catalog(tmp_path):
    rng = np.random.default_rng(7)
    X32 = rng.normal(size=(3000, 2)).astype(np.float32)
    cat = dg.write_catalog(tmp_path / "c.zarr", X32, chunks=1000)
    assert cat.data.dtype == np.float32
    a, b = dg.GMM(2, 2), dg.GMM(2, 2)
    ra, _ = fit_recording(a, cat, rng=2, maxiter=20)
    # the same chunking: the default k-means|| start depends on the seed and the chunks
    rb, _ = fit_recording(b, da.from_array(X32, chunks=(1000, 2)), rng=2, maxiter=20)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    assert_valid_model(a)


@pytest.mark.parametrize("missing", [False, True])
def test_twenty_dimensions(missing):
    """D=20: recovers well-separated components; missing blocks of features too."""
    truth = make_truth(3, 20, seed=8, spread=10.0)
    rng = np.random.default_rng(9)
    X = truth.draw(4000, rng=rng)
    if missing:
        # two missingness patterns (plus complete rows): the last 5 or first 3 features
        X[rng.random(len(X)) < 0.3, 15:] = np.nan
        X[rng.random(len(X)) < 0.2, :3] = np.nan
    g = dg.GMM(3, 20)
    res, _ = fit_recording(g, X, init_method="kmeans", rng=2, maxiter=30)
    assert_valid_model(g)
    match = [np.argmin(np.linalg.norm(g.mean - m, axis=1)) for m in truth.mean]
    assert sorted(match) == [0, 1, 2]
    np.testing.assert_allclose(g.mean[match], truth.mean, atol=0.3)
    np.testing.assert_allclose(g.amp[match], truth.amp, atol=0.03)


@pytest.mark.parametrize("cutoff", [None, 5.0])
def test_thousand_components(cutoff):
    """K=1000 with ~20 rows per component: finite, normalized, PD - and fast."""
    rng = np.random.default_rng(10)
    X = rng.normal(size=(20_000, 2))
    g = dg.GMM(1000, 2)
    t0 = time.perf_counter()
    res, _ = fit_recording(g, X, rng=1, maxiter=4, cutoff=cutoff)
    seconds = time.perf_counter() - t0
    assert_valid_model(g)
    assert np.all(np.isfinite(res.history))
    assert res.history[-1] >= res.history[0]
    assert seconds < 120, f"K=1000 fit took {seconds:.0f} s"


def test_many_components_on_few_rows():
    """K = N: every component may own one row; it must stay finite, not NaN."""
    X = np.random.default_rng(11).normal(size=(40, 2))
    g = dg.GMM(40, 2)
    res, _ = fit_recording(g, X, rng=1, maxiter=20)
    assert_valid_model(g)
    assert np.all(np.isfinite(res.history))


# ------------------------------------------------------------- nothing lost


def _frozen(a):
    """A read-only copy: any in-place write by the library raises."""
    a = np.array(a)
    a.setflags(write=False)
    return a


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("kind", ["none", "diag", "full", "shared"])
def test_fit_never_modifies_its_inputs(kind):
    rng = np.random.default_rng(12)
    X = rng.normal(size=(500, 2))
    X[3, 1] = np.nan
    noise = {"none": None, "diag": rng.uniform(0.1, 0.5, size=(500, 2)),
             "full": np.tile(np.eye(2) * 0.2, (500, 1, 1)),
             "shared": np.eye(2) * 0.1}[kind]
    inputs = [X] + ([noise] if noise is not None else [])
    copies = [a.copy() for a in inputs]
    frozen = [_frozen(a) for a in inputs]
    start = make_truth(2, 2, seed=1)
    start_arrays = [_frozen(getattr(start, n)) for n in ("amp", "mean", "covar")]
    start.amp, start.mean, start.covar = start_arrays
    kept = [a.copy() for a in start_arrays]
    bg = dg.Background(([-6, -6], [6, 6]), 0.1)
    lower, upper = bg.lower.copy(), bg.upper.copy()
    sel = Box(None, [np.inf, 3.0])
    fit_recording(start, frozen[0], frozen[1] if noise is not None else None,
                  init_method="none", maxiter=5, background=bg, sel_callback=sel,
                  covar_callback=(lambda c: np.eye(2) * 0.1) if kind != "none" else None)
    for a, c in zip(inputs + frozen, copies + copies):
        assert _same(a, c)
    for a, c in zip(start_arrays, kept):
        assert _same(a, c)                 # the fit replaced the model's arrays, not edited them
    assert start.mean is not start_arrays[1]
    np.testing.assert_array_equal(bg.lower, lower)
    np.testing.assert_array_equal(bg.upper, upper)


def test_other_entry_points_never_modify_their_inputs():
    rng = np.random.default_rng(13)
    X = _frozen(np.where(rng.random((300, 2)) < 0.05, np.nan, rng.normal(size=(300, 2))))
    var = _frozen(rng.uniform(0.1, 0.5, size=(300, 2)))
    copies = (X.copy(), var.copy())
    g = make_truth(2, 2, seed=2)
    g.amp, g.mean, g.covar = (_frozen(getattr(g, n)) for n in ("amp", "mean", "covar"))
    params = [getattr(g, n).copy() for n in ("amp", "mean", "covar")]
    g(X, var)
    g.logL(X, var)
    g.draw(10, rng=1)
    g.condition(_frozen([0.5]), [0])
    dg.posterior(g, X, var)
    dg.bic(g, X, var)
    dg.aic(g, X, var)
    dg.score(g, X, var)
    dg.draw(g, 20, sel_callback=Box(None, [np.inf, 3.0]), rng=1,
            covar_callback=lambda c: np.tile(np.eye(2) * 0.1, (len(c), 1, 1)))
    assert _same(X, copies[0]) and _same(var, copies[1])
    for n, c in zip(("amp", "mean", "covar"), params):
        assert _same(getattr(g, n), c)


def _store_hashes(path):
    """SHA-256 of every file under a store, by relative path."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_catalog_bytes_identical_after_fit_and_scores(tmp_path):
    rng = np.random.default_rng(14)
    X = rng.normal(size=(4000, 2))
    X[rng.random(X.shape) < 0.02] = np.nan
    X = X[~np.isnan(X).all(axis=1)]
    var = rng.uniform(0.05, 0.2, size=X.shape)
    path = tmp_path / "cat.zarr"
    dg.write_catalog(path, X, var, chunks=500, order="spatial")
    before = _store_hashes(path)
    assert len(before) > 8                       # data, covar, row_index chunks + metadata
    g = dg.GMM(3, 2)
    fit_recording(g, str(path), rng=1, maxiter=10, checkpoint=tmp_path / "ck.npz")
    fit_recording(dg.GMM(3, 2), dg.open_catalog(path), rng=1, maxiter=3,
                  sel_callback=Box(None, [np.inf, 5.0]))
    dg.posterior(g, path).compute()
    dg.bic(g, path)
    dg.score(g, str(path))
    assert _store_hashes(path) == before
    assert sorted(os.listdir(tmp_path)) == ["cat.zarr", "ck.npz"]


def test_model_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "m.npz"
    make_truth(2, 2, seed=1).save(path)
    old = path.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        make_truth(2, 2, seed=2).save(path)
    with pytest.raises(FileExistsError):             # still the built-in for callers
        make_truth(2, 2, seed=2).save(path)
    assert path.read_bytes() == old
    make_truth(2, 2, seed=2).save(path, overwrite=True)
    np.testing.assert_array_equal(dg.GMM.load(path).mean, make_truth(2, 2, seed=2).mean)


@pytest.mark.parametrize("where, error", [("fsync", OSError("disk full")),
                                          ("replace", OSError("rename failed")),
                                          ("fsync", KeyboardInterrupt())])
def test_interrupted_model_save_keeps_the_old_file(tmp_path, monkeypatch, where, error):
    """The writer fails after the temporary file is complete: the old model stays."""
    path = tmp_path / "m.npz"
    make_truth(2, 2, seed=1).save(path)
    old = path.read_bytes()
    seen = []
    real = getattr(os, where)

    def failing(*args, **kwargs):
        seen.append([p for p in os.listdir(tmp_path) if p.endswith(".tmp")])
        raise error

    monkeypatch.setattr(model_module.os, where, failing)
    expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        make_truth(2, 2, seed=2).save(path, overwrite=True)
    monkeypatch.setattr(model_module.os, where, real)
    assert seen and seen[0], "the failure was injected before the temporary file existed"
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.npz"]           # no temporary file left behind
    np.testing.assert_array_equal(dg.GMM.load(path).mean, make_truth(2, 2, seed=1).mean)


@pytest.mark.parametrize("error", [OSError("No space left on device"), RuntimeError("boom")])
def test_interrupted_catalog_write_keeps_the_old_catalog(tmp_path, monkeypatch, error):
    """A catalog overwrite that fails mid-way (after some chunks) changes nothing."""
    path = tmp_path / "c.zarr"
    dg.write_catalog(path, np.ones((1000, 2)), chunks=100)
    before = _store_hashes(path)
    calls = []
    real = zarr.Array.__setitem__

    def failing(self, key, value):
        calls.append(key)
        if len(calls) > 3:                        # a few slabs were written first
            raise error
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing)
    expected = dg.CatalogError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected) as info:
        dg.write_catalog(path, np.zeros((1000, 2)), chunks=100, overwrite=True)
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    if expected is dg.CatalogError:
        assert "c.zarr" in str(info.value) and "unchanged" in str(info.value)
    assert len(calls) > 3
    assert _store_hashes(path) == before
    assert os.listdir(tmp_path) == ["c.zarr"]          # the temporary store is gone
    np.testing.assert_array_equal(dg.open_catalog(path).data.compute(), np.ones((1000, 2)))


def test_failed_final_rename_restores_the_old_catalog(tmp_path, monkeypatch):
    """The swap is two renames; if the second fails the old catalog is put back."""
    from daskgmmis import catalog as catalog_module

    path = tmp_path / "c.zarr"
    dg.write_catalog(path, np.ones((10, 2)))
    before = _store_hashes(path)
    real = os.rename

    def failing(src, dst):
        if str(src).startswith(str(path) + ".tmp-"):
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(catalog_module.os, "rename", failing)
    with pytest.raises(OSError):
        dg.write_catalog(path, np.zeros((10, 2)), overwrite=True)
    monkeypatch.setattr(catalog_module.os, "rename", real)
    assert _store_hashes(path) == before
    assert os.listdir(tmp_path) == ["c.zarr"]


def test_dask_input_is_not_written(tmp_path):
    """A dask array backed by a Zarr store is only read by a fit."""
    z = zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", shape=(2000, 2), chunks=(500, 2),
                        dtype="f8")
    z[:] = np.random.default_rng(15).normal(size=(2000, 2))
    before = _store_hashes(tmp_path / "raw.zarr")
    fit_recording(dg.GMM(2, 2), da.from_zarr(z), rng=1, maxiter=5)
    assert _store_hashes(tmp_path / "raw.zarr") == before


def test_posterior_store_write_is_atomic(tmp_path, monkeypatch):
    """write_posterior: refuses to overwrite, and a failed overwrite keeps the old store."""
    g = make_truth(2, 2, seed=1)
    X = np.random.default_rng(16).normal(size=(600, 2))
    path = tmp_path / "post.zarr"
    dg.write_posterior(dg.posterior(g, X), path)
    before = _store_hashes(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dg.write_posterior(dg.posterior(g, X), path)
    real = zarr.Array.__setitem__

    def failing(self, key, value):
        raise OSError("No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", failing)
    with pytest.raises(OSError):
        dg.write_posterior(dg.posterior(g, X[:300]), path, overwrite=True)
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    assert _store_hashes(path) == before
    assert os.listdir(tmp_path) == ["post.zarr"]


# ---------------------------------------------------- inputs are never outputs

@pytest.fixture
def store_and_model(tmp_path):
    """A small catalog (with a symlink to it) and a model fitted with a background."""
    X = np.random.default_rng(3).normal(size=(300, 2))
    cat = tmp_path / "cat.zarr"
    dg.write_catalog(cat, X, chunks=100)
    os.symlink(cat, tmp_path / "link.zarr")
    g = dg.GMM(2, 2)
    g.mean = np.array([[-1.0, 0.0], [1.0, 0.0]])
    m = tmp_path / "m.npz"
    g.save(m)
    return cat, m


def _cli(*args):
    from click.testing import CliRunner

    from daskgmmis.cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


def _out_variants(d, target):
    """Ways of naming ``target``, or a path inside it: as is, through a symlink,
    with '..', relative, nested."""
    rel = os.path.relpath(target)
    return [target, d / "link.zarr" if target.name == "cat.zarr" else target,
            d / "sub" / ".." / target.name, rel, target / "logl", target / "data" / "x.zarr"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_commands_never_write_into_their_inputs(tmp_path, monkeypatch, store_and_model,
                                                overwrite):
    """The issue's case: 'score m.npz cat.zarr --out cat.zarr --overwrite' replaced the
    catalog (exit 0); '--out cat.zarr/logl' wrote inside it."""
    cat, m = store_and_model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before, model_bytes = _store_hashes(cat), m.read_bytes()
    flag = ["--overwrite"] if overwrite else []
    runs = []
    for out in _out_variants(tmp_path, cat):
        runs.append(["score", m, cat, "--out", out, "--scheduler", "threads", *flag])
        runs.append(["posterior", m, cat, "--out", out, "--scheduler", "threads", *flag])
        runs.append(["fit", cat, "-K", "2", "--out", out, "--maxiter", "1",
                     "--scheduler", "threads", *flag])
    for out in (m, tmp_path / "sub" / ".." / "m.npz", tmp_path):
        runs.append(["sample", m, "-n", "10", "--out", out, *flag])
        runs.append(["score", m, cat, "--out", out, "--scheduler", "threads", *flag])
        runs.append(["fit", cat, "-K", "2", "--init-model", m, "--init-method", "none",
                     "--out", out, "--maxiter", "1", "--scheduler", "threads", *flag])
    ours = 0
    for args in runs:
        result = _cli(*args)
        line = result.stderr.strip().splitlines()[-1]
        if result.exit_code == 2:       # click refuses a directory for a file option
            assert "is a directory" in result.stderr, (args, result.stderr)
            continue
        assert result.exit_code == 1, (args, result.output)
        assert "error:" in line and "--out" in line and "never written" in line, (args, line)
        ours += 1
    assert ours >= len(runs) - 8
    assert _store_hashes(cat) == before
    assert m.read_bytes() == model_bytes
    assert sorted(os.listdir(tmp_path)) == ["cat.zarr", "link.zarr", "m.npz", "sub"]


def test_python_writers_never_write_over_their_lazy_input(tmp_path, store_and_model):
    cat, m = store_and_model
    before = _store_hashes(cat)
    c = dg.open_catalog(cat)
    g = dg.GMM.load(m)
    from daskgmmis.ingest import ingest, write_row_arrays
    from daskgmmis.posterior import write_posterior
    calls = [
        lambda: dg.write_catalog(cat, c.data, overwrite=True),
        lambda: dg.write_catalog(tmp_path / "link.zarr", c.data * 2, overwrite=True),
        lambda: dg.write_catalog(cat / "inner.zarr", c.data),
        lambda: write_row_arrays(cat, {"logl": g.logL(c.data)}, {}, overwrite=True),
        lambda: write_posterior(dg.posterior(g, cat), cat, overwrite=True),
        lambda: write_posterior(dg.posterior(g, cat), tmp_path, overwrite=True),
    ]
    for call in calls:
        with pytest.raises(dg.InputError, match="never written into, over or inside"):
            call()
    src = tmp_path / "x.npy"
    np.save(src, np.ones((10, 2)))
    with pytest.raises(dg.InputError, match="x.npy is .*x.npy, which this command reads"):
        ingest(src, src, overwrite=True)
    assert _store_hashes(cat) == before
    # a different store is fine
    dg.write_catalog(tmp_path / "copy.zarr", c.data)
    np.testing.assert_array_equal(dg.open_catalog(tmp_path / "copy.zarr").data.compute(),
                                  c.data.compute())
