"""The noise value type (daskgmmis.noise), kind by kind, against brute-force numpy.

Every per-kind method is checked against the same operation done on the dense
(n, D, D) matrices the kind stands for, so a method that mixes up rows, features
or kinds fails here.
"""

import numpy as np
import pytest

from daskgmmis import Background, kernels
from daskgmmis.background import log_background
from daskgmmis.errors import InputError
from daskgmmis.noise import (NOISE_KINDS, DiagNoise, FullNoise, NoNoise, Noise, SharedNoise,
                             as_noise, kind_of, noise_block, noise_class, per_row_noise)

N, D = 40, 4


def random_psd(rng, n, D, rank=None):
    rank = D if rank is None else rank
    A = rng.normal(size=(n, D, rank))
    return A @ np.swapaxes(A, 1, 2) + (1e-3 * np.eye(D) if rank == D else 0.0)


def make(kind, rng, n=N):
    """(Noise, dense (n, D, D) matrices it stands for)."""
    if kind == "none":
        return NoNoise(), np.zeros((n, D, D))
    if kind == "shared":
        S = random_psd(rng, 1, D)[0]
        return SharedNoise(S), np.broadcast_to(S, (n, D, D)).copy()
    if kind == "diag":
        var = rng.uniform(0.1, 2.0, (n, D))
        return DiagNoise(var), var[:, :, None] * np.eye(D)
    S = random_psd(rng, n, D)
    return FullNoise(S), S


def dense_of(nz, n):
    """The (n, D, D) matrices a Noise stands for, by its array's shape alone."""
    if nz.array is None:
        return np.zeros((n, D, D))
    a = np.asarray(nz.array)
    if a.shape == (D, D) and not nz.per_row:
        return np.broadcast_to(a, (n, D, D))
    return a[:, :, None] * np.eye(D) if a.ndim == 2 else a


def missing_mask(rng, n=N, frac=0.3):
    observed = rng.random((n, D)) > frac
    observed[:, 0] |= ~observed.any(axis=1)     # every row observes something
    return observed


def test_of_classifies_by_shape_and_the_kernels_wrapper_agrees():
    rng = np.random.default_rng(0)
    cases = {"none": None, "shared": np.eye(D), "diag": np.ones((N, D)),
             "full": np.ones((N, D, D))}
    for kind, covar in cases.items():
        nz = Noise.of(covar, N, D)
        assert type(nz) is noise_class(kind) and nz.kind == kind
        assert nz.code == NOISE_KINDS.index(kind)
        assert kernels.noise_kind_of(covar, N, D) == kind == kind_of(covar, N, D)
    with pytest.raises(InputError, match=r"covar: expected None.*found shape \(3, 5\)"):
        Noise.of(rng.normal(size=(3, 5)), N, D)
    # (D, D) with D rows: variances unless a negative entry says covariance
    amb = np.abs(rng.normal(size=(D, D)))
    with pytest.warns(UserWarning, match="ambiguous"):
        assert Noise.of(amb, D, D, warn_ambiguous=True).kind == "diag"
    neg = amb.copy()
    neg[0, 1] = -0.1
    assert Noise.of(neg, D, D).kind == "shared"
    assert isinstance(per_row_noise(np.ones((N, D))), DiagNoise)
    assert isinstance(per_row_noise(np.ones((N, D, D))), FullNoise)
    assert isinstance(per_row_noise(None), NoNoise)


