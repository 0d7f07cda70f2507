"""Fits with every option at its default land on the right answer (issue 12, part).

Only data, noise, the selection and its noise callback, and the seed are passed: the
start, tol and oversampling are the library's. CI budget ~30 s: three seeds of
pyGMMis's demo geometry at 4,000 rows and three plain 4-D catalogs of 6,000 rows.
Tolerances are against the truth: KL(truth || fit) by Monte Carlo over 40,000 draws.
"""

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.demo import selection, truth_model


class ConstantNoise:
    """Picklable covar_callback: one shared noise matrix."""

    def __init__(self, matrix):
        self.matrix = matrix

    def __call__(self, coords):
        return self.matrix


def kl(truth, fit, n=40_000, seed=0):
    s = truth.draw(n, rng=seed)
    return float(np.mean(truth(s, as_log=True) - fit(s, as_log=True)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_default_truncated_fit_on_the_demo_geometry(seed):
    # the reproduction: with the old random default these seeds gave
    # KL 1.4 / 2.6 / 1.6 and N_orig 14,912 / 34,192 / 6,710 for a true 4,000
    truth, sel, S = truth_model(), selection(), 0.25 * np.eye(2)
    X, covar, n = dg.draw(truth, orig_size=4000, sel_callback=sel,
                          covar_callback=ConstantNoise(S), rng=seed)
    gmm = dg.GMM(3, 2)
    res = dg.fit(gmm, X, covar, sel_callback=sel, covar_callback=ConstantNoise(S), rng=seed)
    assert res.converged
    # Bounds are those of the maximum-likelihood answer, not of the truth: on seed 1
    # the ML reference (a long run from the truth, oversampling 32) has KL 0.086-0.105
    # and N_orig 1.13-1.15x the truth (benchmarks/truncation_accuracy.py); the default
    # fit measured 1.6 % / 0.011 from it (seed 1) and 0.9 % / -0.029 (seed 2).
    assert kl(truth, gmm) < 0.15
    assert abs(res.N_orig / n - 1) < 0.2


def six_in_4d():
    """Six well separated 4-D components (mean distances >= 5, widths ~0.6)."""
    g = dg.GMM(6, 4)
    g.amp = np.array([0.25, 0.2, 0.15, 0.15, 0.15, 0.1])
    g.mean = np.array([[0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0],
                       [0, 0, 0, 5], [5, 5, 5, 5]], dtype=float)
    A = np.random.default_rng(3).normal(size=(6, 4, 4)) * 0.2
    g.covar = A @ np.swapaxes(A, 1, 2) + 0.25 * np.eye(4)
    return g


@pytest.mark.parametrize("seed", range(3))
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
