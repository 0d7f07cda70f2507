"""Fits with every option at its default land on the right answer (issue 12, part).

Only data, noise, the selection and its noise callback, and the seed are passed: the
start, tol and oversampling are the library's. Six seeds of pyGMMis's demo geometry at
4,000 rows; five seeds of a hard half-space cut in 2-D and in 4-D, two with per-row full
noise and two behind a soft (logistic) cut against the exact maximum-likelihood answer;
five plain 4-D catalogs of 6,000 rows. KL(truth || fit) by Monte Carlo over 40,000
draws.
"""

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.demo import selection, truth_model
from daskgmmis.selection import Box, Sigmoid
from reference import (axis_selection_loglike, axis_selection_mle, cut_population, cut_threshold,
                       halfspace_loglike, halfspace_mle, selection_grid, selection_loglike,
                       three_in_4d)


class ConstantNoise:
    """Picklable covar_callback: one shared noise matrix."""

    def __init__(self, matrix):
        self.matrix = matrix

    def __call__(self, coords):
        return self.matrix


class GrowingNoise:
    """Picklable covar_callback: per-row full noise growing with the distance from x0 = 0."""

    base = np.array([[1.0, 0.3], [0.3, 1.0]])

    @staticmethod
    def first_variance(x0):
        return 0.1 + 0.02 * np.abs(x0)

    def __call__(self, coords):
        return self.first_variance(coords[:, 0])[:, None, None] * self.base


def kl(truth, fit, n=40_000, seed=0):
    s = truth.draw(n, rng=seed)
    return float(np.mean(truth(s, as_log=True) - fit(s, as_log=True)))


@pytest.mark.parametrize("seed", range(1, 7))
def test_default_truncated_fit_on_the_demo_geometry(seed):
    # the reproduction: with the old random default these seeds gave
    # KL 1.4 / 2.6 / 1.6 and N_orig 14,912 / 34,192 / 6,710 for a true 4,000
    truth, sel, S = truth_model(), selection(), 0.25 * np.eye(2)
    X, covar, n = dg.draw(truth, orig_size=4000, sel_callback=sel,
                          covar_callback=ConstantNoise(S), rng=seed)
    gmm = dg.GMM(3, 2)
    res = dg.fit(gmm, X, covar, sel_callback=sel, covar_callback=ConstantNoise(S), rng=seed)
    assert res.converged
    # The bounds are those of the maximum-likelihood answer, not of the truth (its
    # N_orig is 0.94-1.23x the truth over seeds 1-6): the reference, a long
    # run from the truth at oversampling 32. Measured (this test over seeds 1-6):
    # N_orig 0.9955-1.0061 of the reference's; the 2 %.
    ref = truth.copy()
    ref_res = dg.fit(ref, X, covar, sel_callback=sel, covar_callback=ConstantNoise(S),
                     init_method="none", oversampling=32, tol=1e-8, maxiter=3000,
                     rng=1000 + seed)
    assert ref_res.converged
    assert abs(res.N_orig / ref_res.N_orig - 1) < 0.02
    # The exact truncated likelihood (f by quadrature, tests/reference.py) judges
    # where they differ: the default is at least as likely as the reference, to 0.05
    # nats (0.1 of a standard error along the worst-determined direction).
    grid, omega_area = selection_grid(sel, [0.0, 0.0], [10.0, 10.0])
    assert (selection_loglike(gmm, X, S, grid, omega_area)
            > selection_loglike(ref, X, S, grid, omega_area) - 0.05)
    # The bound on KL(truth || fit): 0.01 of the reference's. Measured (this
    # test, seeds 1-6, default minus reference): +0.0067, +0.0044, +0.0014, -0.0056,
    # -0.0051, +0.0001. The margin is thin for a reason: KL moves along a direction
    # the likelihood hardly sees, the minor-axis width of the thin component behind
    # the box's left edge (sd 0.18 under noise of sd 0.5), where the imputation
    # sample alone moves it - seed 2's sample-average maximum over 8 imputation seeds
    # lay 0.043 below to 0.018 above the exact maximum's KL (rms 0.02), every one
    # within 0.015 nats of its likelihood - and a change of the fit's path redraws
    # the sample elsewhere (em._NEWTON_GAIN)
    assert abs(kl(truth, gmm) - kl(truth, ref)) < 0.01