def test_kind_registry_and_as_noise_errors():
    with pytest.raises(InputError, match="kind: expected one of.*'bogus'"):
        noise_class("bogus")
    with pytest.raises(InputError, match="'diag' given with 'full' noise"):
        as_noise(FullNoise(np.ones((2, D, D))), "diag")
    with pytest.raises(InputError, match="kind: required"):
        as_noise(np.ones((2, D)))
    nz = DiagNoise(np.ones((2, D)))
    assert as_noise(nz) is nz and as_noise(nz, "diag") is nz
    assert [noise_class(k).per_row for k in NOISE_KINDS] == [False, False, True, True]
    assert [noise_class(k).noisy for k in NOISE_KINDS] == [False, True, True, True]


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_rows_and_observed_subsets_match_brute_force_slicing(kind):
    rng = np.random.default_rng(1)
    nz, dense = make(kind, rng)
    rows = np.array([3, 0, 17, 17, 39])
    sub = nz.rows(rows)
    assert type(sub) is type(nz)
    np.testing.assert_array_equal(dense_of(sub, len(rows)), dense[rows])
    for obs in (np.ones(D, bool), np.array([True, False, True, True]),
                np.array([False, False, False, True])):
        for r in (None, rows):
            got = nz.observed(r, obs)
            assert type(got) is type(nz)
            want = (dense if r is None else dense[r])[:, obs][:, :, obs]
            if kind == "none":
                assert got.array is None
            elif kind == "shared":
                np.testing.assert_array_equal(got.array, want[0])
            elif kind == "diag":
                np.testing.assert_array_equal(got.array, np.diagonal(want, axis1=1, axis2=2))
            else:
                np.testing.assert_array_equal(got.array, want)
    # the same restricted noise added to component covariances: T = V + S per row
    obs = np.array([True, False, True, True])
    V = random_psd(rng, 3, int(obs.sum()))
    T = nz.observed(rows, obs).add_to(V, len(rows))
    want = V[None] + dense[rows][:, obs][:, :, obs][:, None]
    if nz.per_row:
        np.testing.assert_allclose(T, want, rtol=1e-15, atol=0)
    else:                                   # one T_k for every row
        np.testing.assert_allclose(np.broadcast_to(T, want.shape), want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_diagonal_variances_and_eigenvalue_bound(kind):
    rng = np.random.default_rng(2)
    nz, dense = make(kind, rng)
    diag = nz.diagonal()
    want = np.diagonal(dense, axis1=1, axis2=2)
    if kind == "none":
        assert diag is None
    elif kind == "shared":
        np.testing.assert_array_equal(diag, want[0])
    else:
        np.testing.assert_array_equal(diag, want)
    observed = missing_mask(rng)
    observed[:, 1] = False                   # a feature no row observes: bound 0 there
    observed[:, 0] |= ~observed.any(axis=1)
    max_var = nz.max_variance(observed)
    np.testing.assert_array_equal(max_var, np.where(observed, want, 0.0).max(axis=0))
    # largest eigenvalue of each row's observed block, by numpy
    lam = max(np.linalg.eigvalsh(dense[i][np.ix_(o, o)]).max() for i, o in enumerate(observed))
    bound = nz.max_eigenvalue(observed)
    if kind == "full":
        assert lam <= bound * (1 + 1e-12)    # a bound (trace / row sums), not exact
        assert bound <= np.trace(dense, axis1=1, axis2=2).max()
    elif kind == "shared":                   # exact for the whole matrix (>= any block)
        assert bound == pytest.approx(np.linalg.eigvalsh(dense[0]).max(), rel=1e-12)
        assert lam <= bound * (1 + 1e-12)
    else:                                    # exact
        assert bound == pytest.approx(lam, rel=1e-12, abs=0)
    # the same bound from per-feature maxima alone (first-pass summaries)
    summary_bound = noise_class(kind).eigen_bound(max_var, nz.shared_matrix)
    assert lam <= summary_bound * (1 + 1e-12)


def test_validation_names_the_row_and_ignores_missing_features():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, D))
    var = np.ones((6, D))
    var[4, 2] = -0.5
    with pytest.raises(InputError, match=r"covar: row 104, column 2 is a negative variance"):
        DiagNoise(var).validate(x, 100)
    x[4, 2] = np.nan                          # the entry belongs to a missing feature
    DiagNoise(var).validate(x, 100)
    var[1, 0] = np.inf
    with pytest.raises(InputError, match=r"sigma: row 1, column 0 is inf"):
        DiagNoise(var).validate(x, 0, "sigma")
    S = np.broadcast_to(np.eye(D), (6, D, D)).copy()
    S[2, 0, 1] = 0.5
    with pytest.raises(InputError, match="row 12 is not symmetric"):
        FullNoise(S).validate(np.zeros((6, D)), 10)
    S[2, 1, 0] = 0.5
    S[5] = -np.eye(D)
    with pytest.raises(InputError, match=r"row 5 is not positive semi-definite \(smallest "
                                         r"eigenvalue -1\)"):
        FullNoise(S).validate(np.zeros((6, D)), 0)
    FullNoise(random_psd(rng, 6, D, rank=2)).validate(np.zeros((6, D)), 0)   # singular PSD
    with pytest.raises(InputError, match="shared .* not positive semi-definite"):
        SharedNoise(-np.eye(D)).validate()
    with pytest.raises(InputError, match="shared .* not symmetric"):
        SharedNoise(np.triu(np.ones((D, D)))).validate()
    NoNoise().validate(x, 0)


