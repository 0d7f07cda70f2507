"""The EM driver on real data: peers, recovery, input types, clusters, bad input."""

import logging
import os
import warnings

import dask
import dask.array as da
import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis import em
from daskgmmis.checkpoint import EMState, Theta, load_checkpoint, save_checkpoint
from daskgmmis.memory import packed_size
from daskgmmis.selection import Box
from conftest import checkpoint_states, make_truth
from reference import cut_threshold, halfspace_mle, three_in_4d


def quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        return dg.fit(*args, **kwargs)


def start_model(truth, seed=11, jitter=0.7):
    g = truth.copy()
    rng = np.random.default_rng(seed)
    g.mean = g.mean + jitter * rng.normal(size=g.mean.shape)
    g.covar = g.covar * 2.0
    g.amp = np.full(g.K, 1.0 / g.K)
    return g


def test_matches_scikit_learn_step_for_step():
    sklearn = pytest.importorskip("sklearn.mixture")
    truth = make_truth(4, 3, seed=1)
    X = truth.draw(5000, rng=2)
    g0 = start_model(truth)
    sk = sklearn.GaussianMixture(4, covariance_type="full", weights_init=g0.amp,
                                 means_init=g0.mean,
                                 precisions_init=np.linalg.inv(g0.covar),
                                 max_iter=12, tol=0, reg_covar=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    g = g0.copy()
    res = quiet_fit(g, X, init_method="none", maxiter=12, tol=0, w=np.sqrt(1e-10),
                    accelerate=False)
    assert res.n_iter == 12 and not res.converged
    np.testing.assert_allclose(g.amp, sk.weights_, atol=1e-6)
    np.testing.assert_allclose(g.mean, sk.means_, atol=1e-6)
    np.testing.assert_allclose(g.covar, sk.covariances_, atol=1e-6)
    # the reported likelihood is that of the returned parameters
    np.testing.assert_allclose(res.logL, sk.score(X), atol=1e-8)


def noisy_catalog(truth, n, seed, noise_scale=1.0, missing=0.0):
    rng = np.random.default_rng(seed)
    V = truth.draw(n, rng=rng)
    var = rng.uniform(0.2, 1.0, size=V.shape) * noise_scale
    X = V + rng.normal(size=V.shape) * np.sqrt(var)
    if missing:
        X[rng.random(X.shape) < missing] = np.nan
        keep = ~np.isnan(X).all(axis=1)
        X, var, V = X[keep], var[keep], V[keep]
    return X, var, V


def test_extreme_deconvolution_recovers_covariances_plain_fit_inflates():
    truth = dg.GMM(2, 2)
    truth.amp = np.array([0.4, 0.6])
    truth.mean = np.array([[0.0, 0.0], [7.0, 3.0]])
    truth.covar = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.5, 0.0], [0.0, 1.5]]])
    X, var, _ = noisy_catalog(truth, 40_000, seed=3)     # noise variance 0.2-1: ~ widths
    xd = truth.copy()
    quiet_fit(xd, X, var, init_method="none", tol=1e-7)
    plain = truth.copy()
    quiet_fit(plain, X, init_method="none", tol=1e-7)
    # tolerance: 5% of the largest variance (sampling error at N=16k per component ~2%)
    np.testing.assert_allclose(xd.covar, truth.covar, atol=0.075)
    np.testing.assert_allclose(xd.mean, truth.mean, atol=0.05)
    inflation = np.trace(plain.covar, axis1=1, axis2=2) - np.trace(truth.covar, axis1=1, axis2=2)
    assert (inflation > 0.8).all()      # mean noise variance 0.6 per axis -> ~1.2 extra


def test_missing_features_recovered():
    truth = make_truth(3, 3, seed=5, spread=5)
    X, var, _ = noisy_catalog(truth, 30_000, seed=6, noise_scale=0.3, missing=0.3)
    assert 0.25 < np.isnan(X).mean() < 0.35
    g = start_model(truth, jitter=0.3)
    res = quiet_fit(g, X, var, init_method="none", tol=1e-7)
    assert res.converged
    order = [int(np.argmin(((g.mean - m) ** 2).sum(1))) for m in truth.mean]
    np.testing.assert_allclose(g.amp[order], truth.amp, atol=0.02)
    np.testing.assert_allclose(g.mean[order], truth.mean, atol=0.08)
    np.testing.assert_allclose(g.covar[order], truth.covar, atol=0.12)