@pytest.mark.parametrize("D", [2, 4])
@pytest.mark.parametrize("seed", range(5))
def test_default_fit_behind_a_hard_cut_is_the_exact_maximum_likelihood_answer(D, seed):
    # The reference needs no imputation: behind x0 < 0 the observed fraction is
    # closed-form, and the exact truncated likelihood is maximized directly
    # (tests/reference.py). N_orig's own statistical error here is ~15 % (the exact
    # answers over these seeds range 0.85-1.31 of the truth), so the bounds are those
    # of reaching the answer, not of the data: 2 % (the bound) in N_orig, 0.01
    # in KL, and 0.05 nats of total log-likelihood (0.5 is one standard error).
    truth = cut_population(D)
    sel = Box(upper=[0.0] + [np.inf] * (D - 1))           # ~40 % of the population cut
    X, _, _ = dg.draw(truth, orig_size=4000, sel_callback=sel, rng=seed)
    gmm = dg.GMM(2, D)
    res = dg.fit(gmm, X, sel_callback=sel, rng=seed)      # every option at its default
    assert res.converged
    exact, n_exact = halfspace_mle(X, 0, 0.0, [truth, gmm])
    assert abs(res.N_orig / n_exact - 1) < 0.02
    assert abs(kl(truth, gmm) - kl(truth, exact)) < 0.01
    assert halfspace_loglike(exact, X, 0, 0.0) - halfspace_loglike(gmm, X, 0, 0.0) < 0.05


@pytest.mark.parametrize("seed", range(2))
def test_default_fit_with_per_row_full_noise_behind_a_cut_is_the_exact_answer(seed):
    # Per-row full noise (drawn by the survey's noise model at each true position) and
    # the cut on the *noisy* values: the exact likelihood convolves each row with its
    # noise, and f integrates the probability of being seen over the true x0
    # (tests/reference.py). Bounds as for the noise-free cut.
    truth = cut_population(2)
    sel = Box(upper=[0.0, np.inf])
    noise = GrowingNoise()
    X, covar, _ = dg.draw(truth, orig_size=4000, sel_callback=sel, covar_callback=noise,
                          rng=seed)
    gmm = dg.GMM(2, 2)
    res = dg.fit(gmm, X, covar, sel_callback=sel, covar_callback=noise, rng=seed)
    assert res.converged
    exact, n_exact = halfspace_mle(X, 0, 0.0, [truth, gmm], covar, noise.first_variance)
    assert abs(res.N_orig / n_exact - 1) < 0.02
    assert abs(kl(truth, gmm) - kl(truth, exact)) < 0.01
    gap = (halfspace_loglike(exact, X, 0, 0.0, covar, noise.first_variance)
           - halfspace_loglike(gmm, X, 0, 0.0, covar, noise.first_variance))
    assert gap < 0.05


def test_default_fit_with_a_component_mostly_beyond_a_4d_cut_is_the_exact_answer():
    # truncation_accuracy.py's cut4d, seed 2: the cut removes ~40 % and at the exact
    # answer one component lies mostly beyond it, on a ridge so flat that 3 % of N_orig
    # costs < 0.001 nats. Before, the imputed mass of that component carried its whole
    # importance-sampled normalization's error (the sample's maximum 29 % rms off the
    # exact one over imputation seeds, sets of 43,691 points), and plain-step rates
    # judged convergence while the acceleration still moved N_orig by 0.5 % a step:
    # the default fit ended at maxiter at 0.964 of the exact N_orig (KL 0.023 below);
    # with the complement control variate alone it stopped at 0.978. Now 1.001.
    truth = three_in_4d()
    cut = cut_threshold(truth)
    sel = Box(upper=[cut, np.inf, np.inf, np.inf])
    X, _, _ = dg.draw(truth, orig_size=20_000, sel_callback=sel, rng=2)
    gmm = dg.GMM(3, 4)
    res = dg.fit(gmm, X, sel_callback=sel, rng=2)         # every option at its default
    assert res.converged
    exact, n_exact = halfspace_mle(X, 0, cut, [gmm])
    assert abs(res.N_orig / n_exact - 1) < 0.02
    assert abs(kl(truth, gmm) - kl(truth, exact)) < 0.01


