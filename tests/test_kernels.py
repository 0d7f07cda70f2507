"""Block kernels against a brute-force per-row numpy reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal as mvn

from daskgmmis import kernels
from daskgmmis.noise import as_noise


def brute_force(x, S, amp, mean, covar, log_bg=None):
    """Per-row Bayes: log-likelihood and centred moments, explicit formulas."""
    n, D = x.shape
    K = len(amp)
    row = np.full(n, np.nan)
    A, M1, M2 = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    bg = 0.0
    for i in range(n):
        o = ~np.isnan(x[i])
        if not o.any():
            continue
        P = np.eye(D)[o]
        lp, b, B = np.empty(K), [], []
        for k in range(K):
            T = P @ covar[k] @ P.T + P @ S[i] @ P.T
            lp[k] = np.log(amp[k]) + mvn.logpdf(x[i, o], mean[k, o], T)
            G = covar[k] @ P.T @ np.linalg.inv(T)
            b.append(mean[k] + G @ (x[i, o] - mean[k, o]))
            B.append(covar[k] - G @ P @ covar[k])
        terms = lp if log_bg is None else np.append(lp, log_bg[i])
        row[i] = np.logaddexp.reduce(terms)
        q = np.exp(terms - row[i])
        if log_bg is not None:
            bg += q[-1]
        for k in range(K):
            r = b[k] - mean[k]
            A[k] += q[k]
            M1[k] += q[k] * r
            M2[k] += q[k] * (np.outer(r, r) + B[k])
    return row, A, M1, M2, bg


def random_problem(seed, n=120, D=3, K=4, missing=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)) * 2
    amp = rng.dirichlet(np.ones(K))
    mean = rng.normal(size=(K, D))
    A = rng.normal(size=(K, D, D))
    covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    Bn = rng.normal(size=(n, D, D)) * 0.5
    full = Bn @ Bn.transpose(0, 2, 1)
    diag = rng.uniform(0.05, 1.0, size=(n, D))
    if missing:
        x[rng.random((n, D)) < missing] = np.nan
    noises = {
        "none": (None, np.zeros((n, D, D))),
        "shared": (full[0], np.broadcast_to(full[0], (n, D, D))),
        "diag": (diag, np.array([np.diag(v) for v in diag])),
        "full": (full, full),
    }
    return x, amp, mean, covar, noises


@pytest.mark.parametrize("kind", kernels.NOISE_KINDS)
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_estep_matches_brute_force(kind, missing):
    x, amp, mean, covar, noises = random_problem(1, missing=missing)
    noise, S = noises[kind]
    row, n_out, mom = kernels.estep_block(x, noise, kind, amp, mean, covar)
    ref_row, A, M1, M2, _ = brute_force(x, S, amp, mean, covar)
    ok = ~np.isnan(ref_row)
    assert np.isnan(row[~ok]).all()
    np.testing.assert_allclose(row[ok], ref_row[ok], rtol=0, atol=1e-10)
    np.testing.assert_allclose(mom.A, A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mom.M1, M1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mom.M2, M2, rtol=1e-10, atol=1e-10)
    assert n_out == 0


@pytest.mark.parametrize("kind", ["none", "diag"])
def test_background_column_and_row_weights(kind):
    x, amp, mean, covar, noises = random_problem(2, missing=0.2)
    noise, S = noises[kind]
    amp = amp * 0.7
    log_bg = np.log(0.3) + np.random.default_rng(3).uniform(-6, -2, size=len(x))
    weight = np.random.default_rng(4).uniform(0, 1, size=len(x))
    row, _, mom = kernels.estep_block(x, noise, kind, amp, mean, covar, log_bg=log_bg,
                                      weight=weight)
    ref_row, *_ = brute_force(x, S, amp, mean, covar, log_bg)
    ok = ~np.isnan(ref_row)
    np.testing.assert_allclose(row[ok], ref_row[ok], atol=1e-10)
    # weights multiply every responsibility: compare with per-row weighted brute force
    A = np.zeros(len(amp))
    bg = 0.0
    for i in np.flatnonzero(ok):
        _, Ai, _, _, bgi = brute_force(x[i:i + 1], S[i:i + 1], amp, mean, covar, log_bg[i:i + 1])
        A += weight[i] * Ai
        bg += weight[i] * bgi
    np.testing.assert_allclose(mom.A, A, atol=1e-10)
    np.testing.assert_allclose(mom.bg, bg, atol=1e-10)


def test_float32_input_accumulates_in_float64():
    x, amp, mean, covar, noises = random_problem(5, n=3000)
    x32 = x.astype(np.float32)
    row32, _, m32 = kernels.estep_block(x32, None, "none", amp, mean, covar)
    row64, _, m64 = kernels.estep_block(x32.astype(np.float64), None, "none", amp, mean, covar)
    assert m32.A.dtype == np.float64 and m32.M2.dtype == np.float64
    np.testing.assert_array_equal(row32, row64)
    np.testing.assert_array_equal(m32.M2, m64.M2)


def test_cutoff_zeroes_far_components_and_counts_outside_rows():
    mean = np.array([[0.0, 0.0], [100.0, 0.0]])
    covar = np.array([np.eye(2), np.eye(2)])
    x = np.array([[0.5, 0.0], [99.0, 1.0], [50.0, 0.0]])
    row, n_out, mom = kernels.estep_block(x, None, "none", np.array([.5, .5]), mean, covar,
                                          cutoff=5.0)
    assert n_out == 1
    np.testing.assert_allclose(mom.A, [1.0, 1.0])       # the outside row updates nothing
    # without cutoff the far row is shared and every density is finite
    row_all, n_all, _ = kernels.estep_block(x, None, "none", np.array([.5, .5]), mean, covar)
    assert n_all == 0 and np.isfinite(row_all).all()
    np.testing.assert_allclose(row[:2], row_all[:2], atol=1e-12)
    # the outside row keeps its exact log-density: N and logL count the same rows
    assert row[2] == pytest.approx(row_all[2], rel=1e-12)


def test_chi2_cut_matches_one_dimensional_sigma():
    assert kernels.chi2_cut_for(3.0, 1) == pytest.approx(9.0)
    assert kernels.chi2_cut_for(None, 4) == np.inf
    # monotone in d and finite for large cutoffs
    assert kernels.chi2_cut_for(5, 2) < kernels.chi2_cut_for(5, 3) < np.inf
    assert np.isfinite(kernels.chi2_cut_for(30, 3))


def test_rowcov_kernel_names_the_failing_row():
    x = np.zeros((3, 2))
    noise = np.array([np.eye(2), -10 * np.eye(2), np.eye(2)])
    with pytest.raises(Exception, match="row 7"):
        kernels.estep_block(x, noise, "full", np.ones(1), np.zeros((1, 2)),
                            np.eye(2)[None], row_offset=6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), D=st.integers(1, 4), K=st.integers(1, 3),
       kind=st.sampled_from(kernels.NOISE_KINDS), missing=st.sampled_from([0.0, 0.4]))
def test_property_density_matches_brute_force(seed, D, K, kind, missing):
    x, amp, mean, covar, noises = random_problem(seed, n=12, D=D, K=K, missing=missing)
    noise, S = noises[kind]
    row = kernels.log_density_block(x, noise, kind, amp, mean, covar)
    ref_row, *_ = brute_force(x, S, amp, mean, covar)
    ok = ~np.isnan(ref_row)
    np.testing.assert_allclose(row[ok], ref_row[ok], atol=1e-9)
    assert np.isnan(row[~ok]).all()


def test_missing_patterns_partition_rows():
    x = np.array([[1, np.nan], [np.nan, 2], [3, 4], [np.nan, np.nan], [5, np.nan]])
    pats = kernels.missing_patterns(x)
    seen = np.concatenate([rows for _, rows in pats])
    assert sorted(seen.tolist()) == [0, 1, 2, 4]
    for obs, rows in pats:
        assert (~np.isnan(x[rows]) == obs).all()


@pytest.mark.parametrize("kind", kernels.NOISE_KINDS)
def test_rowwise_many_pattern_kernel_matches_brute_force(kind):
    # random gaps in 6-D: almost every row its own pattern, as in wide survey tables
    x, amp, mean, covar, noises = random_problem(7, n=150, D=6, K=3, missing=0.25)
    x[5] = np.nan                                   # a row with nothing observed
    noise, S = noises[kind]
    rng = np.random.default_rng(3)
    log_bg = np.log(0.05) + rng.normal(size=len(x)) - 8.0
    weight = rng.uniform(0.2, 2.0, len(x))
    assert len(kernels.missing_patterns(x)) > kernels.PATTERNS_MIN   # the default picks it
    row, n_out, mom = kernels.estep_block(x, noise, kind, amp, mean, covar, log_bg=log_bg)
    ref_row, A, M1, M2, bg = brute_force(x, S, amp, mean, covar, log_bg=log_bg)
    ok = ~np.isnan(ref_row)
    assert np.isnan(row[~ok]).all() and n_out == 0
    np.testing.assert_allclose(row[ok], ref_row[ok], rtol=0, atol=1e-10)
    for got, want in ((mom.A, A), (mom.M1, M1), (mom.M2, M2), (mom.bg, bg)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # and equals the per-pattern path, with row weights and a neighborhood cut
    for bg_col, cutoff in ((log_bg, None), (None, 1.5)):
        args = (x, noise, kind, mean, covar, amp, bg_col, weight, cutoff, True, 0)
        r1, n1, m1 = kernels._run_patterns(*args, rowwise=True)
        r2, n2, m2 = kernels._run_patterns(*args, rowwise=False)
        assert n1 == n2 and (n1 > 0) == (cutoff is not None)
        np.testing.assert_array_equal(np.isfinite(r1), np.isfinite(r2))
        np.testing.assert_allclose(r1[np.isfinite(r1)], r2[np.isfinite(r2)], rtol=0,
                                   atol=1e-10)
        for name in ("A", "M1", "M2", "bg"):
            np.testing.assert_allclose(getattr(m1, name), getattr(m2, name), rtol=1e-10,
                                       atol=1e-10)


def test_rowwise_kernel_names_the_failing_row():
    x, amp, mean, covar, _ = random_problem(2, n=40, D=4, K=2, missing=0.3)
    full = np.broadcast_to(np.eye(4), (40, 4, 4)).copy()
    full[17] = -np.eye(4) * 50.0                   # not positive semi-definite
    with pytest.raises(kernels.NumericalError, match="row 117"):
        kernels._run_patterns(x, full, "full", mean, covar, amp, None, None, None, True, 100,
                              rowwise=True)


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_rowcov_extreme_scales_match_the_unscaled_problem(kind, scale):
    # |T| = scale^(2D) leaves float64 in 1/sqrt(det T): the kernel's log-free fast
    # path must hand these rows to its log-sum-exp fallback. Scaling the data by s
    # shifts every log-density by -D log s and scales M1 by s, M2 by s^2 (exactly).
    x, amp, mean, covar, noises = random_problem(11, n=300, D=4, K=3)
    noise, _ = noises[kind]
    row, n_out, mom = kernels.estep_block(x, noise, kind, amp, mean, covar)
    noise_s = noise * scale ** 2
    row_s, n_out_s, mom_s = kernels.estep_block(x * scale, noise_s, kind, amp, mean * scale,
                                                covar * scale ** 2)
    assert n_out == n_out_s == 0
    np.testing.assert_allclose(row_s, row - 4 * np.log(scale), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(mom_s.A, mom.A, rtol=1e-10)
    np.testing.assert_allclose(mom_s.M1 / scale, mom.M1, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(mom_s.M2 / scale ** 2, mom.M2, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_rowcov_far_rows_with_background_match_brute_force(kind):
    # rows thousands of sigmas from every component: exp(log_bg + min m / 2) overflows
    # in the fast path; the background takes them entirely
    x, amp, mean, covar, noises = random_problem(12, n=200, D=3, K=3)
    noise, S = noises[kind]
    x[::7] += 3e3
    log_bg = np.full(len(x), np.log(0.1) - 20.0)
    row, _, mom = kernels.estep_block(x, noise, kind, amp * 0.9, mean, covar, log_bg=log_bg)
    ref_row, A, M1, M2, bg = brute_force(x, S, amp * 0.9, mean, covar, log_bg=log_bg)
    np.testing.assert_allclose(row, ref_row, rtol=1e-12, atol=1e-10)
    for got, want in ((mom.A, A), (mom.M1, M1), (mom.M2, M2), (mom.bg, bg)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_rowcov_names_the_first_failing_row_across_tiles(kind):
    x, amp, mean, covar, noises = random_problem(13, n=300, D=3, K=2)
    noise = noises[kind][0].copy()
    for bad in (299, 201):                        # last (padded) tile, then an earlier one
        if kind == "diag":
            noise[bad, 1] = -50.0
        else:
            noise[bad] = -50.0 * np.eye(3)
        with pytest.raises(kernels.NumericalError, match=f"row {1000 + bad}:"):
            kernels.estep_block(x, noise, kind, amp, mean, covar, row_offset=1000)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_float32_per_row_noise_is_computed_in_float32_to_stated_tolerance(kind, monkeypatch):
    # float32 rows: factorization and solves in float32, responsibilities and
    # moments accumulated in float64; stated tolerance against float64 arithmetic on
    # the same (float32) values: log-densities 1e-4 absolute, moments 1e-5 relative
    x, amp, mean, covar, noises = random_problem(14, n=500, D=4, K=3)
    x32, n32 = x.astype(np.float32), noises[kind][0].astype(np.float32)
    noise32 = as_noise(n32, kind)
    assert kernels._rowcov_float32(x32, noise32)          # on by default
    monkeypatch.setattr(kernels, "_ROWCOV_FLOAT32", False)
    assert not kernels._rowcov_float32(x32, noise32)
    monkeypatch.setattr(kernels, "_ROWCOV_FLOAT32", True)
    rng = np.random.default_rng(0)
    log_bg = np.log(0.05) + rng.normal(size=len(x)) - 6.0
    weight = rng.uniform(0.5, 2.0, len(x))
    for kw in (dict(log_bg=log_bg, weight=weight), dict(weight=weight, cutoff=1.5)):
        r32, n_out32, m32 = kernels.estep_block(x32, n32, kind, amp, mean, covar, **kw)
        r64, n_out64, m64 = kernels.estep_block(x32.astype(np.float64),
                                                n32.astype(np.float64), kind, amp, mean,
                                                covar, **kw)
        assert r32.dtype == m32.A.dtype == m32.M2.dtype == np.float64
        assert n_out32 == n_out64 and (n_out64 > 0) == ("cutoff" in kw)
        np.testing.assert_allclose(r32, r64, rtol=0, atol=1e-4)
        # catalogs store float32 data with float64 noise: the same float32 arithmetic
        r_cat, _, m_cat = kernels.estep_block(x32, n32.astype(np.float64), kind, amp, mean,
                                              covar, **kw)
        np.testing.assert_array_equal(r_cat, r32)
        np.testing.assert_array_equal(m_cat.M2, m32.M2)
        for name in ("A", "M1", "M2"):
            got, want = getattr(m32, name), getattr(m64, name)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
        assert abs(m32.bg - m64.bg) <= 1e-5 * max(m64.bg, 1.0)


def test_float32_block_too_ill_conditioned_for_float32_is_done_in_float64():
    # a component of variance ratio 5e-10 and rows without noise: float32's
    # LDL^T breaks down (pivot <= 0) where float64's does not; the block is redone in
    # float64 and equals the float64 computation of the same values
    D, K = 2, 2
    mean = np.zeros((K, D))
    c = 1.0 - 1e-9                                   # rounds to 1.0 in float32
    covar = np.stack([np.array([[1.0, c], [c, 1.0]]), np.eye(D)])
    x32 = np.random.default_rng(1).normal(size=(300, D)).astype(np.float32)
    var32 = np.zeros((300, D), dtype=np.float32)
    amp = np.array([0.5, 0.5])
    with pytest.raises(kernels.NumericalError):
        # float32 alone fails on this block (the arithmetic the fallback replaces)
        kernels._patterns_loop(x32, as_noise(var32, "diag").as_float64(), mean, covar, amp,
                               None, None, None, True, 0, None, None, f32=True)
    r32, _, m32 = kernels.estep_block(x32, var32, "diag", amp, mean, covar)
    r64, _, m64 = kernels.estep_block(x32.astype(np.float64), var32.astype(np.float64),
                                      "diag", amp, mean, covar)
    np.testing.assert_array_equal(r32, r64)
    np.testing.assert_array_equal(m32.M2, m64.M2)


# ------------------------------------------------ kernels unrolled over d (generated)


@pytest.mark.parametrize("script, module", [("gen_plain_kernels.py", "_plain_kernels.py"),
                                            ("gen_rowcov_kernels.py", "_rowcov_kernels.py")])
def test_generated_kernel_module_is_what_the_generator_writes(script, module):
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen", root / "scripts" / script)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (root / "daskgmmis" / module).read_text() == gen.module_source()


@pytest.mark.parametrize("d", range(1, 9))
@pytest.mark.parametrize("extras", [False, True])
def test_unrolled_shared_kernel_equals_the_generic_one(d, extras):
    # every generated dimension, across tile boundaries (tile 7 on 50 rows), with and
    # without background, weights and a neighborhood cut
    from daskgmmis._plain_kernels import SHARED_KERNELS

    rng = np.random.default_rng(d)
    K, n = 3, 50
    xt = rng.normal(size=(d, n)) * 2
    mu = rng.normal(size=(K, d))
    B = rng.normal(size=(K, d, d))
    L = np.linalg.cholesky(B @ B.transpose(0, 2, 1) + np.eye(d))
    Ldiag_inv = 1.0 / np.diagonal(L, axis1=1, axis2=2)
    logc = rng.normal(size=K)
    log_bg = rng.normal(size=n) - 3 if extras else np.empty(0)
    weight = rng.uniform(0, 2, size=n) if extras else np.empty(0)
    chi2_cut = kernels.chi2_cut_for(2.0, d) if extras else np.inf
    outs = []
    for kernel, tail in ((kernels._shared_kernel, ()), (SHARED_KERNELS[d], (7,))):
        row, A, Z1, Z2, bg = (np.empty(n), np.zeros(K), np.zeros((K, d)),
                              np.zeros((K, d, d)), np.zeros(1))
        rows = xt if kernel is kernels._shared_kernel else np.ascontiguousarray(xt.T)
        n_out = kernel(rows, mu, L, Ldiag_inv, logc, log_bg, weight, chi2_cut, True, row, A,
                       Z1, Z2, bg, *tail)
        outs.append((n_out, row, A, Z1, np.tril(Z2), bg))
    assert outs[0][0] == outs[1][0]
    if extras:
        assert bg[0] > 0
        # the cut is exercised: some (row, component) pairs lie beyond it
        z = np.linalg.solve(L[:, None], (xt.T[None] - mu[:, None])[..., None])[..., 0]
        assert ((z ** 2).sum(axis=-1) > chi2_cut).any()
    for ref, got in zip(outs[0][1:], outs[1][1:]):
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("d", range(1, 9))
@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("extras", [False, True])
def test_unrolled_rowcov_kernel_equals_the_generic_one(d, kind, extras):
    # every generated dimension and noise kind, across tile boundaries (150 rows, tiles
    # of 64), with and without background, weights and a neighborhood cut
    from daskgmmis._rowcov_kernels import ROWCOV_KERNELS

    rng = np.random.default_rng(100 + d)
    K, n = 3, 150
    x = rng.normal(size=(n, d)) * 2
    mu = rng.normal(size=(K, d))
    B = rng.normal(size=(K, d, d))
    V = B @ B.transpose(0, 2, 1) / d + 0.5 * np.eye(d)
    C = rng.normal(size=(n, d, d)) * 0.3
    S_full = C @ C.transpose(0, 2, 1) + 0.05 * np.eye(d)
    S_diag = np.ascontiguousarray(np.einsum("nii->ni", S_full))
    if kind == "diag":
        S_full = np.zeros((0, d, d))
    else:
        S_diag = np.zeros((0, d))
    logamp = np.log(rng.dirichlet(np.ones(K)))
    log_bg = rng.normal(size=n) - 5 if extras else np.empty(0)
    weight = rng.uniform(0, 2, size=n) if extras else np.empty(0)
    chi2_cut = kernels.chi2_cut_for(1.5, d) if extras else np.inf
    outs = []
    for kernel in (kernels._rowcov_tiled, ROWCOV_KERNELS[d]):
        row, A, U, WP, bg = (np.empty(n), np.zeros(K), np.zeros((K, d)), np.zeros((K, d, d)),
                             np.zeros(1))
        n_out, bad = kernel(x, S_full, S_diag, kind == "diag", V, mu, logamp, log_bg, weight,
                            chi2_cut, True, row, A, U, WP, bg, 16)
        assert bad == -1
        outs.append((n_out, row, A, U, np.tril(WP), bg))
    assert outs[0][0] == outs[1][0]
    if extras:
        assert bg[0] > 0
        # the cut is exercised: some (row, component) pairs lie beyond it
        S = np.einsum("ni,ij->nij", S_diag, np.eye(d)) if kind == "diag" else S_full
        r = x[None] - mu[:, None]
        m = np.einsum("kni,kni->kn", r, np.linalg.solve(V[:, None] + S[None], r[..., None])[..., 0])
        assert (m > chi2_cut).any()
    for ref, got in zip(outs[0][1:], outs[1][1:]):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_unrolled_rowcov_kernel_reports_a_failed_pivot():
    from daskgmmis._rowcov_kernels import ROWCOV_KERNELS

    n, d = 100, 3
    x = np.zeros((n, d))
    S_full = np.broadcast_to(np.eye(d), (n, d, d)).copy()
    S_full[70] = -5.0 * np.eye(d)
    out = (np.empty(n), np.zeros(1), np.zeros((1, d)), np.zeros((1, d, d)), np.zeros(1))
    _, bad = ROWCOV_KERNELS[d](x, S_full, np.zeros((0, d)), False, np.eye(d)[None],
                               np.zeros((1, d)), np.zeros(1), np.empty(0), np.empty(0), np.inf,
                               True, *out, 64)
    assert bad == -2                  # the caller reruns the generic kernel to name the row


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_per_row_noise_estep_runs_the_unrolled_kernel(kind, monkeypatch):
    # estep_block dispatches rows with per-row noise and d <= 8 to the generated kernel
    # of their d (the generic tiled kernel only above 8, or to name a failing row)
    from daskgmmis import _rowcov_kernels

    x, amp, mean, covar, noises = random_problem(15, n=100, D=4, K=2)
    calls = []
    real = kernels.ROWCOV_KERNELS[4]

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setitem(kernels.ROWCOV_KERNELS, 4, spy)
    assert kernels.ROWCOV_KERNELS is _rowcov_kernels.ROWCOV_KERNELS
    kernels.estep_block(x, noises[kind][0], kind, amp, mean, covar)
    assert calls == [(100, 4)]
