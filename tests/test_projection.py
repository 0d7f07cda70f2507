"""Projections (Bovy's ``projection``): rows observe ``y_i = R_i v_i + e_i``.

Block kernels against brute-force per-row Bayes; missing values as rows of the
identity; the fit recovers a 3-D population seen only through 2-D projections.
"""

import numpy as np
import pytest
from scipy.stats import multivariate_normal as mvn

from daskgmmis import kernels
from daskgmmis.selection import Box


def brute_force(y, R, S, amp, mean, covar, log_bg=None, weight=None):
    """Per-row Bayes with explicit inverses: logL, centred moments and posteriors.

    y (n, d) with NaN; R (n, d, D); S (n, d, d) noise in the projected space.
    """
    n, d = y.shape
    K, D = mean.shape
    w = np.ones(n) if weight is None else weight
    row = np.full(n, np.nan)
    A, M1, M2 = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    bg = 0.0
    post_b = np.full((n, K, D), np.nan)
    post_B = np.full((n, K, D, D), np.nan)
    resp = np.full((n, K), np.nan)
    for i in range(n):
        o = ~np.isnan(y[i])
        if not o.any():
            continue
        P = R[i][o]
        lp = np.empty(K)
        for k in range(K):
            T = P @ covar[k] @ P.T + S[i][np.ix_(o, o)]
            lp[k] = np.log(amp[k]) + mvn.logpdf(y[i, o], P @ mean[k], T)
            G = covar[k] @ P.T @ np.linalg.inv(T)
            post_b[i, k] = mean[k] + G @ (y[i, o] - P @ mean[k])
            post_B[i, k] = covar[k] - G @ P @ covar[k]
        terms = lp if log_bg is None else np.append(lp, log_bg[i])
        row[i] = np.logaddexp.reduce(terms)
        q = np.exp(terms - row[i])
        resp[i] = np.exp(lp - np.logaddexp.reduce(lp))
        if log_bg is not None:
            bg += w[i] * q[-1]
        for k in range(K):
            r = post_b[i, k] - mean[k]
            A[k] += w[i] * q[k]
            M1[k] += w[i] * q[k] * r
            M2[k] += w[i] * q[k] * (np.outer(r, r) + post_B[i, k])
    return dict(row=row, A=A, M1=M1, M2=M2, bg=bg, b=post_b, B=post_B, resp=resp)


def projected_problem(seed, n=60, d=2, D=3, K=3, missing=0.0, shared=False, empty=True):
    """Random mixture in D dims, rows y = R v + e in d dims, every noise kind.

    ``empty=False``: every row keeps an observed entry (a fit refuses empty rows).

    Returns y, R (n, d, D) (the same matrix on every row when ``shared``), the
    mixture, and {kind: (noise argument, dense (n, d, d) noise)}.
    """
    rng = np.random.default_rng(seed)
    amp = rng.dirichlet(np.ones(K))
    mean = rng.normal(size=(K, D)) * 2
    Am = rng.normal(size=(K, D, D))
    covar = Am @ Am.transpose(0, 2, 1) + 0.5 * np.eye(D)
    R = rng.normal(size=(1 if shared else n, d, D))
    R = np.broadcast_to(R, (n, d, D)).copy()
    v = mean[rng.integers(K, size=n)] + rng.normal(size=(n, D))
    y = np.einsum("nij,nj->ni", R, v) + 0.3 * rng.normal(size=(n, d))
    Bn = rng.normal(size=(n, d, d)) * 0.5
    full = Bn @ Bn.transpose(0, 2, 1)
    diag = rng.uniform(0.05, 1.0, size=(n, d))
    if missing:
        gaps = rng.random((n, d)) < missing
        if not empty:
            gaps[gaps.all(axis=1), 0] = False
        y[gaps] = np.nan
        R[gaps] = np.nan                  # the documented layout: NaN rows of R_i
    noises = {
        "none": (None, np.zeros((n, d, d))),
        "shared": (full[0], np.broadcast_to(full[0], (n, d, d))),
        "diag": (diag, np.array([np.diag(v) for v in diag])),
        "full": (full, full),
    }
    return y, R, amp, mean, covar, noises