@pytest.mark.parametrize("seed", range(2))
def test_default_fit_behind_a_soft_cut_is_the_exact_answer(seed):
    # A logistic cut (each row seen with probability Omega(x0), 1/2 at x0 = 0, width
    # 0.5): the exact f is a 1-D integral per component (tests/reference.py). Measured
    # over seeds 0-4: N_orig 1.0000 of the exact answer, KL and likelihood equal to 4
    # decimals, 42 iterations. Bounds as for the hard cut
    truth = cut_population(2)
    sel = Sigmoid(0, threshold=0.0, width=0.5, direction=-1)
    X, _, _ = dg.draw(truth, orig_size=4000, sel_callback=sel, rng=seed)
    gmm = dg.GMM(2, 2)
    res = dg.fit(gmm, X, sel_callback=sel, rng=seed)      # every option at its default
    assert res.converged

    def omega(x0):
        return sel(np.column_stack([x0, np.zeros_like(x0)]))

    exact, n_exact = axis_selection_mle(X, 0, omega, [truth, gmm])
    assert abs(res.N_orig / n_exact - 1) < 0.02
    assert abs(kl(truth, gmm) - kl(truth, exact)) < 0.01
    assert (axis_selection_loglike(exact, X, 0, omega)
            - axis_selection_loglike(gmm, X, 0, omega)) < 0.05


def six_in_4d():
    """Six well separated 4-D components (mean distances >= 5, widths ~0.6)."""
    g = dg.GMM(6, 4)
    g.amp = np.array([0.25, 0.2, 0.15, 0.15, 0.15, 0.1])
    g.mean = np.array([[0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0],
                       [0, 0, 0, 5], [5, 5, 5, 5]], dtype=float)
    A = np.random.default_rng(3).normal(size=(6, 4, 4)) * 0.2
    g.covar = A @ np.swapaxes(A, 1, 2) + 0.25 * np.eye(4)
    return g


@pytest.mark.parametrize("seed", range(5))
def test_default_fit_recovers_six_components_with_errors_and_missing_values(seed):
    truth = six_in_4d()
    rng = np.random.default_rng(seed)
    n = 6000
    X = truth.draw(n, rng=rng)
    var = rng.uniform(0.02, 0.1, size=(n, 4))             # per-row diagonal errors
    X = X + rng.standard_normal(X.shape) * np.sqrt(var)
    X[rng.random(X.shape) < 0.1] = np.nan                 # 10 % missing values
    X[np.isnan(X).all(axis=1), 0] = 0.0
    gmm = dg.GMM(6, 4)
    res = dg.fit(gmm, X, var, rng=seed)                   # every option at its default
    assert res.converged
    dist = np.sqrt(((truth.mean[:, None] - gmm.mean[None]) ** 2).sum(-1)).min(axis=1)
    assert dist.max() < 0.1, dist


def _tight_tol_scenario(name):
    """(X, covar, sel, covar_callback, K, D) of this file's truncated scenarios, seed 1."""
    if name == "demo":
        truth, sel, noise = truth_model(), selection(), ConstantNoise(0.25 * np.eye(2))
        X, covar, _ = dg.draw(truth, orig_size=4000, sel_callback=sel, covar_callback=noise,
                              rng=1)
        return X, covar, sel, noise, 3, 2
    truth = cut_population(4 if name == "cut4d" else 2)
    D = truth.D
    sel = (Sigmoid(0, threshold=0.0, width=0.5, direction=-1) if name == "soft"
           else Box(upper=[0.0] + [np.inf] * (D - 1)))
    noise = GrowingNoise() if name == "full" else None
    X, covar, _ = dg.draw(truth, orig_size=4000, sel_callback=sel, covar_callback=noise, rng=1)
    return X, covar, sel, noise, 2, D


@pytest.mark.parametrize("name", ["demo", "cut2d", "cut4d", "soft", "full"])
def test_tight_tol_on_the_truncated_scenarios(name):
    # The test of tol=1e-6 with every other option at its default: converged
    # within 500 iterations, the last 20 recorded likelihoods within 1e-6 (the hardest
    # case, a component mostly beyond a 4-D cut: tests/test_em.py)
    X, covar, sel, noise, K, D = _tight_tol_scenario(name)
    res = dg.fit(dg.GMM(K, D), X, covar, sel_callback=sel, covar_callback=noise, rng=1,
                 tol=1e-6)
    assert res.converged and res.n_iter <= 500, res.n_iter
    assert np.ptp(res.history[-20:]) < 1e-6
