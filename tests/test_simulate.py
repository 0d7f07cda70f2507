"""draw(): the simulated observation process (population, noise, selection, background).

Statistical checks use fixed seeds and tolerances of 4-5 standard errors computed
from the binomial / negative-binomial / sample-covariance formulas, so a correct
implementation fails with probability < 1e-4 per check and a wrong one (missing
noise, selection at the true positions, over-counted N_orig...) is off by many SE.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtr
from scipy.stats import kstest

import daskgmmis as dg
from daskgmmis import selection, simulate
from daskgmmis.errors import CallbackError, InputError, InputTypeError
from daskgmmis.simulate import draw


def gmm_of(amp, mean, covar):
    g = dg.GMM(len(amp), np.shape(mean)[1])
    g.amp, g.mean, g.covar = (np.asarray(a, dtype=float) for a in (amp, mean, covar))
    return g


def point(mean, eps=1e-12):
    """A single, point-like component: samples are the noise alone."""
    D = len(mean)
    return gmm_of([1.0], [mean], [eps * np.eye(D)])


# 1-D reference: v ~ N(0, 1), noise variance 0.25, normal-profile edge at 0.5 of width
# 0.7: the noisy x ~ N(0, 1.25) and E[Omega] = Phi(-0.5 / sqrt(0.7**2 + 1.25)).
G1 = gmm_of([1.0], [[0.0]], [[[1.0]]])
SEL1 = selection.Sigmoid(0, 0.5, 0.7, profile="normal")
P1 = float(ndtr(-0.5 / np.sqrt(0.7 ** 2 + 1.25)))


def noise1(v):
    return np.full(v.shape, 0.25)


def test_observed_fraction_matches_mean_omega_1d():
    N = 40_000
    x, cov, N_orig = draw(G1, None, SEL1, orig_size=N, covar_callback=noise1, rng=1)
    se = np.sqrt(P1 * (1 - P1) / N)
    assert N_orig == N and cov.shape == (len(x), 1)
    assert abs(len(x) / N - P1) < 4 * se


def test_observed_fraction_mixture_box_and_noise():
    # Two diagonal components, shared diagonal noise, a box: E[Omega] factorizes per
    # component and dimension into differences of normal CDFs.
    amp, mean = np.array([0.3, 0.7]), np.array([[0.0, 1.0], [2.0, -1.0]])
    var = np.array([[1.0, 0.5], [0.3, 2.0]])
    g = gmm_of(amp, mean, [np.diag(v) for v in var])
    S = np.diag([0.2, 0.4])
    lo, hi = np.array([-0.5, -2.0]), np.array([2.5, 1.5])
    sd = np.sqrt(var + np.diag(S))
    p = float(np.sum(amp * np.prod(ndtr((hi - mean) / sd) - ndtr((lo - mean) / sd), axis=1)))
    N = 30_000
    x, cov, _ = draw(g, None, selection.Box(lo, hi), orig_size=N,
                     covar_callback=lambda v: S, rng=2)
    assert np.array_equal(cov, S)
    assert np.all((x >= lo) & (x <= hi))
    assert abs(len(x) / N - p) < 4 * np.sqrt(p * (1 - p) / N)


@pytest.mark.parametrize("invert", [False, True])
def test_N_orig_is_negative_binomial_mean(invert):
    p = 1 - P1 if invert else P1
    obs = 20_000
    x, _, N_orig = draw(G1, obs, SEL1, invert_sel=invert, covar_callback=noise1, rng=3)
    assert x.shape == (obs, 1)
    # N_orig ~ NegBin: mean obs/p, sd sqrt(obs (1-p))/p
    assert abs(N_orig - obs / p) < 4 * np.sqrt(obs * (1 - p)) / p


def test_N_orig_counts_only_rows_up_to_the_last_kept_one():
    # Tiny samples: the first batch overshoots (1.1 * need + 16 rows), so counting the
    # whole batch would give ~22 instead of 5/p = 16.7 here.
    reps, obs = 400, 5
    N = np.array([draw(G1, obs, SEL1, rng=s)[2] for s in range(reps)])
    p = float(ndtr(-0.5 / np.sqrt(0.7 ** 2 + 1.0)))  # no noise this time
    se = np.sqrt(obs * (1 - p)) / p / np.sqrt(reps)
    assert abs(N.mean() - obs / p) < 4 * se
    assert N.min() >= obs


def test_hard_cut_and_inversion_partition_the_population():
    box = selection.Box([-0.5, None], [1.0, 0.8])
    g = gmm_of([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), 0.5 * np.eye(2)])
    noise = lambda v: np.broadcast_to([[0.1, 0.05], [0.05, 0.2]], (len(v), 2, 2))
    kw = dict(orig_size=3000, covar_callback=noise, rng=4)
    obs, cov_o, _ = draw(g, None, box, **kw)
    hid, cov_h, _ = draw(g, None, box, invert_sel=True, **kw)
    full, cov_f, _ = draw(g, None, lambda v: np.ones(len(v)), **kw)  # same random stream
    assert np.all(box(obs) == 1) and np.all(box(hid) == 0)
    assert len(obs) + len(hid) == 3000 and len(obs) > 500 and len(hid) > 500
    np.testing.assert_array_equal(np.sort(np.concatenate([obs, hid]), axis=0),
                                  np.sort(full, axis=0))
    assert cov_o.shape == (len(obs), 2, 2) and cov_h.shape == (len(hid), 2, 2)
    # exact obs_size with a hard cut, both ways
    for invert in (False, True):
        x, _, N = draw(g, 777, box, invert_sel=invert, covar_callback=noise, rng=5)
        assert x.shape == (777, 2) and np.all(box(x) == (0 if invert else 1)) and N >= 777


def test_selection_sees_the_noisy_positions():
    # Every true position is at -0.5, outside [0, inf): only noise brings rows in.
    x, _, _ = draw(point([-0.5]), None, selection.Box([0.0], None), orig_size=20_000,
                   covar_callback=lambda v: np.ones_like(v), rng=6)
    p = float(ndtr(-0.5))
    assert np.all(x >= 0) and abs(len(x) / 20_000 - p) < 4 * np.sqrt(p * (1 - p) / 20_000)


@pytest.mark.parametrize("kind", ["full", "diag", "shared"])
def test_noise_covariance_added(kind):
    V = np.array([[1.0, 0.3], [0.3, 0.5]])
    S = np.array([[0.4, -0.2], [-0.2, 0.3]]) if kind != "diag" else np.diag([0.4, 0.3])
    callback = {"full": lambda v: np.broadcast_to(S, (len(v), 2, 2)),
                "diag": lambda v: np.broadcast_to(np.diag(S), v.shape),
                "shared": lambda v: S}[kind]
    n = 20_000
    x, cov, _ = draw(gmm_of([1.0], [[1.0, -2.0]], [V]), n, covar_callback=callback, rng=7)
    assert cov.shape == {"full": (n, 2, 2), "diag": (n, 2), "shared": (2, 2)}[kind]
    C = V + S
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C ** 2) / n)
    assert np.all(np.abs(np.cov(x.T) - C) < 5 * se)
    assert np.all(np.abs(x.mean(0) - [1.0, -2.0]) < 5 * np.sqrt(np.diag(C) / n))


def test_noise_depends_on_true_position_and_rows_stay_aligned():
    g = gmm_of([0.5, 0.5], [[0.0], [3.0]], [[[1e-12]], [[1e-12]]])
    x, var, _ = draw(g, 20_000, covar_callback=lambda v: 0.1 + v ** 2, rng=8)
    # computed at the true positions: exactly two noise levels, one per component
    near = np.isclose(var[:, 0], 0.1, atol=1e-5)
    far = np.isclose(var[:, 0], 9.1, atol=1e-4)
    assert np.all(near | far) and abs(near.mean() - 0.5) < 4 * np.sqrt(0.25 / 20_000)
    for rows, mu, s2 in ((near, 0.0, 0.1), (far, 3.0, 9.1)):
        n = rows.sum()
        assert abs(x[rows, 0].mean() - mu) < 5 * np.sqrt(s2 / n)
        assert abs(x[rows, 0].var() - s2) < 5 * s2 * np.sqrt(2 / n)


def test_singular_noise_is_allowed():
    x, _, _ = draw(point([1.0, 1.0]), 2000, covar_callback=lambda v: np.diag([1.0, 0.0]),
                   rng=9)
    assert np.allclose(x[:, 1], 1.0, atol=1e-5) and x[:, 0].std() > 0.9


def test_background_fraction_and_uniformity():
    bg = dg.Background(([0.0, 0.0], [1.0, 1.0]), amp=0.3)
    g = gmm_of([0.7], [[10.0, 10.0]], [0.01 * np.eye(2)])  # amplitudes sum to 1 - amp_bg
    N = 20_000
    x, cov, N_orig = draw(g, None, orig_size=N, background=bg, rng=10)
    assert cov is None and N_orig == N and len(x) == N
    inside = np.all((x >= 0) & (x <= 1), axis=1)
    assert abs(inside.mean() - 0.3) < 4 * np.sqrt(0.21 / N)
    for j in range(2):
        assert kstest(x[inside, j], "uniform").pvalue > 1e-3
    # background rows are selected like any other
    x, _, _ = draw(g, 500, selection.Box([0.0, 0.0], [0.5, 1.0]), background=bg, rng=11)
    assert np.all(x[:, 0] <= 0.5)
    only_bg = dg.Background(([0.0], [1.0]), amp=1.0)
    x, _, _ = draw(gmm_of([0.0], [[5.0]], [[[1.0]]]), 100, background=only_bg, rng=12)
    assert np.all((x >= 0) & (x <= 1))


def test_reproducible_for_a_seed():
    kw = dict(sel_callback=SEL1, covar_callback=noise1)
    a = draw(G1, 300, rng=13, **kw)
    b = draw(G1, 300, rng=np.random.default_rng(13), **kw)
    c = draw(G1, 300, rng=np.random.SeedSequence(13), **kw)
    for other in (b, c):
        np.testing.assert_array_equal(a[0], other[0])
        np.testing.assert_array_equal(a[1], other[1])
        assert a[2] == other[2]
    assert not np.array_equal(a[0], draw(G1, 300, rng=14, **kw)[0])


def test_many_small_batches(monkeypatch):
    monkeypatch.setattr(simulate, "_MAX_BATCH", 64)
    obs = 3000
    x, var, N = draw(G1, obs, SEL1, covar_callback=noise1, rng=15)
    assert x.shape == (obs, 1) and var.shape == (obs, 1)
    assert abs(N - obs / P1) < 4 * np.sqrt(obs * (1 - P1)) / P1
    # a shared matrix that changes between batches falls back to per-row matrices
    calls = []

    def drifting(v):
        calls.append(1)
        return np.array([[float(len(calls))]])

    x, cov, _ = draw(G1, None, orig_size=200, covar_callback=drifting, rng=16)
    assert cov.shape == (200, 1, 1) and cov[0, 0, 0] == 1 and cov[-1, 0, 0] == len(calls)
    # a callback switching kinds is rejected
    flip = lambda v: np.ones((1, 1)) if len(v) == 64 else np.ones((len(v), 1, 1))
    with pytest.raises(CallbackError, match="kinds"):
        draw(G1, None, orig_size=100, covar_callback=flip, rng=17)


def test_empty_requests():
    x, cov, N = draw(G1, 0, SEL1, covar_callback=noise1, rng=0)
    assert x.shape == (0, 1) and cov.shape == (0, 1) and N == 0
    x, cov, N = draw(G1, None, orig_size=0, covar_callback=lambda v: np.eye(1), rng=0)
    assert x.shape == (0, 1) and cov.shape == (1, 1) and N == 0
    x, cov, N = draw(G1, 0, rng=0)
    assert x.shape == (0, 1) and cov is None and N == 0


def test_selection_that_keeps_nothing_raises():
    never = lambda v: np.zeros(len(v))
    with pytest.raises(CallbackError, match=r"only 0 of 5000 .*observed.*max_draws=5000"):
        draw(G1, 10, never, rng=0, max_draws=5000)
    with pytest.raises(CallbackError, match=r"unobserved.*max_draws=102000"):
        draw(G1, 2, lambda v: np.ones(len(v)), invert_sel=True, rng=0)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(gmm="gmm", obs_size=3), InputTypeError, "gmm: expected a daskgmmis.GMM"),
    (dict(obs_size=-1), InputError, "non-negative"),
    (dict(obs_size=2.5), InputTypeError, "obs_size"),
    (dict(obs_size=True), InputTypeError, "obs_size"),
    (dict(obs_size=None), InputError, "exactly one"),
    (dict(obs_size=3, orig_size=10), InputError, "exactly one"),
    (dict(obs_size=3, sel_callback="box"), InputTypeError, "sel_callback"),
    (dict(obs_size=3, covar_callback=1.0), InputTypeError, "covar_callback"),
    (dict(obs_size=3, invert_sel=True), InputError, "invert_sel=True needs a sel_callback"),
    (dict(obs_size=3, invert_sel="yes", sel_callback=SEL1), InputTypeError, "invert_sel"),
    (dict(obs_size=3, background=dg.Background(([0, 0], [1, 1]), 0.2)), InputError, "D=2"),
    (dict(obs_size=3, background=([0], [1])), InputTypeError, "background"),
    (dict(obs_size=3, rng="seed"), InputTypeError, "rng"),
    (dict(obs_size=3, max_draws=0), InputError, "max_draws"),
])
def test_argument_errors(kwargs, error, words):
    kwargs = {"gmm": G1, **kwargs}
    with pytest.raises(error, match=words):
        draw(**kwargs)


def test_callback_errors_surface_as_callback_error():
    with pytest.raises(CallbackError, match="covar_callback output: .*negative variance"):
        draw(G1, 5, covar_callback=lambda v: -np.ones_like(v), rng=0)
    with pytest.raises(CallbackError, match="sel_callback raised RuntimeError"):
        draw(G1, 5, lambda v: (_ for _ in ()).throw(RuntimeError("no")), rng=0)
    with pytest.raises(CallbackError, match=r"shape \(\d+,\)"):
        draw(G1, 5, lambda v: v, rng=0)


@settings(max_examples=25, deadline=None)
@given(obs=st.integers(0, 60), seed=st.integers(0, 2 ** 32 - 1), invert=st.booleans(),
       lo=st.floats(-2, 1), width=st.floats(0.2, 3))
def test_draw_contract_property(obs, seed, invert, lo, width):
    box = selection.Box([lo], [lo + width])
    x, var, N = draw(G1, obs, box, invert_sel=invert, covar_callback=noise1, rng=seed)
    assert x.shape == (obs, 1) and var.shape == (obs, 1) and np.all(var == 0.25)
    assert np.all(box(x) == (0.0 if invert else 1.0))
    assert N >= obs and (obs > 0 or N == 0)