def _check_moments(mom, ref, atol=1e-10):
    for name in ("A", "M1", "M2"):
        np.testing.assert_allclose(getattr(mom, name), ref[name], rtol=1e-10, atol=atol)
    np.testing.assert_allclose(mom.bg, ref["bg"], rtol=1e-10, atol=atol)


@pytest.mark.parametrize("kind", kernels.NOISE_KINDS)
@pytest.mark.parametrize("missing", [0.0, 0.25])
@pytest.mark.parametrize("layout", ["per_row", "shared"])
@pytest.mark.parametrize("background", [False, True])
def test_estep_matches_brute_force(kind, missing, layout, background):
    shared = layout == "shared"
    y, R, amp, mean, covar, noises = projected_problem(
        3, d=3 if missing else 2, missing=missing, shared=shared)
    noise, S = noises[kind]
    rng = np.random.default_rng(5)
    log_bg = np.log(0.1) + rng.normal(size=len(y)) - 6.0 if background else None
    weight = rng.uniform(0.0, 2.0, size=len(y))
    amp = amp * (0.9 if background else 1.0)
    # a shared R is passed as one (d, D) matrix (NaN entries of y pick its rows)
    R_arg = _shared_matrix(R) if shared else R
    R_ref = np.broadcast_to(R_arg, R.shape) if shared else R
    row, n_out, mom = kernels.estep_block(y, noise, kind, amp, mean, covar, log_bg=log_bg,
                                          weight=weight, projection=R_arg)
    ref = brute_force(y, R_ref, S, amp, mean, covar, log_bg, weight)
    ok = ~np.isnan(ref["row"])
    assert np.isnan(row[~ok]).all() and n_out == 0
    # relative: a row far out (log-likelihood -66) carries rounding of its own size,
    # which moved with the LAPACK build (7.7e-10 absolute, 1.2e-11 relative)
    np.testing.assert_allclose(row[ok], ref["row"][ok], rtol=1e-10, atol=1e-10)
    _check_moments(mom, ref)
    dens = kernels.log_density_block(y, noise, kind, amp, mean, covar, log_bg=log_bg,
                                     projection=R_arg)
    np.testing.assert_allclose(dens[ok], ref["row"][ok], rtol=1e-10, atol=1e-10)
    post = kernels.posterior_block(y, noise, kind, amp, mean, covar, log_bg,
                                   projection=R_arg)
    np.testing.assert_allclose(post.logL[ok], ref["row"][ok], rtol=1e-10, atol=1e-10)
    for got, want in ((post.resp, ref["resp"]), (post.means, ref["b"]),
                      (post.covars, ref["B"])):
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-10)


def _shared_matrix(R):
    """The one matrix of a shared-R problem, with no NaN rows (y's NaN select rows)."""
    return np.nanmax(R, axis=0) if np.isnan(R).any() else R[0]


