"""The four numerical fixes of issue 14, each on the reproduction that showed it."""

import warnings

import numpy as np
import pytest
from scipy.integrate import dblquad
from scipy.special import ndtr

import daskgmmis as dg
from daskgmmis import kernels
from daskgmmis.background import log_background
from conftest import make_truth


def quiet_fit(g, X, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        return dg.fit(g, X, *args, **kw)


def test_frozen_mean_free_covariance_is_scatter_about_the_frozen_mean():
    """4,000 draws of N(0, 1), mean frozen at 1: the covariance is the scatter about 1."""
    x = np.random.default_rng(0).normal(size=(4000, 1))
    g = dg.GMM(1, 1)
    g.mean[:] = 1.0
    res = quiet_fit(g, x, init_method="none", frozen={"mean": [0]}, tol=1e-10)
    scatter = float(np.mean((x - 1.0) ** 2))          # closed form, ~2.03
    assert g.mean[0, 0] == 1.0
    assert g.covar[0, 0, 0] == pytest.approx(scatter, rel=1e-9)
    # the constrained optimum's likelihood, in closed form
    assert res.logL == pytest.approx(-0.5 * np.log(2 * np.pi * scatter) - 0.5, abs=1e-9)


def test_background_given_amp_zero_is_fitted():
    """30% uniform contamination, Background(amp=0) adjusted: amp found, components sane."""
    rng = np.random.default_rng(1)
    n, n_bg = 10_000, 3_000
    lo, hi = np.array([-10.0, -10.0]), np.array([10.0, 10.0])
    X = np.vstack([rng.normal(size=(n - n_bg, 2)), lo + (hi - lo) * rng.random((n_bg, 2))])
    bg = dg.Background((lo, hi), amp=0.0)
    g = dg.GMM(1, 2)
    res = quiet_fit(g, X, background=bg, tol=1e-6, rng=0)
    assert res.bg_amp == pytest.approx(0.3, abs=0.02)
    np.testing.assert_allclose(g.covar[0], np.eye(2), atol=0.1)
    # a background held at 0 stays at 0
    held = dg.Background((lo, hi), amp=0.0, adjust_amp=False)
    quiet_fit(dg.GMM(1, 2), X, background=held, tol=1e-3, rng=0, maxiter=5)
    assert held.amp == 0.0


def _box_probability(x, S, lo, hi):
    """P(x + e in [lo, hi]) by 2-D adaptive quadrature of the Gaussian density."""
    P = np.linalg.inv(S)
    c = 1.0 / (2 * np.pi * np.sqrt(np.linalg.det(S)))

    def pdf(y2, y1):
        d = np.array([y1, y2]) - x
        return c * np.exp(-0.5 * d @ P @ d)

    return dblquad(pdf, lo[0], hi[0], lo[1], hi[1], epsabs=0, epsrel=1e-9)[0]


@pytest.mark.parametrize("x", [[-0.1, 1.1], [0.05, 0.97], [0.5, 1.02], [-0.05, -0.05]])
def test_background_convolved_with_correlated_noise_exactly(x):
    """rho = 0.95 near a footprint corner: the exact rectangle probability, not the diagonal's."""
    lo, hi = np.zeros(2), np.ones(2)
    bg = dg.Background((lo, hi), amp=1.0)
    S = 0.01 * np.array([[1.0, -0.95], [-0.95, 1.0]])
    x = np.asarray(x)
    ref = _box_probability(x, S, lo, hi)
    got = np.exp(bg.log_density(x[None], noise_cov=S)[0])
    assert got == pytest.approx(ref, rel=1e-6)
    # and through the E-step's entry point, per-row full noise
    lb = log_background(bg, x[None], S[None], "full")
    assert np.exp(lb[0]) == pytest.approx(ref, rel=1e-6)


def test_background_correlated_corner_far_from_diagonal_value():
    """The reproduction: the diagonal product is off by orders of magnitude at the corner."""
    lo, hi = np.zeros(2), np.ones(2)
    bg = dg.Background((lo, hi), amp=1.0)
    S = 0.01 * np.array([[1.0, 0.95], [0.95, 1.0]])   # elongated along the corner's edge
    x = np.array([-0.2, 1.2])
    ref = _box_probability(x, S, lo, hi)
    diag = np.prod(ndtr((hi - x) / 0.1) - ndtr((lo - x) / 0.1))
    assert ref < 1e-3 * diag            # the approximation is badly wrong here
    assert np.exp(bg.log_density(x[None], noise_cov=S)[0]) == pytest.approx(ref, rel=1e-6)
    # a 3-D footprint (the quasi-Monte-Carlo branch) against the 2-D value times a factor:
    # an uncorrelated third feature far inside multiplies by 1/width exactly
    bg3 = dg.Background(([0, 0, -5], [1, 1, 5]), amp=1.0)
    S3 = np.zeros((3, 3))
    S3[:2, :2] = S
    S3[2, 2] = 0.01
    got = np.exp(bg3.log_density(np.array([[-0.2, 1.2, 0.0]]), noise_cov=S3)[0])
    assert got == pytest.approx(ref / 10, rel=1e-6)


def test_rows_outside_every_neighborhood_keep_their_log_density():
    """A row leaving the last neighborhood must not raise the mean logL."""
    t = make_truth(2, 2, seed=4)
    rng = np.random.default_rng(2)
    X = np.vstack([t.draw(2000, rng=rng), [[60.0, -60.0]]])
    row_logl, n_out, _ = kernels.estep_block(X, None, "none", t.amp, t.mean, t.covar,
                                             cutoff=3.0)
    assert n_out >= 1
    exact = t.logL(X)
    assert np.all(np.isfinite(row_logl))
    np.testing.assert_allclose(row_logl[-1], exact[-1], rtol=1e-12)
    # the fit's mean logL counts every row it divides by
    g = t.copy()
    res = quiet_fit(g, X, init_method="none", cutoff=3.0, tol=1e-6)
    assert res.n_outside >= 1
    full = g.logL(X)
    # dropping the outlier would move the mean by more than 0.1; the neighborhoods'
    # own approximation (far components left out of in-reach rows) is far smaller
    assert full[-1] / len(X) < -0.1
    assert res.logL == pytest.approx(float(np.mean(full)), abs=2e-3)
