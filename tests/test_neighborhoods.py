"""Block boxes, the conservative component-reach test and the spatial row order."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import daskgmmis as dg
from daskgmmis.em import _summary_task
from daskgmmis.kernels import chi2_cut_for
from daskgmmis.neighborhoods import (BlockBox, ReachTest, block_box, chi2_cuts,
                                     components_reaching, spatial_order)


# ------------------------------------------------------------------------ helpers


def _maha(x_o, mu_o, T):
    r = x_o - mu_o
    return float(r @ np.linalg.solve(T, r))


def _box_minimum(lo, hi, mu, T):
    """min over x in [lo, hi] of (x - mu)^T T^-1 (x - mu) (convex: L-BFGS-B is exact
    up to its tolerance, and any feasible point it returns is an upper bound)."""
    P = np.linalg.inv(T)
    start = np.clip(mu, lo, hi)
    res = minimize(lambda x: ((x - mu) @ P @ (x - mu), 2 * P @ (x - mu)), start, jac=True,
                   method="L-BFGS-B", bounds=list(zip(lo, hi)),
                   options={"ftol": 1e-15, "gtol": 1e-12})
    x = np.clip(res.x, lo, hi)
    return min(_maha(x, mu, T), _maha(start, mu, T))


def _random_case(seed, D, K, kind, missing):
    rng = np.random.default_rng(seed)
    n = 30
    centre = rng.normal(0.0, 3.0, D)
    width = rng.exponential(1.0, D) + 1e-3
    X = centre + (rng.random((n, D)) - 0.5) * width
    if missing:
        X[rng.random((n, D)) < 0.3] = np.nan
        empty = np.isnan(X).all(axis=1)
        X[empty, 0] = centre[0]
    noise = None
    if kind == "diag":
        noise = rng.random((n, D)) * rng.exponential(0.5, D)
    elif kind == "full":
        A = rng.normal(size=(n, D, D)) * rng.exponential(0.3)
        noise = A @ np.swapaxes(A, 1, 2)
    mean = centre + rng.normal(size=(K, D)) * (1.5 * width + rng.exponential(1.0))
    B = rng.normal(size=(K, D, D)) * rng.exponential(0.5, (K, 1, 1))
    covar = B @ np.swapaxes(B, 1, 2) + rng.exponential(0.05, (K, 1, 1)) * np.eye(D)
    return rng, X, noise, mean, covar


def _row_noise(noise, kind, i, obs):
    if kind == "none":
        return np.zeros((obs.sum(), obs.sum()))
    if kind == "diag":
        return np.diag(noise[i][obs])
    return noise[i][np.ix_(obs, obs)]


# -------------------------------------------------------------- conservativeness


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), D=st.integers(1, 5), K=st.integers(1, 3),
       kind=st.sampled_from(["none", "diag", "full"]), missing=st.booleans(),
       with_patterns=st.booleans())
def test_reach_never_skips_a_row_inside_the_cutoff(seed, D, K, kind, missing, with_patterns):
    rng, X, noise, mean, covar = _random_case(seed, D, K, kind, missing)
    box = (block_box(X, noise, kind) if with_patterns else
           BlockBox.from_summary(_summary_task(X, noise, kind, None, 0), kind))
    test = ReachTest(mean, covar)
    observed = ~np.isnan(X)
    # the hardest cuts for component k: the smallest distance an admissible row
    # reaches (adversarial position in the box; the row's own noise, and for diagonal
    # noise also the worst admissible one, diag(max_var)). A valid lower bound must
    # keep k at exactly that cut - as one cut for all rows, and as per-dimension cuts
    # that are zero below the row's number of observed features
    for k in range(K):
        for i in rng.permutation(len(X))[:4]:
            obs = observed[i]
            lo, hi = box.lo[obs], box.hi[obs]
            V = covar[k][np.ix_(obs, obs)]
            noises = [_row_noise(noise, kind, i, obs)]
            if kind == "diag":
                noises.append(np.diag(box.max_var[obs]))
            best = np.inf
            for S in noises:
                best = min(best, _box_minimum(lo, hi, mean[k, obs], V + S))
                # brute force: random points of the box, random admissible noise
                pts = lo + (hi - lo) * rng.random((20, obs.sum()))
                scale = rng.random() if kind == "diag" else 1.0
                best = min(best, min(_maha(p, mean[k, obs], V + scale * S) for p in pts))
            assert test(box, best)[k], (k, best)
            cuts = np.where(np.arange(D + 1) >= obs.sum(), best, 0.0)
            assert test(box, cuts)[k], (k, cuts)
        # ... and with the cuts of a real cutoff, whenever a row is inside
        cuts = chi2_cuts(2.0, D)
        inside = any(
            _maha(X[i, observed[i]], mean[k, observed[i]],
                  covar[k][np.ix_(observed[i], observed[i])]
                  + _row_noise(noise, kind, i, observed[i])) <= cuts[observed[i].sum()]
            for i in range(len(X)))
        if inside:
            assert test(box, cuts)[k]
            assert test(box, chi2_cut_for(2.0, D))[k]


def test_reach_excludes_far_components_and_keeps_near_ones():
    D = 3
    lo, hi = np.zeros(D), np.ones(D)
    mean = np.array([[0.5, 0.5, 0.5],       # inside
                     [1.0 + 4.0, 0.5, 0.5],   # 4 sigma outside a face, unit variance
                     [20.0, 20.0, 20.0],     # far
                     [1.0 + 2.0, 1 + 2.0, 0.5]])
    covar = np.broadcast_to(np.eye(D), (4, D, D)).copy()
    cut = chi2_cut_for(3.0, D)             # ~ 14.2, radius ~ 3.77 sigma
    reach = components_reaching(lo, hi, np.zeros(D), mean, covar, cut)
    assert reach.tolist() == [True, False, False, True]   # corner distance sqrt(8) < 3.77
    # noise widens the neighborhood: 4 sigma with a noise variance of 1 is 2.83 sigma
    reach = components_reaching(lo, hi, np.ones(D), mean, covar, cut)
    assert reach[:3].tolist() == [True, True, False]
    # an elongated component pointing away from the box is excluded by the eigen test
    # although its axis-aligned bounding box contains the box
    long, thin = np.array([1.0, 1.0, 0.0]) / np.sqrt(2), np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    V = 100.0 * np.outer(long, long) + 0.01 * np.outer(thin, thin) + np.diag([0.0, 0.0, 1.0])
    centre = np.full(D, 0.5)
    across = centre + 3.0 * np.sqrt(2) * thin        # 3.5 thin sigmas off the box's shadow
    assert np.sqrt(V.diagonal() * cut).min() > 3.0      # the bounding box does reach
    assert not components_reaching(lo, hi, np.zeros(D), across[None], V[None], cut)[0]
    along = centre + 10.0 * np.sqrt(2) * long         # 1.3 long sigmas away
    assert components_reaching(lo, hi, np.zeros(D), along[None], V[None], cut)[0]


def test_missing_features_rule():
    # component far away in feature 1 only: rows missing feature 1 are still within
    rng = np.random.default_rng(0)
    X = rng.random((50, 2))
    mean, covar = np.array([[0.5, 50.0]]), np.eye(2)[None]
    cut = chi2_cut_for(3.0, 2)
    assert not ReachTest(mean, covar)(block_box(X), cut)[0]
    X[7, 1] = np.nan
    box = block_box(X)
    assert box.patterns.tolist() == [[True, False], [True, True]]
    assert ReachTest(mean, covar)(box, chi2_cuts(3.0, 2))[0]
    summary_box = BlockBox.from_summary(_summary_task(X, None, "none", None, 0), "none")
    assert summary_box.partial.tolist() == [False, True]
    assert ReachTest(mean, covar)(summary_box, cut)[0]
    # no observed value at all: nothing to reach
    empty = BlockBox(np.full(2, np.nan), np.full(2, np.nan), np.zeros(2), 0.0,
                     np.ones(2, bool), None, 0)
    assert not ReachTest(mean, covar)(empty, cut).any()
    # no cut: every component reaches
    assert ReachTest(mean, covar)(block_box(X[:5]), np.inf).all()


def test_noise_bounds_of_block_box():
    rng = np.random.default_rng(1)
    X = rng.random((40, 3))
    X[0, 2] = np.nan
    A = rng.normal(size=(40, 3, 3))
    S = A @ np.swapaxes(A, 1, 2)
    S[0, 2, :] = S[0, :, 2] = 1e6          # noise of a missing feature: ignored
    box = block_box(X, S, "full")
    lam = max(np.linalg.eigvalsh(S[i][np.ix_(~np.isnan(X[i]), ~np.isnan(X[i]))]).max()
              for i in range(40))
    assert lam <= box.s_max <= np.trace(S[1:], axis1=1, axis2=2).max() + 1e-12
    assert box.max_var[2] < 1e6
    shared = S[1]
    sbox = block_box(X, shared, "shared")
    assert np.isclose(sbox.s_max, np.linalg.eigvalsh(shared).max())
    from_summary = BlockBox.from_summary(_summary_task(X, None, "shared", shared, 0),
                                         "shared", shared)
    assert np.isclose(from_summary.s_max, sbox.s_max)


def test_spatially_ordered_blocks_reach_few_components():
    """Large K, compact components: each block of a spatially ordered catalog reaches a
    small fraction of them, and every component a row is within the cut of is kept."""
    rng = np.random.default_rng(3)
    K, D, n = 200, 3, 40_000
    mean = rng.uniform(0, 100, size=(K, D))
    covar = np.broadcast_to(np.eye(D), (K, D, D)).copy()
    X = mean[rng.integers(0, K, n)] + rng.normal(size=(n, D))
    X = X[spatial_order(X)]
    cuts = chi2_cuts(5.0, D)
    test = ReachTest(mean, covar)
    fractions = []
    for start in range(0, n, 2000):
        block = X[start:start + 2000]
        reach = test(block_box(block), cuts)
        d2 = (((block[:, None, :] - mean[None]) ** 2).sum(-1))
        assert reach[(d2 <= cuts[D]).any(axis=0)].all()
        fractions.append(reach.mean())
    assert np.mean(fractions) < 0.25


# ------------------------------------------------------------------ spatial order


@pytest.mark.parametrize("D", range(1, 9))
def test_spatial_order_is_a_permutation_and_compacts_blocks(D):
    rng = np.random.default_rng(D)
    n, size = 20_000, 500
    X = rng.random((n, D))
    perm = spatial_order(X)
    assert perm.dtype == np.int64
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))

    def mean_log_volume(Y):
        widths = np.stack([np.ptp(Y[s:s + size], axis=0) for s in range(0, n, size)])
        return np.log(widths).sum(axis=1).mean()

    # blocks of 1/40 of the rows: ideally 1/40 of the volume (log 40 = 3.7); random
    # blocks span nearly all of it
    assert mean_log_volume(X[perm]) < mean_log_volume(X[rng.permutation(n)]) - 2.0

    # missing values: still a permutation, rows grouped by missingness pattern
    # (complete rows first), each group in curve order over its observed features
    X[rng.random((n, D)) < 0.05] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.5
    perm = spatial_order(X)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    missing = np.isnan(X[perm])
    codes = (missing * (1 << np.arange(D))).sum(axis=1)
    assert (np.diff(codes) >= 0).all() and codes[0] == 0


def test_spatial_order_ties_and_edge_cases():
    X = np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [np.nan, 5.0]])
    perm = spatial_order(X)
    assert perm.tolist() == [1, 3, 0, 2, 4]           # ties keep the input order
    assert spatial_order(np.ones((4, 3))).tolist() == [0, 1, 2, 3]   # constant features
    assert spatial_order(np.zeros((0, 2))).shape == (0,)
    wide = np.random.default_rng(0).random((100, 70))                 # more features than bits
    np.testing.assert_array_equal(np.sort(spatial_order(wide)), np.arange(100))
    # Z-order on a 2x2 grid of cells
    grid = np.array([[0.9, 0.9], [0.1, 0.1], [0.9, 0.1], [0.1, 0.9]])
    assert spatial_order(grid).tolist() == [1, 2, 3, 0]


def test_spatial_catalog_maps_back_to_input_order(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 3))
    X[::7, 1] = np.nan
    cat = dg.write_catalog(tmp_path / "s.zarr", X, rng.random((3000, 3)), chunks=500,
                           order="spatial")
    idx = cat.row_index.compute()
    np.testing.assert_array_equal(cat.data.compute(), X[idx])
    back = np.empty_like(X)
    back[idx] = cat.data.compute()
    np.testing.assert_array_equal(back, X)