@pytest.fixture(scope="module")
def shared_problem(tmp_path_factory):
    truth = make_truth(3, 2, seed=8)
    X, var, _ = noisy_catalog(truth, 20_000, seed=9, missing=0.1)
    path = tmp_path_factory.mktemp("cat") / "cat.zarr"
    dg.write_catalog(path, X, var)
    return truth, X, var, path


def test_same_fit_numpy_dask_zarr_cluster(shared_problem, cluster_client):
    truth, X, var, path = shared_problem
    kwargs = dict(init_method="random", rng=42, tol=1e-6, maxiter=60)
    g_np = dg.GMM(3, 2)
    r_np = quiet_fit(g_np, X, var, **kwargs)
    cat = dg.open_catalog(path)
    g_da = dg.GMM(3, 2)
    r_da = quiet_fit(g_da, da.from_array(X, chunks=cat.data.chunks),
                     da.from_array(var, chunks=cat.covar.chunks), **kwargs)
    g_zc = dg.GMM(3, 2)
    r_zc = quiet_fit(g_zc, str(path), client=cluster_client, **kwargs)
    assert r_np.n_iter == r_da.n_iter == r_zc.n_iter > 3
    for g in (g_da, g_zc):
        np.testing.assert_allclose(g.amp, g_np.amp, rtol=0, atol=1e-10)
        np.testing.assert_allclose(g.mean, g_np.mean, rtol=0, atol=1e-10)
        np.testing.assert_allclose(g.covar, g_np.covar, rtol=0, atol=1e-10)
    assert r_zc.history == pytest.approx(r_np.history, abs=1e-12)


def test_active_client_is_used_and_catalog_untouched(shared_problem, cluster_client):
    truth, X, var, path = shared_problem
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(path) for p in fs}
    g = truth.copy()
    with cluster_client.as_current():
        res = quiet_fit(g, str(path), init_method="none", maxiter=3, tol=0)
    assert res.n_iter == 3
    after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(path) for p in fs}
    assert before == after


def test_float32_catalog_matches_float64(tmp_path):
    truth = make_truth(2, 2, seed=12)
    X = truth.draw(20_000, rng=13).astype(np.float32)
    path = tmp_path / "f32.zarr"
    dg.write_catalog(path, X, chunks=5000)
    cat = dg.open_catalog(path)
    assert cat.data.dtype == np.float32             # stored and read as float32
    g32, g64 = truth.copy(), truth.copy()
    quiet_fit(g32, cat, init_method="none", maxiter=5, tol=0)
    # the same chunking, hence the same summation order, in float64
    quiet_fit(g64, da.from_array(X.astype(np.float64), chunks=(5000, 2)), init_method="none",
              maxiter=5, tol=0)
    np.testing.assert_array_equal(g32.covar, g64.covar)


def test_graph_size_does_not_grow_with_iterations():
    X = make_truth(2, 2).draw(50_000, rng=1)
    x, noise, kind = dg.catalog.as_dask_input(X)
    plan = em._Plan(x, noise, kind)
    g = make_truth(2, 2)
    sizes = []
    for it in range(3):
        p = em._IterParams(g.amp * (1 + it), g.mean, g.covar, kind, None, None, None)
        sizes.append(len(dict(plan.iteration_graph(p).__dask_graph__())))
    assert sizes[0] == sizes[1] == sizes[2]
    assert sizes[0] < 3 * x.numblocks[0] + 10


def test_exactly_one_compute_per_iteration(monkeypatch):
    X = make_truth(2, 2).draw(5000, rng=1)
    calls = []
    real = em._compute
    monkeypatch.setattr(em, "_compute", lambda obj, client: calls.append(1) or real(obj, client))
    res = quiet_fit(make_truth(2, 2), X, init_method="none", maxiter=4, tol=0,
                    accelerate=False)
    # first pass + one per E-step (n_iter M-steps need n_iter + 1 E-steps; without the
    # acceleration, whose rejected mixed points cost an E-step each)
    assert len(calls) == 1 + res.n_iter + 1


def test_init_methods_give_finite_converged_fits():
    X = make_truth(3, 2, seed=2).draw(6000, rng=3)
    for method in ("random", "minmax"):
        g = dg.GMM(3, 2)
        res = quiet_fit(g, X, init_method=method, rng=1)
        assert res.converged, method
        assert np.isfinite(g.covar).all() and abs(g.amp.sum() - 1) < 1e-12
        assert res.history[-1] >= res.history[0]
        assert all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))