@pytest.mark.parametrize("kind", kernels.NOISE_KINDS)
def test_shared_and_per_row_projection_agree(kind):
    # a shared (d, D) matrix runs per missingness pattern (batched kernels), the same
    # matrix repeated per row runs row by row (_gap_kernel): one answer
    y, R, amp, mean, covar, noises = projected_problem(8, n=80, d=3, missing=0.2, shared=True)
    noise, _ = noises[kind]
    shared = _shared_matrix(R)
    a = kernels.estep_block(y, noise, kind, amp, mean, covar, projection=shared)
    b = kernels.estep_block(y, noise, kind, amp, mean, covar,
                            projection=np.broadcast_to(shared, R.shape).copy())
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-10)
    for name in ("A", "M1", "M2"):
        np.testing.assert_allclose(getattr(a[2], name), getattr(b[2], name), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("kind", kernels.NOISE_KINDS)
@pytest.mark.parametrize("rowwise", [False, True])
def test_identity_projection_is_the_unprojected_model(kind, rowwise):
    # missing features are rows of the identity: R = I (shared or per row, NaN rows
    # where y is missing) gives the result of the missing-value path
    y, R, amp, mean, covar, noises = projected_problem(9, n=70, d=4, D=4, missing=0.25)
    noise, _ = noises[kind]
    eye = np.broadcast_to(np.eye(4), R.shape).copy()
    eye[np.isnan(y)] = np.nan
    plain = kernels._run_patterns(y, noise, kind, mean, covar, amp, None, None, None, True, 0,
                                  rowwise=rowwise)
    for proj in (np.eye(4), eye):
        got = kernels._run_patterns(y, noise, kind, mean, covar, amp, None, None, None, True,
                                    0, rowwise=rowwise, projection=proj)
        np.testing.assert_allclose(got[0], plain[0], rtol=0, atol=1e-10)
        for name in ("A", "M1", "M2"):
            np.testing.assert_allclose(getattr(got[2], name), getattr(plain[2], name),
                                       rtol=1e-10, atol=1e-10)
    post = kernels.posterior_block(y, noise, kind, amp, mean, covar, projection=eye)
    ref = kernels.posterior_block(y, noise, kind, amp, mean, covar)
    np.testing.assert_allclose(post.means, ref.means, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(post.covars, ref.covars, rtol=1e-10, atol=1e-10)


def test_projection_lowers_the_dimension_of_the_data():
    # y has d = 2 columns, the model D = 3: the moments are D-dim, the noise d-dim
    y, R, amp, mean, covar, noises = projected_problem(10, n=30)
    row, _, mom = kernels.estep_block(y, noises["diag"][0], "diag", amp, mean, covar,
                                      projection=R)
    assert y.shape[1] == 2 and mom.M1.shape == (3, 3) and mom.M2.shape == (3, 3, 3)
    # one noiseless row by hand: the posterior is certain along R_0's rows (B R_0^T = 0)
    # and keeps a spread along its null space, the direction the row does not see
    post = kernels.posterior_block(y[:1], noises["none"][0], "none", amp, mean, covar,
                                   projection=R[:1])
    null = np.linalg.svd(R[0])[2][-1]              # R_0 null = 0
    for k in range(3):
        G = covar[k] @ R[0].T @ np.linalg.inv(R[0] @ covar[k] @ R[0].T)
        np.testing.assert_allclose(post.covars[0, k] @ R[0].T, 0.0, atol=1e-9)
        np.testing.assert_allclose(post.means[0, k], mean[k] + G @ (y[0] - R[0] @ mean[k]),
                                   atol=1e-10)
    assert np.all(np.einsum("i,kij,j->k", null, post.covars[0], null) > 1e-3)


# ------------------------------------------------------------------ through fit


import warnings  # noqa: E402

import daskgmmis as dg  # noqa: E402


def _model(amp, mean, covar):
    g = dg.GMM(*mean.shape)
    g.amp, g.mean, g.covar = amp.copy(), mean.copy(), covar.copy()
    return g


def _quiet_fit(g, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        return dg.fit(g, *args, init_method="none", **kwargs)


@pytest.mark.parametrize("kind", ["none", "diag", "full"])
def test_fit_start_logl_score_and_posterior_match_brute_force(kind):
    # the fit's first evaluated logL, score() and posterior() of per-row projections
    # with NaN padding (rows seen in fewer dimensions) and noise: brute-force Bayes
    y, R, amp, mean, covar, noises = projected_problem(12, n=90, d=3, D=4, missing=0.2, empty=False)
    noise, S = noises[kind]
    ref = brute_force(y, R, S, amp, mean, covar)
    ok = ~np.isnan(ref["row"])
    res = _quiet_fit(_model(amp, mean, covar), y, noise, projection=R, maxiter=0)
    np.testing.assert_allclose(res.history[0], ref["row"][ok].mean(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dg.score(_model(amp, mean, covar), y, noise, projection=R),
                               ref["row"][ok].mean(), rtol=1e-10)
    post = dg.posterior(_model(amp, mean, covar), y, noise, projection=R)
    np.testing.assert_allclose(post.means[ok], ref["b"][ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(post.covars[ok], ref["B"][ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_model(amp, mean, covar).logL(y, noise, projection=R)[ok],
                               ref["row"][ok], atol=1e-10)


def _fit_params(g):
    return np.concatenate([g.amp, g.mean.ravel(), g.covar.ravel()])


@pytest.mark.parametrize("kind", ["none", "shared", "diag"])
def test_fit_with_identity_projection_is_the_unprojected_fit(kind):
    # missing features are rows of the identity: the same EM steps, one code path
    y, R, amp, mean, covar, noises = projected_problem(13, n=400, d=3, D=3, missing=0.2, empty=False)
    noise, _ = noises[kind]
    start = _model(amp, mean, covar)
    plain = start.copy()
    _quiet_fit(plain, y, noise, maxiter=4, tol=0)
    eye = np.broadcast_to(np.eye(3), R.shape).copy()
    eye[np.isnan(y)] = np.nan
    for proj in (np.eye(3), eye):
        g = start.copy()
        _quiet_fit(g, y, noise, projection=proj, maxiter=4, tol=0)
        np.testing.assert_allclose(_fit_params(g), _fit_params(plain), rtol=1e-10, atol=1e-10)


def test_fit_shared_projection_equals_it_repeated_per_row():
    y, R, amp, mean, covar, noises = projected_problem(14, n=300, d=2, shared=True)
    noise, _ = noises["full"]
    a, b = _model(amp, mean, covar), _model(amp, mean, covar)
    _quiet_fit(a, y, noise, projection=R[0], maxiter=4, tol=0)
    _quiet_fit(b, y, noise, projection=R, maxiter=4, tol=0)
    np.testing.assert_allclose(_fit_params(a), _fit_params(b), rtol=1e-9, atol=1e-10)


def _bovy_population():
    """Bovy et al. 2011's test: a 3-D mixture seen only through 2-D projections."""
    g = dg.GMM(3, 3)
    g.amp = np.array([0.3, 0.3, 0.4])
    g.mean = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, -3.0], [-3.0, 4.0, 2.0]])
    rng = np.random.default_rng(21)
    A = rng.normal(size=(3, 3, 3)) * 0.5
    g.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(3)
    return g


def test_projected_rows_recover_the_3d_population(tmp_path, cluster_client):
    # 4000 rows, each a random 2-D projection of a 3-D value plus noise; no row sees
    # the 3-D space, yet the fit recovers the 3-D means and covariances. Fitted from
    # a real Zarr catalog on a LocalCluster. Tolerances: the largest errors over three
    # seeds of this problem were 0.017 (amplitudes), 0.18 (means) and 0.38
    # (covariance entries, up to 2.4 in size); the bounds allow about 1.6x that.
    truth = _bovy_population()
    N = 4000
    rng = np.random.default_rng(22)
    R = rng.normal(size=(N, 2, 3))
    var = rng.uniform(0.1, 0.3, size=(N, 2))
    y = truth.draw(N, rng=23, projection=R, covar=var)
    cat = dg.write_catalog(tmp_path / "proj.zarr", y, var, projection=R, chunks=1000)
    assert cat.projection.shape == (N, 2, 3)
    g = truth.copy()
    g.amp = np.full(3, 1 / 3)
    g.mean = truth.mean + rng.normal(size=(3, 3))
    g.covar = np.broadcast_to(4.0 * np.eye(3), (3, 3, 3)).copy()
    res = dg.fit(g, str(tmp_path / "proj.zarr"), init_method="none", tol=1e-7,
                 client=cluster_client)
    assert res.converged
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.03)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.3)
    np.testing.assert_allclose(g.covar, truth.covar, atol=0.6)
    # a maximum of the likelihood: at least as good as the truth on its own sample
    assert dg.score(g, cat) >= dg.score(truth, cat)


def test_catalog_stores_the_projection_in_any_row_order(tmp_path):
    y, R, amp, mean, covar, noises = projected_problem(15, n=200, d=2, missing=0.1, empty=False)
    g = _model(amp, mean, covar)
    want = dg.score(g, y, noises["diag"][0], projection=R)
    for order in ("input", "spatial"):
        cat = dg.write_catalog(tmp_path / f"{order}.zarr", y, noises["diag"][0],
                               projection=R, order=order, chunks=64)
        assert dg.score(g, cat) == pytest.approx(want, rel=1e-12)
        assert dg.score(g, dg.open_catalog(tmp_path / f"{order}.zarr")) == pytest.approx(
            want, rel=1e-12)
    shared = dg.write_catalog(tmp_path / "shared.zarr", y[:, :2], projection=np.eye(2, 3))
    np.testing.assert_array_equal(dg.open_catalog(tmp_path / "shared.zarr").projection,
                                  np.eye(2, 3))


def test_draw_projects_the_same_draws_and_adds_the_noise():
    truth = _bovy_population()
    rng = np.random.default_rng(4)
    R = rng.normal(size=(20000, 2, 3))
    v = truth.draw(20000, rng=5)
    np.testing.assert_array_equal(truth.draw(20000, rng=5, projection=R),
                                  np.einsum("nij,nj->ni", R, v))
    np.testing.assert_array_equal(truth.draw(20000, rng=5, projection=R[0]), v @ R[0].T)
    S = np.array([[0.5, 0.2], [0.2, 0.3]])
    e = truth.draw(20000, rng=5, projection=R, covar=S) - np.einsum("nij,nj->ni", R, v)
    np.testing.assert_allclose(np.cov(e.T), S, atol=0.03)


def test_cv_fit_splits_per_row_projections_with_the_rows():
    y, R, amp, mean, covar, noises = projected_problem(16, n=300, d=3, D=3, missing=0.1, empty=False)
    eye = np.broadcast_to(np.eye(3), R.shape).copy()
    eye[np.isnan(y)] = np.nan
    start = _model(amp, mean, covar)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        a = dg.cv_fit(start, y, noises["diag"][0], n_folds=3, rng=1, init_method="none",
                      maxiter=3, tol=0)
        b = dg.cv_fit(start, y, noises["diag"][0], n_folds=3, rng=1, init_method="none",
                      maxiter=3, tol=0, projection=eye)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-10)


def _bovy_rows(N, seed):
    truth = _bovy_population()
    rng = np.random.default_rng(seed)
    R = rng.normal(size=(N, 2, 3))
    var = rng.uniform(0.1, 0.3, size=(N, 2))
    return truth, truth.draw(N, rng=seed + 1, projection=R, covar=var), var, R


def test_stepwise_reaches_the_batch_fixed_point_with_projections():
    import dask.array as da

    truth, y, var, R = _bovy_rows(3000, 5)
    yd, vd, Rd = (da.from_array(a, chunks=500) for a in (y, var, R))
    a, b = truth.copy(), truth.copy()
    dg.fit(a, yd, vd, projection=Rd, init_method="none", tol=1e-9)
    res = dg.fit(b, yd, vd, projection=Rd, init_method="none", tol=1e-9, stepwise=2)
    assert res.passes > 2
    np.testing.assert_allclose(b.mean, a.mean, atol=1e-3)
    np.testing.assert_allclose(b.covar, a.covar, atol=1e-3)


def test_checkpoint_refuses_another_projection(tmp_path):
    truth, y, var, R = _bovy_rows(400, 7)
    ck = tmp_path / "ck"
    _quiet_fit(truth.copy(), y, var, projection=R, maxiter=2, tol=0, checkpoint=ck)
    with pytest.raises(dg.CheckpointError, match="differs in: projection"):
        _quiet_fit(truth.copy(), y, var, projection=R * 1.01, maxiter=2, tol=0, checkpoint=ck)


def test_model_and_posterior_keep_the_model_columns_under_a_projection(tmp_path):
    # the catalog's columns name the projected entries y, not the model's features
    truth, y, var, R = _bovy_rows(300, 9)
    cat = dg.write_catalog(tmp_path / "c.zarr", y, var, projection=R, columns=["a", "b"])
    g = truth.copy()
    _quiet_fit(g, cat, maxiter=2, tol=0)
    assert g.columns is None
    post = dg.posterior(g, cat).compute()
    assert post.mean.shape == (300, 3) and post.columns is None


# ---------------------------------------------------------------- truncation

_TABLE = np.random.default_rng(5).normal(size=(64, 2, 3))


def _projection_at(t):
    """A row's projection, one of 64 fixed random (2, 3) matrices, picked by a hash of
    its true position: deterministic (a fixed sample stays fixed) and independent of
    the population in effect, as sky positions are of velocities."""
    h = np.sin(np.asarray(t) @ np.array([12.9898, 78.233, 37.719])) * 43758.5453
    return _TABLE[((h - np.floor(h)) * 64).astype(int)]


def _cut(y):
    """Hard selection on the first coordinate (a row whose value went missing after
    the selection was selected)."""
    return (np.nan_to_num(y[:, 0], nan=-np.inf) < 1.0).astype(float)


def _unit_noise(y):
    return np.full((len(y), 2), 0.2)


def test_truncated_fit_with_identity_projection_is_the_unprojected_truncated_fit():
    # the imputation observes its rows through R: with R = I it must be the
    # unprojected imputation (same candidates, same selection), with and without a
    # background, and with the shared noise as the imputed rows' noise
    rng = np.random.default_rng(31)
    truth = _model(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [2.0, 1.0]]),
                   np.array([np.eye(2), [[1.0, 0.3], [0.3, 0.5]]]))
    x = truth.draw(3000, rng=rng) + 0.3 * rng.normal(size=(3000, 2))
    x = x[x[:, 0] < 1.0]
    sel = Box([-np.inf, -np.inf], [1.0, np.inf])
    for background in (None, dg.Background(([-4.0, -4.0], [1.0, 5.0]), 0.05)):
        fits = []
        for proj in (None, np.eye(2)):
            g = truth.copy()
            bg = None if background is None else dg.Background.from_dict(background.to_dict())
            res = _quiet_fit(g, x, 0.09 * np.eye(2), projection=proj, sel_callback=sel,
                             background=bg, maxiter=6, tol=0, rng=4)
            fits.append((_fit_params(g), res.N_orig, res.history,
                         None if bg is None else bg.amp))
        (p0, n0, h0, b0), (p1, n1, h1, b1) = fits
        np.testing.assert_allclose(p1, p0, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(h1, h0, rtol=1e-10)
        assert n1 == pytest.approx(n0, rel=1e-10)
        assert n0 > 1.3 * len(x)          # the cut population was imputed
        if background is not None:
            assert b1 == pytest.approx(b0, rel=1e-9) and b0 != 0.05


def test_truncated_fit_through_an_invertible_projection_is_a_change_of_variables():
    # noise-free rows y = R v, selected on y: the same problem as x = R^-1 y selected
    # by Omega(R x). The imputation's candidates see the same selection values, the
    # E-steps the same responsibilities: the same fit, N_orig included, and mean logL
    # lower by log|det R|
    rng = np.random.default_rng(32)
    truth = _model(np.array([0.4, 0.6]), np.array([[0.0, 0.0], [2.5, 1.0]]),
                   np.array([np.eye(2), [[1.0, 0.4], [0.4, 0.6]]]))
    R = np.array([[1.5, 0.4], [-0.3, 0.8]])
    v = truth.draw(3000, rng=rng)
    y = v @ R.T
    sel = Box([-np.inf, 0.0], [np.inf, np.inf])
    keep = sel(y) > 0
    y = y[keep]
    x = np.linalg.solve(R, y.T).T

    def sel_x(coords):
        return sel(coords @ R.T)

    start = truth.copy()
    start.mean = truth.mean + 0.3
    a, b = start.copy(), start.copy()
    ra = _quiet_fit(a, y, projection=R, sel_callback=sel, maxiter=8, tol=0, rng=2)
    rb = _quiet_fit(b, x, sel_callback=sel_x, maxiter=8, tol=0, rng=2)
    np.testing.assert_allclose(_fit_params(a), _fit_params(b), rtol=1e-8, atol=1e-9)
    assert ra.N_orig == pytest.approx(rb.N_orig, rel=1e-9)
    assert ra.N_orig > 1.5 * len(y)
    np.testing.assert_allclose(np.array(ra.history) + np.log(abs(np.linalg.det(R))),
                               rb.history, rtol=1e-9)


def test_truncated_projected_rows_recover_the_3d_population(cluster_client):
    # Bovy's test, truncated: each row a 2-D projection (its own, given by
    # projection_callback for the unobserved ones) of a 3-D value, with per-row noise,
    # 10 % missing values, and a hard cut on the first observed coordinate that
    # removes a third of the population; on a LocalCluster, every fit option at its
    # default but the start. Measured on seeds 1-3: N_orig / N 1.014, 1.000, 1.006;
    # largest errors 0.017 (amplitudes), 0.19 (means), 0.40 (covariances). With the
    # imputed rows projected by the wrong matrices N_orig is 1.084 x N on seed 1.
    truth = _bovy_population()
    N = 4000
    rng = np.random.default_rng(1)
    v = truth.draw(N, rng=rng)
    R = _projection_at(v)
    var = rng.uniform(0.1, 0.3, size=(N, 2))
    y = np.einsum("nij,nj->ni", R, v) + rng.normal(size=(N, 2)) * np.sqrt(var)
    keep = _cut(y) > 0
    y, R, var = y[keep], R[keep].copy(), var[keep]
    gaps = rng.random(y.shape) < 0.1
    gaps[gaps.all(axis=1), 0] = False
    y[gaps], R[gaps] = np.nan, np.nan
    g = truth.copy()
    g.amp = np.full(3, 1 / 3)
    g.mean = truth.mean + rng.normal(size=(3, 3))
    g.covar = np.broadcast_to(4.0 * np.eye(3), (3, 3, 3)).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        res = dg.fit(g, y, var, projection=R, init_method="none", sel_callback=_cut,
                     covar_callback=_unit_noise, projection_callback=_projection_at, rng=1,
                     client=cluster_client)
    assert res.converged
    assert len(y) < 0.7 * N
    assert abs(res.N_orig / N - 1) < 0.04
    np.testing.assert_allclose(g.amp, truth.amp, atol=0.03)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.3)
    np.testing.assert_allclose(g.covar, truth.covar, atol=0.6)


