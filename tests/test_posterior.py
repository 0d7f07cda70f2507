"""Per-row posteriors, missing-feature prediction, the posterior writer and GMM.condition."""

import collections

import dask
import dask.array as da
import os
import sys
import numpy as np
import pytest
import zarr
from scipy.stats import multivariate_normal

import daskgmmis as dg
import importlib

# the package exports the function posterior(); the module is reached by name
posterior_mod = importlib.import_module("daskgmmis.posterior")
from daskgmmis.errors import InputError, InputTypeError
from daskgmmis.posterior import (Posterior, posterior, posterior_block, predict_missing,
                                 write_posterior)

KINDS = ("none", "shared", "diag", "full")


def random_gmm(K, D, rng):
    g = dg.GMM(K, D)
    g.amp = rng.dirichlet(np.full(K, 2.0))
    g.mean = rng.normal(scale=2.0, size=(K, D))
    A = rng.normal(size=(K, D, D))
    g.covar = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(D)
    return g


def random_noise(kind, N, D, rng):
    if kind == "none":
        return None
    if kind == "shared":
        A = rng.normal(size=(D, D)) * 0.5
        return A @ A.T + 0.1 * np.eye(D)
    if kind == "diag":
        return rng.uniform(0.05, 1.0, size=(N, D))
    A = rng.normal(size=(N, D, D)) * 0.5
    return A @ np.swapaxes(A, 1, 2) + 0.05 * np.eye(D)


def make_case(kind, missing, N=40, K=3, D=3, seed=0):
    rng = np.random.default_rng(seed)
    g = random_gmm(K, D, rng)
    x = g.draw(N, rng=rng) + rng.normal(size=(N, D))
    S = random_noise(kind, N, D, rng)
    if missing:
        mask = rng.random((N, D)) < 0.3
        mask[0] = True           # a row with nothing observed: posterior = prior
        mask[1] = [True, False, True]
        x[mask] = np.nan
    return g, x, S


def noise_matrix(S, kind, i, D):
    if kind == "none":
        return np.zeros((D, D))
    if kind == "shared":
        return S
    if kind == "diag":
        return np.diag(S[i])
    return S[i]


def brute_force(g, x, S, kind, background=None):
    """Bayes' rule row by row, with explicit inverses and scipy densities."""
    N, D = x.shape
    K = g.K
    resp, means, covars = np.zeros((N, K)), np.zeros((N, K, D)), np.zeros((N, K, D, D))
    logL, resp_bg = np.full(N, np.nan), np.zeros(N)
    for i in range(N):
        o = ~np.isnan(x[i])
        Si = noise_matrix(S, kind, i, D)
        p = np.zeros(K)
        for k in range(K):
            V, mu = g.covar[k], g.mean[k]
            if not o.any():
                p[k] = g.amp[k]
                means[i, k], covars[i, k] = mu, V
                continue
            T = V[np.ix_(o, o)] + Si[np.ix_(o, o)]
            Tinv = np.linalg.inv(T)
            p[k] = g.amp[k] * multivariate_normal(mu[o], T).pdf(x[i, o])
            means[i, k] = mu + V[:, o] @ Tinv @ (x[i, o] - mu[o])
            covars[i, k] = V - V[:, o] @ Tinv @ V[o, :]
        resp[i] = p / p.sum()
        total = p.sum()
        if background is not None:
            # the box convolved with the row's full noise over its observed features
            lo_o, hi_o = background.lower[o] - x[i, o], background.upper[o] - x[i, o]
            if kind == "none" or not o.any():
                box = float(np.all((lo_o <= 0) & (hi_o >= 0)))
            else:
                box = multivariate_normal.cdf(
                    hi_o, np.zeros(o.sum()), Si[np.ix_(o, o)], lower_limit=lo_o,
                    abseps=1e-7, releps=1e-6, rng=0)
            pbg = background.amp * box / np.prod(background.upper[o] - background.lower[o])
            resp_bg[i] = pbg / (total + pbg)
            total += pbg
        if o.any():
            logL[i] = np.log(total)
    mean = np.einsum("nk,nkd->nd", resp, means)
    covar = (np.einsum("nk,nkij->nij", resp, covars)
             + np.einsum("nk,nki,nkj->nij", resp, means, means)
             - mean[:, :, None] * mean[:, None, :])
    return dict(resp=resp, means=means, covars=covars, mean=mean, covar=covar, logL=logL,
                resp_bg=resp_bg)