def test_rng_reproducible():
    X = make_truth(3, 2, seed=2).draw(3000, rng=3)
    a, b = dg.GMM(3, 2), dg.GMM(3, 2)
    quiet_fit(a, X, rng=5, maxiter=5)
    quiet_fit(b, X, rng=np.random.SeedSequence(5), maxiter=5)
    np.testing.assert_array_equal(a.mean, b.mean)
    # the seed is used: another seed gives another random start, hence other means
    c = dg.GMM(3, 2)
    quiet_fit(c, X, rng=6, maxiter=5)
    assert not np.array_equal(a.mean, c.mean)


# ----------------------------------------------------------------- bad input

def bad(x=None, **kw):
    return x


X0 = np.random.default_rng(0).normal(size=(200, 2))


@pytest.mark.parametrize("args, kwargs, exc, words", [
    ((dg.GMM(2, 3), X0), {}, dg.InputError, "D=2"),
    ((dg.GMM(2, 2), X0[:, 0]), {}, dg.InputError, "2-D"),
    ((dg.GMM(2, 2), X0, np.ones((200, 3))), {}, dg.InputError, "covar"),
    ((dg.GMM(2, 2), X0), {"init_method": "magic"}, dg.InputError, "init_method"),
    ((dg.GMM(300, 2), X0), {}, dg.InputError, "K=300"),
    (("not a model", X0), {}, dg.InputTypeError, "gmm"),
    ((dg.GMM(2, 2), X0), {"tol": -1}, dg.InputError, "tol"),
    ((dg.GMM(2, 2), X0), {"rng": "seed"}, dg.InputTypeError, "rng"),
])
def test_bad_arguments(args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        dg.fit(*args, **kwargs)


def test_bad_data_values_name_the_row():
    X = X0.copy()
    X[123, 1] = np.inf
    with pytest.raises(dg.InputError, match="row 123, column 1"):
        dg.fit(dg.GMM(2, 2), X)
    X = X0.copy()
    X[77] = np.nan
    with pytest.raises(dg.InputError, match="row 77 has every feature missing"):
        dg.fit(dg.GMM(2, 2), X)
    X = X0.copy()
    X[:, 1] = np.nan
    X[0, 1] = 1.0
    X[1:, 0] = np.where(np.arange(199) % 2, np.nan, 1.0)
    with pytest.raises(dg.InputError, match="every feature missing"):
        dg.fit(dg.GMM(2, 2), X)


def test_bad_covariances_name_the_row():
    var = np.ones((200, 2))
    var[17, 0] = np.nan
    with pytest.raises(dg.InputError, match="row 17, column 0"):
        dg.fit(dg.GMM(2, 2), X0, var)
    var = np.ones((200, 2))
    var[18, 1] = -1
    with pytest.raises(dg.InputError, match="row 18.*negative variance"):
        dg.fit(dg.GMM(2, 2), X0, var)
    full = np.broadcast_to(np.eye(2), (200, 2, 2)).copy()
    full[150] = [[1, 2], [2, 1]]
    with pytest.raises(dg.InputError, match="row 150 is not positive semi-definite"):
        dg.fit(dg.GMM(2, 2), X0, full)
    full[150] = [[1, 0.5], [0.2, 1]]
    with pytest.raises(dg.InputError, match="row 150 is not symmetric"):
        dg.fit(dg.GMM(2, 2), X0, full)
    with pytest.raises(dg.InputError, match="shared"):
        dg.fit(dg.GMM(2, 2), X0, np.array([[1.0, np.inf], [np.inf, 1.0]]))


def test_bad_start_parameters_with_init_none():
    g = dg.GMM(2, 2)
    g.covar[1] = [[1, 3], [3, 1]]
    with pytest.raises(dg.InputError, match=r"covar\[1\].*positive-definite"):
        dg.fit(g, X0, init_method="none")


def test_errors_from_worker_processes_are_clear(tmp_path, cluster_client):
    X = X0.copy()
    X[42, 0] = -np.inf
    dg.write_catalog(tmp_path / "bad.zarr", X, chunks=50)
    with pytest.raises(dg.InputError, match="row 42, column 0"):
        dg.fit(dg.GMM(2, 2), str(tmp_path / "bad.zarr"), client=cluster_client)


def ridge_catalog():
    """truncation_accuracy.py's cut4d, seed 2: behind the cut one component lies mostly
    beyond it, and at the maximum-likelihood answer N_orig sits on a ridge where EM
    contracts at rates of 0.9999 and slower (17 % of N_orig costs 0.12 nats)."""
    truth = three_in_4d()
    cut = cut_threshold(truth)
    sel = Box(upper=[cut, np.inf, np.inf, np.inf])
    X, _, _ = dg.draw(truth, orig_size=20_000, sel_callback=sel, rng=2)
    return X, sel, cut


def newton_records(caplog) -> list:
    return [r for r in caplog.records
            if r.getMessage() == "Newton point on EM's probed Jacobian"]


def test_newton_points_carry_a_truncated_fit_along_its_n_orig_ridge(caplog):
    # The tol=1e-6 test where it was hardest. Without Newton points this fit
    # ended at maxiter=1000, not converged, at 0.990 of the exact N_orig: Anderson's
    # points lost ~1e-9 nats per row to the ridge's curvature and were rejected
    X, sel, cut = ridge_catalog()
    gmm = dg.GMM(3, 4)
    with caplog.at_level(logging.DEBUG, logger="daskgmmis"):
        res = dg.fit(gmm, X, sel_callback=sel, rng=2, tol=1e-6)
    assert res.converged and res.n_iter <= 500, res.n_iter
    assert np.ptp(res.history[-20:]) < 1e-6
    exact, n_exact = halfspace_mle(X, 0, cut, [gmm])
    assert abs(res.N_orig / n_exact - 1) < 0.01
    # their probes are E-steps of the whole catalog: counted in passes
    newton = newton_records(caplog)
    assert newton
    assert res.passes == len(res.history) + len(newton) * packed_size(3, 4)


def test_a_fit_stopped_between_newton_points_resumes_bit_identical(tmp_path, caplog,
                                                                   monkeypatch):
    # stopped a few iterations after a Newton point, before the next is due: the
    # checkpoint must carry when the last one was (dropped, the next comes at once)
    # and the probes spent (dropped, passes differ)
    X, sel, _ = ridge_catalog()
    with checkpoint_states(monkeypatch, "newton_at") as saved:
        full = dg.fit(dg.GMM(3, 4), X, sel_callback=sel, rng=2, tol=1e-6,
                      checkpoint=tmp_path / "full.ckpt")
    points = sorted({n for (n,) in saved.values() if n >= 0})
    assert len(points) >= 2, points
    stop = points[-2] + 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        dg.fit(dg.GMM(3, 4), X, sel_callback=sel, rng=2, tol=1e-6, maxiter=stop,
               checkpoint=tmp_path / "c.ckpt")
    with caplog.at_level(logging.INFO, logger="daskgmmis"):
        resumed = dg.fit(dg.GMM(3, 4), X, sel_callback=sel, rng=2, tol=1e-6,
                         checkpoint=tmp_path / "c.ckpt")
    assert resumed.history == full.history and resumed.n_iter == full.n_iter
    assert resumed.N_orig == full.N_orig and resumed.passes == full.passes
    # resumed, not restarted: only the iterations after the checkpoint were evaluated
    steps = [r for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert 0 < len(steps) <= full.n_iter - stop + 1


def test_newton_points_wait_their_turn_and_the_turn_is_checkpointed(tmp_path):
    # a rejected Newton point leaves the ridge and its slow rates as they were: without
    # the gap every following iteration would probe EM's Jacobian again (P E-steps)
    theta = Theta(np.full(2, 0.5), np.zeros((2, 2)), np.array([np.eye(2)] * 2))
    state = EMState(theta=theta, seed=["1"], rates=[0.9995] * 5, n_iter=em._NEWTON_GAP + 4,
                    newton_at=5)
    assert not em._crawling(state)
    state.n_iter = 5 + em._NEWTON_GAP
    assert em._crawling(state)
    state.rates[-1] = 0.99                  # one plain step contracted fast: no crawl
    assert not em._crawling(state)
    state.newton_probes = 88
    save_checkpoint(tmp_path / "c.ckpt", state, {"K": 2})
    loaded = load_checkpoint(tmp_path / "c.ckpt", {"K": 2})
    assert (loaded.newton_at, loaded.newton_probes) == (5, 88)