def test_score_and_posterior_with_a_background_of_the_data_space():
    # a background is uniform over a box of the data's space: with R = I the
    # projected density and posterior are the unprojected ones
    y, R, amp, mean, covar, noises = projected_problem(15, n=200, d=2, D=2)
    noise, _ = noises["diag"]
    g = _model(0.9 * amp, mean, covar)
    bg = dg.Background(([-8.0, -8.0], [8.0, 8.0]), 0.1)
    ref = dg.posterior(g, y, noise, background=bg)
    post = dg.posterior(g, y, noise, projection=np.eye(2), background=bg)
    np.testing.assert_allclose(post.resp, ref.resp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(post.resp_bg, ref.resp_bg, rtol=1e-10, atol=1e-12)
    assert (ref.resp_bg > 0).all()
    np.testing.assert_allclose(
        dg.score(g, y, noise, projection=np.eye(2), background=bg),
        dg.score(g, y, noise, background=bg), rtol=1e-12)
    np.testing.assert_allclose(g(y, noise, projection=np.eye(2), background=bg),
                               g(y, noise, background=bg), rtol=1e-10)


def test_truncated_projected_fit_with_a_background_in_the_data_space():
    # the background is uniform over a box of the *data's* space (2-D, where the model
    # is 3-D): its imputed rows are drawn there and cut like the others. 600 background
    # rows among 4,600, cut on the first coordinate (the background keeps 16/30 of its
    # box). Measured on seeds 1-3: N_orig / N 1.008, 1.002, 1.003; background amplitude
    # 0.131, 0.137, 0.135 for 0.130; means within 0.15.
    truth = _bovy_population()
    N, n_bg = 4000, 600
    rng = np.random.default_rng(1)
    v = truth.draw(N, rng=rng)
    lo, hi = np.array([-15.0, -15.0]), np.array([15.0, 15.0])
    y = np.vstack([np.einsum("nij,nj->ni", _projection_at(v), v)
                   + rng.normal(size=(N, 2)) * np.sqrt(0.2),
                   lo + (hi - lo) * rng.random((n_bg, 2))])
    # a background row has no true value: any projection will do for it
    R = np.vstack([_projection_at(v), _projection_at(rng.normal(size=(n_bg, 3)))])
    keep = _cut(y) > 0
    y, R = y[keep], R[keep]
    g = truth.copy()
    g.amp = np.full(3, 1 / 3)
    g.mean = truth.mean + rng.normal(size=(3, 3))
    g.covar = np.broadcast_to(4.0 * np.eye(3), (3, 3, 3)).copy()
    bg = dg.Background((lo, hi), 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        res = dg.fit(g, y, np.full(y.shape, 0.2), projection=R, init_method="none",
                     sel_callback=_cut, covar_callback=_unit_noise,
                     projection_callback=_projection_at, background=bg, rng=1)
    assert res.converged
    assert abs(res.N_orig / (N + n_bg) - 1) < 0.03
    assert bg.amp == pytest.approx(n_bg / (N + n_bg), abs=0.015)
    np.testing.assert_allclose(g.mean, truth.mean, atol=0.3)