def assert_close(a, b, tol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, np.nanmax(np.abs(b)))
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) <= tol * scale


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_brute_force_bayes(kind, missing):
    g, x, S = make_case(kind, missing, seed=KINDS.index(kind) + 10 * missing)
    post = posterior(g, x, S)
    ref = brute_force(g, x, S, kind)
    assert isinstance(post, Posterior) and not post.lazy
    assert isinstance(post.mean, np.ndarray)
    assert (post.N, post.K, post.D) == (40, 3, 3)
    for name in ("resp", "means", "covars", "mean", "covar", "logL"):
        assert_close(getattr(post, name), ref[name])
    assert post.resp_bg is None
    np.testing.assert_allclose(post.resp.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    # the per-row likelihood is the model's own density
    assert_close(post.logL, g.logL(x, S))


@pytest.mark.parametrize("kind", ["none", "diag", "full"])
def test_background_responsibility(kind):
    g, x, S = make_case(kind, True, N=30, seed=3)
    lo, hi = np.nanmin(x, axis=0) - 1, np.nanmax(x, axis=0) + 1
    bg = dg.Background((lo, hi), amp=0.2)
    g.amp = g.amp * 0.8
    post = posterior(g, x, S, background=bg)
    ref = brute_force(g, x, S, kind, background=bg)
    # the reference's correlated box probabilities are quasi-Monte-Carlo (Genz)
    tol = 1e-5 if kind == "full" else 1e-10
    for name in ("resp", "resp_bg", "means", "covars", "mean", "covar", "logL"):
        assert_close(getattr(post, name), ref[name], tol=tol)
    assert_close(post.logL, g.logL(x, S, background=bg))
    # resp is conditional on the Gaussian population: rows sum to one
    np.testing.assert_allclose(post.resp.sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_single_component_is_gaussian_product():
    rng = np.random.default_rng(7)
    D, N = 3, 25
    g = random_gmm(1, D, rng)
    g.amp = np.ones(1)
    x = rng.normal(size=(N, D)) * 3
    S = random_noise("full", N, D, rng)
    post = posterior(g, x, S)
    Vinv = np.linalg.inv(g.covar[0])
    for i in range(N):
        Sinv = np.linalg.inv(S[i])
        B = np.linalg.inv(Vinv + Sinv)
        b = B @ (Vinv @ g.mean[0] + Sinv @ x[i])
        assert_close(post.covar[i], B)
        assert_close(post.mean[i], b)
    np.testing.assert_array_equal(post.resp, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_dask_input_matches_numpy(kind):
    g, x, S = make_case(kind, True, N=50, seed=21)
    ref = posterior(g, x, S)
    xd = da.from_array(x, chunks=(7, 3))
    Sd = S if kind in ("none", "shared") else da.from_array(S, chunks=(11,) + S.shape[1:])
    post = posterior(g, xd, Sd)
    assert post.lazy and isinstance(post.covar, da.Array)
    assert post.mean.shape == (50, 3) and post.covars.shape == (50, 3, 3, 3)
    done = post.compute()
    for name in ("resp", "means", "covars", "mean", "covar", "logL"):
        np.testing.assert_allclose(getattr(done, name), getattr(ref, name), rtol=0,
                                   atol=1e-12)


def test_catalog_input_matches_numpy(tmp_path):
    g, x, S = make_case("diag", True, N=60, seed=5)
    cat = dg.write_catalog(tmp_path / "cat.zarr", x, S, chunks=16)
    ref = posterior(g, x, S)
    for source in (cat, tmp_path / "cat.zarr", str(tmp_path / "cat.zarr")):
        post = posterior(g, source)
        assert post.lazy
        np.testing.assert_allclose(post.mean.compute(), ref.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(post.covar.compute(), ref.covar, rtol=0, atol=1e-12)


def test_fields_computed_together_share_block_tasks(monkeypatch):
    g, x, S = make_case("diag", False, N=40, seed=2)
    calls = collections.Counter()
    original = posterior_mod.posterior_block

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(posterior_mod, "posterior_block", counting)
    post = posterior(g, da.from_array(x, chunks=(10, 3)), da.from_array(S, chunks=(10, 3)))
    with dask.config.set(scheduler="sync"):
        post.compute()
    assert calls["n"] == 4          # one per block, for all six fields


def test_predict_missing_is_conditional_mean():
    g, x, S = make_case("full", True, N=40, seed=4)
    post = posterior(g, x, S)
    filled = predict_missing(g, x, S)
    missing = np.isnan(x)
    np.testing.assert_array_equal(filled[~missing], x[~missing])
    np.testing.assert_allclose(filled[missing], post.mean[missing], rtol=0, atol=1e-12)
    lazy = predict_missing(g, da.from_array(x, chunks=(9, 3)),
                           da.from_array(S, chunks=(9, 3, 3)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), filled, rtol=0, atol=1e-12)


def test_predict_missing_noise_free_equals_condition():
    g, x, _ = make_case("none", False, N=5, seed=8)
    x[:, 1] = np.nan
    filled = predict_missing(g, x)
    for i in range(5):
        cond = g.condition(x[i, [0, 2]], [0, 2])
        assert_close(filled[i, 1], cond.amp @ cond.mean[:, 0])


def test_write_posterior_roundtrip_and_overwrite(tmp_path):
    g, x, S = make_case("diag", True, N=45, seed=9)
    g.amp = g.amp * 0.9                 # the background holds the rest
    bg = dg.Background((np.full(3, -20.0), np.full(3, 20.0)), amp=0.1)
    post = posterior(g, da.from_array(x, chunks=(10, 3)), da.from_array(S, chunks=(10, 3)),
                     background=bg)
    ref = post.compute()
    path = tmp_path / "post.zarr"
    write_posterior(post, path)
    grp = zarr.open_group(str(path), mode="r")
    assert grp.attrs["daskgmmis_format"] == "daskgmmis-posterior"
    assert (grp.attrs["K"], grp.attrs["D"]) == (3, 3)
    assert set(grp.array_keys()) == {"row", "mean", "covar", "resp", "logL", "resp_bg"}
    np.testing.assert_array_equal(grp["row"][:], np.arange(len(x)))   # the join key
    for name in ("mean", "covar", "resp", "logL", "resp_bg"):
        np.testing.assert_array_equal(grp[name][:], getattr(ref, name))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_posterior(post, path)
    write_posterior(ref, path, overwrite=True, components=True)
    grp = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(grp["covars"][:], ref.covars)
    np.testing.assert_array_equal(grp["means"][:], ref.means)
    with pytest.raises(InputTypeError):
        write_posterior({"mean": ref.mean}, tmp_path / "other.zarr")


def dask_calls(fn):
    """Files of the dask package whose Python functions run while ``fn()`` runs."""
    dask_dir = os.path.dirname(dask.__file__)
    seen = set()

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(dask_dir):
            seen.add(frame.f_code.co_filename)

    sys.setprofile(tracer)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_posterior_block_is_pure_numpy():
    g, x, S = make_case("diag", True, N=10, seed=1)
    assert dask_calls(lambda: da.zeros(3).sum().compute())      # the tracer sees dask
    assert not dask_calls(lambda: posterior_block(x, S, "diag", g.amp, g.mean, g.covar))
    blk = posterior_block(x, S, "diag", g.amp, g.mean, g.covar)
    assert blk.covars.shape == (10, 3, 3, 3) and blk.resp_bg is None
    lean = posterior_block(x, S, "diag", g.amp, g.mean, g.covar, covariances=False)
    assert lean.covars is None and lean.covar is None
    np.testing.assert_array_equal(lean.mean, blk.mean)


def test_bad_inputs_raise_clear_errors():
    g, x, S = make_case("diag", False, N=10, seed=1)
    with pytest.raises(InputError, match="D=2 features"):
        posterior(g, x[:, :2])
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(InputError, match="row 3, column 1"):
        posterior(g, bad, S)
    with pytest.raises(InputError, match="covar"):
        posterior(g, x, S[:5])
    neg = S.copy()
    neg[4, 2] = -1.0
    with pytest.raises(InputError, match="row 4"):
        posterior(g, x, neg)
    with pytest.raises(InputTypeError, match="GMM"):
        posterior("model", x)
    with pytest.raises(InputError, match="background"):
        posterior(g, x, background=dg.Background(([0, 0], [1, 1]), amp=0.1))
    with pytest.raises(InputTypeError, match="Background"):
        posterior(g, x, background=0.1)
    with pytest.raises(InputError, match="D=1 features"):
        predict_missing(g, x[:, :1])


# ------------------------------------------------------------------ GMM.condition


def conditional_logpdf_reference(g, a_vals, b_vals, a, b, background=None):
    """log p(a | b) = log p(a, b) - log p(b), with the marginal from missing features."""
    D = g.D
    joint = np.empty((len(a_vals), D))
    joint[:, a] = a_vals
    joint[:, b] = b_vals
    marg = np.full((1, D), np.nan)
    marg[0, b] = b_vals
    return g.logL(joint, background=background) - g.logL(marg, background=background)[0]


@pytest.mark.parametrize("dims", [[1, 3], [0], [2, 0, 1]])
def test_condition_is_the_analytic_conditional(dims):
    rng = np.random.default_rng(11)
    g = random_gmm(4, 4, rng)
    b = np.asarray(dims)
    a = np.setdiff1d(np.arange(4), b)
    values = g.draw(1, rng=rng)[0, b] + 0.3
    cond = g.condition(values, dims)
    assert (cond.K, cond.D) == (4, a.size)
    np.testing.assert_allclose(cond.amp.sum(), 1.0, rtol=0, atol=1e-14)
    points = g.draw(7, rng=rng)[:, a] + rng.normal(size=(7, a.size))
    ref = conditional_logpdf_reference(g, points, values, a, b)
    np.testing.assert_allclose(cond.logL(points), ref, rtol=0, atol=1e-10)
    # textbook formulas with explicit inverses, component by component
    for k in range(4):
        S = g.covar[k]
        W = S[np.ix_(a, b)] @ np.linalg.inv(S[np.ix_(b, b)])
        assert_close(cond.mean[k], g.mean[k, a] + W @ (values - g.mean[k, b]))
        assert_close(cond.covar[k], S[np.ix_(a, a)] - W @ S[np.ix_(b, a)])


def test_condition_with_background():
    rng = np.random.default_rng(12)
    g = random_gmm(3, 3, rng)
    g.amp = g.amp * 0.7
    bg = dg.Background((np.full(3, -6.0), np.full(3, 6.0)), amp=0.3)
    values = np.array([0.5])
    cond = g.condition(values, [1], background=bg)
    assert cond.background is not None and cond.background.D == 2
    np.testing.assert_allclose(cond.amp.sum() + cond.background.amp, 1.0, rtol=0, atol=1e-14)
    pts = rng.uniform(-5, 5, size=(6, 2))
    ref = conditional_logpdf_reference(g, pts, values, np.array([0, 2]), np.array([1]),
                                       background=bg)
    np.testing.assert_allclose(cond.logL(pts, background=cond.background), ref, rtol=0,
                               atol=1e-10)


def test_condition_bad_inputs():
    g = random_gmm(2, 3, np.random.default_rng(0))
    with pytest.raises(InputError, match="unique"):
        g.condition([1.0, 2.0], [1, 1])
    with pytest.raises(InputError, match=r"in \[0, 3\)"):
        g.condition([1.0], [3])
    with pytest.raises(InputError, match=r"in \[0, 3\)"):
        g.condition([1.0], [-1])
    with pytest.raises(InputError, match="covers all"):
        g.condition([1.0, 2.0, 3.0], [0, 1, 2])
    with pytest.raises(InputError, match="at least one"):
        g.condition([], [])
    with pytest.raises(InputError, match=r"values: expected shape \(2,\)"):
        g.condition([1.0], [0, 2])
    with pytest.raises(InputError, match="finite"):
        g.condition([np.nan], [0])
    with pytest.raises(InputTypeError, match="integer"):
        g.condition([1.0], [0.5])
    with pytest.raises(InputTypeError, match="integer"):
        g.condition([1.0], [True])
    with pytest.raises(InputTypeError, match="Background"):
        g.condition([1.0], [0], background="box")