@pytest.mark.parametrize("kind", ["shared", "diag", "full"])
def test_samples_have_the_noise_covariance(kind):
    rng = np.random.default_rng(4)
    n = 200_000
    if kind == "shared":
        S = random_psd(rng, 1, D, rank=2)[0]          # singular: needs eigh, not Cholesky
        nz = SharedNoise(S)
    elif kind == "diag":
        var = rng.uniform(0.1, 2.0, D)
        S = np.diag(var)
        nz = DiagNoise(np.broadcast_to(var, (n, D)))
    else:
        S = random_psd(rng, 1, D, rank=3)[0]
        nz = FullNoise(np.broadcast_to(S, (n, D, D)))
    e = nz.sample(rng.standard_normal((n, D)))
    assert e.shape == (n, D)
    # sample covariance within ~5 standard errors of the matrix
    se = np.sqrt((S**2 + np.outer(np.diag(S), np.diag(S))) / n)
    np.testing.assert_array_less(np.abs(np.cov(e.T) - S), 5 * se + 1e-12)
    np.testing.assert_allclose(e.mean(axis=0), 0, atol=5 * np.sqrt(np.diag(S).max() / n))
    if kind != "diag":                 # singular noise lies in the range of S
        w, Q = np.linalg.eigh(S)
        null = Q[:, w < 1e-9 * w.max()]
        assert np.abs(e @ null).max() < 1e-8
    assert np.array_equal(NoNoise().sample(np.ones((3, D))), np.zeros((3, D)))


def test_per_row_samples_follow_each_rows_matrix():
    rng = np.random.default_rng(5)
    # two very different rows, each repeated: draws of each follow its own matrix
    S = np.stack([np.diag([4.0, 0.01, 1.0, 1.0]), np.diag([0.01, 4.0, 1.0, 1.0])])
    idx = np.repeat([0, 1], 50_000)
    e = FullNoise(S[idx]).sample(rng.standard_normal((idx.size, D)))
    for r in (0, 1):
        np.testing.assert_allclose(np.var(e[idx == r], axis=0), np.diag(S[r]), rtol=0.03)


def test_block_round_trip_concatenate_and_storage():
    rng = np.random.default_rng(6)
    S = random_psd(rng, 1, D)[0]
    # what crosses the dask boundary: kind, raw block, shared matrix
    assert noise_block("shared", None, S).shared_matrix is not None
    np.testing.assert_array_equal(noise_block("shared", None, S).array, S)
    block = rng.uniform(size=(5, D)).astype(np.float32)
    nb = noise_block("diag", block, None)
    assert isinstance(nb, DiagNoise) and nb.array.dtype == np.float32
    assert nb.as_float64().array.dtype == np.float64
    assert noise_block("none", None, None).array is None
    whole = DiagNoise(np.arange(12.0).reshape(3, D))
    np.testing.assert_array_equal(whole.with_rows(block).array, block)
    np.testing.assert_array_equal(whole.map_rows(lambda a: 2 * a).array, 2 * whole.array)
    assert SharedNoise(S).with_rows(block).array is not block
    # concatenating row sets: per-row arrays stack; equal shared matrices stay shared
    parts = [DiagNoise(np.ones((2, D))), DiagNoise(2 * np.ones((3, D)))]
    np.testing.assert_array_equal(Noise.concatenate(parts, [2, 3]).array,
                                  np.vstack([np.ones((2, D)), 2 * np.ones((3, D))]))
    same = Noise.concatenate([SharedNoise(S), SharedNoise(S)], [2, 3])
    assert isinstance(same, SharedNoise)
    moved = Noise.concatenate([SharedNoise(S), SharedNoise(2 * S)], [2, 3])
    assert isinstance(moved, FullNoise)
    np.testing.assert_array_equal(moved.array[1], S)
    np.testing.assert_array_equal(moved.array[2], 2 * S)
    # a catalog stores per-row noise: a diagonal shared matrix as variances
    assert SharedNoise(np.diag([1.0, 2, 3, 4])).stored_kind() == "diag"
    assert SharedNoise(S).stored_kind() == "full"
    assert [noise_class(k).array_shape(7, D) for k in NOISE_KINDS] == [
        None, (D, D), (7, D), (7, D, D)]


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_background_and_kernels_take_a_noise(kind):
    rng = np.random.default_rng(7)
    nz, dense = make(kind, rng, n=12)
    x = rng.normal(size=(12, D))
    x[3, 1] = np.nan
    # rows near the faces of two features: the exact correlated value (quadrature)
    bg = Background(([-3, -3, -50, -50], [3, 3, 50, 50]), 0.2)
    want = np.log(0.2) + bg.log_density(x, noise_cov=dense)
    np.testing.assert_allclose(log_background(bg, x, nz), want, rtol=1e-9)
    np.testing.assert_array_equal(log_background(bg, x, nz), log_background(bg, x, nz.array,
                                                                            kind))
    amp = np.array([0.4, 0.6])
    mean = rng.normal(size=(2, D))
    covar = random_psd(rng, 2, D)
    # a Noise and its raw array + kind give the same bits
    a = kernels.estep_block(x, nz, None, amp, mean, covar)
    b = kernels.estep_block(x, nz.array, kind, amp, mean, covar)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2].M2, b[2].M2)
    # and the dense per-row matrices (full kind) give the same density
    ref = kernels.log_density_block(x, dense, "full", amp, mean, covar)
    np.testing.assert_allclose(a[0], ref, rtol=1e-10)
