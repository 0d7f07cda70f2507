"""Unit tests of the pure modules: mstep, stats, acceleration, background, validation,
imputation; and Anderson acceleration against plain EM."""

import json
import logging
import warnings

import numpy as np
import pytest
from scipy.integrate import quad

import daskgmmis as dg
from daskgmmis.acceleration import (OVERRELAX_MAX, anderson, fixed_point_shift, leaving_saddle,
                                    next_overrelax, overrelaxed, pack)
from daskgmmis.checkpoint import Theta
from daskgmmis.errors import DeadComponentWarning, InputError, InputTypeError
from daskgmmis.imputation import (PROPOSAL_WIDTH, candidate_count, draw_candidates,
                                  impute_block)
from daskgmmis.mstep import mstep, parse_frozen
from daskgmmis.selection import Box
from daskgmmis.stats import SuffStats, sum_stats
from daskgmmis.validation import (as_index_array, check_data_block, check_model_params,
                                  check_numeric)
from conftest import checkpoint_states, make_truth


def hard_stats(x, labels, mean, K):
    """Sufficient statistics of hard assignments, centred on ``mean`` (brute force)."""
    D = x.shape[1]
    s = SuffStats.zeros(K, D)
    for k in range(K):
        d = x[labels == k] - mean[k]
        s.A[k], s.M1[k], s.M2[k] = len(d), d.sum(axis=0), d.T @ d
    s.n = len(x)
    return s


@pytest.fixture(scope="module")
def three():
    rng = np.random.default_rng(0)
    t = make_truth(3, 2, seed=1)
    labels = rng.choice(3, size=3000, p=t.amp)
    x = np.array([rng.multivariate_normal(t.mean[k], t.covar[k]) for k in labels])
    start = Theta(np.full(3, 1 / 3), t.mean + 0.5, np.array([np.eye(2)] * 3), None)
    return x, labels, start


# ------------------------------------------------------------------------ mstep

def test_mstep_is_sample_moments_plus_regularization(three):
    x, labels, start = three
    theta, dead = mstep(hard_stats(x, labels, start.mean, 3), start, w=0.3)
    assert dead.size == 0
    for k in range(3):
        xk = x[labels == k]
        np.testing.assert_allclose(theta.mean[k], xk.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(theta.covar[k], np.cov(xk.T, bias=True) + 0.09 * np.eye(2),
                                   rtol=1e-10)
        assert theta.amp[k] == pytest.approx(len(xk) / len(x), rel=1e-12)


def test_mstep_frozen_parts_kept_bit_for_bit_and_amplitudes_shared(three):
    x, labels, start = three
    start = Theta(np.array([0.2, 0.5, 0.3]), start.mean, start.covar, None)
    frozen = parse_frozen({"amp": [0], "mean": [1], "covar": [2]}, 3)
    theta, _ = mstep(hard_stats(x, labels, start.mean, 3), start, frozen=frozen)
    assert theta.amp[0] == 0.2
    assert np.array_equal(theta.mean[1], start.mean[1])
    assert np.array_equal(theta.covar[2], start.covar[2])
    # the free amplitudes share what the frozen one leaves, in proportion to A
    n1, n2 = (labels == 1).sum(), (labels == 2).sum()
    np.testing.assert_allclose(theta.amp[1:], 0.8 * np.array([n1, n2]) / (n1 + n2), rtol=1e-12)
    # a frozen mean's free covariance is the scatter about that mean
    d = x[labels == 1] - start.mean[1]
    np.testing.assert_allclose(theta.covar[1], d.T @ d / len(d), rtol=1e-10)


def test_mstep_background_amplitude_clipped_and_shared(three):
    x, labels, start = three
    s = hard_stats(x, labels, start.mean, 3)
    s.bg = 0.4 * len(x)
    bg = dg.Background(([-20, -20], [20, 20]), amp=0.1, amp_max=0.25)
    theta, _ = mstep(s, Theta(start.amp * 0.9, start.mean, start.covar, 0.1), background=bg)
    assert theta.bg_amp == 0.25                                   # clipped at amp_max
    assert theta.amp.sum() == pytest.approx(0.75, abs=1e-12)
    held = dg.Background(([-20, -20], [20, 20]), amp=0.1, adjust_amp=False)
    theta, _ = mstep(s, Theta(start.amp * 0.9, start.mean, start.covar, 0.1), background=held)
    assert theta.bg_amp == 0.1


def test_mstep_reseeds_a_dead_component_from_the_heaviest(three):
    x, labels, start = three
    labels = np.where(labels == 2, 1, labels)              # component 2 gets no rows
    s = hard_stats(x, labels, start.mean, 3)
    with pytest.warns(DeadComponentWarning, match=r"\[2\]"):
        theta, dead = mstep(s, start)
    assert dead.tolist() == [2]
    assert np.all(np.isfinite(theta.mean)) and np.all(np.isfinite(theta.covar))
    heavy = int(np.argmax([(labels == k).sum() for k in range(2)]))
    # the donor and the re-seeded component are its two halves: same covariance,
    # means mirrored about the donor's new mean, half the weight each
    assert np.array_equal(theta.covar[2], theta.covar[heavy])
    centre = x[labels == heavy].mean(axis=0)
    np.testing.assert_allclose(0.5 * (theta.mean[2] + theta.mean[heavy]), centre, rtol=1e-10)
    assert theta.amp[2] == pytest.approx(theta.amp[heavy], rel=1e-12)
    assert theta.amp.sum() == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------ stats

def test_stats_add_scale_and_tree_sum():
    rng = np.random.default_rng(1)
    parts = [SuffStats(rng.random(2), rng.random((2, 3)), rng.random((2, 3, 3)), 1.5, -2.0,
                       10, 1) for _ in range(5)]
    total = sum_stats(*parts[:2], None, *parts[2:])
    np.testing.assert_allclose(total.M2, sum(p.M2 for p in parts), rtol=1e-15)
    assert total.n == 50 and total.n_outside == 5 and total.bg == 7.5
    half = total.scaled(0.5)
    np.testing.assert_allclose(half.A, total.A / 2)
    assert half.bg == total.bg / 2 and half.logl == total.logl and half.n == total.n
    pairs = sum_stats((parts[0], parts[1]), (parts[2], parts[3]))
    np.testing.assert_array_equal(pairs[0].A, parts[0].A + parts[2].A)
    assert sum_stats(None, None) is None
    z = SuffStats.zeros(4, 2)
    assert z.A.shape == (4,) and z.M2.shape == (4, 2, 2) and z.n == 0


# ----------------------------------------------------------------- acceleration

def linear_em_pairs(A, b, x0, n):
    """Pairs (x_i, M(x_i)) of the linear map M(x) = A x + b, as packed K=1, D=1 models."""
    scale = np.ones(1)
    xs, gs, x = [], [], np.asarray(x0, float)
    for _ in range(n):
        gx = A @ x + b
        xs.append(pack(Theta(np.ones(1), x[:1, None], x[1:, None, None] ** 2, None), scale))
        gs.append(pack(Theta(np.ones(1), gx[:1, None], gx[1:, None, None] ** 2, None), scale))
        x = gx
    return np.array(xs), np.array(gs), scale


def test_anderson_mixing_is_exact_on_a_linear_map():
    # EM crawling at rate 0.999 along one direction, 0.5 along the other: three pairs
    # span the residuals of a 2-D linear map, so the mixed point is its fixed point
    A = np.array([[0.999, 0.02], [0.0, 0.5]])
    b = np.array([0.5, 0.4])
    fixed = np.linalg.solve(np.eye(2) - A, b)
    xs, gs, scale = linear_em_pairs(A, b, [0.0, 1.0], 3)
    template = Theta(np.ones(1), np.zeros((1, 1)), np.ones((1, 1, 1)), None)
    out = anderson(xs, gs, template, scale, parse_frozen(None, 1), None)
    np.testing.assert_allclose(out.mean[0, 0], fixed[0], rtol=1e-9)
    np.testing.assert_allclose(out.covar[0, 0, 0], fixed[1] ** 2, rtol=1e-9)
    # plain EM from the same start is still 5 % of the way away after the 3 steps
    assert abs(xs[-1][1] - fixed[0]) > 0.05 * abs(fixed[0])
    # one pair has no secant: no mixed point
    assert anderson(xs[:1], gs[:1], template, scale, parse_frozen(None, 1), None) is None


def test_fixed_point_shift_is_exact_on_a_linear_map():
    # M(x) = A x + b moved by d has its fixed point moved by (I - A)^-1 d: along the
    # direction EM crawls at 0.999 that is 1000 d, along the fast one 2 d
    A = np.array([[0.999, 0.02], [0.0, 0.5]])
    d = np.array([[1e-3, 0.0], [2e-3, 1e-3]])
    exact = np.linalg.solve(np.eye(2) - A, d)
    for dX in (np.eye(2), np.array([[1.0, 0.3], [0.2, -0.7]])):     # any two secants
        np.testing.assert_allclose(fixed_point_shift(dX, A @ dX, d), exact, rtol=1e-10)
    # secants of the slow direction alone: its amplification is found, the rest is
    # taken as it is (J = 0 off the secants' span)
    dX = np.array([[1.0], [0.0]])
    A1 = np.diag([0.999, 0.0])
    np.testing.assert_allclose(fixed_point_shift(dX, A1 @ dX, d),
                               np.linalg.solve(np.eye(2) - A1, d), rtol=1e-10)


def test_anderson_does_not_lead_back_onto_a_saddle():
    # EM leaves a saddle along a direction it expands (eigenvalue 1.05): the secant
    # model sees it and no mixed point is offered (mixing would jump onto the saddle);
    # the same map with that eigenvalue at 0.95 is mixed
    template = Theta(np.ones(1), np.zeros((1, 1)), np.ones((1, 1, 1)), None)
    frozen = parse_frozen(None, 1)
    for rate, offered in ((1.05, False), (0.95, True)):
        A = np.array([[rate, 0.0], [0.0, 0.5]])
        xs, gs, scale = linear_em_pairs(A, np.array([0.1, 0.4]), [0.3, 1.0], 3)
        assert (anderson(xs, gs, template, scale, frozen, None) is not None) == offered


def test_leaving_a_saddle_the_mixed_point_is_the_over_relaxed_step():
    # the saddle test's pairs: the expanding direction (1.05) is seen, a contracting
    # one (0.95) is not
    for rate, leaving in ((1.05, True), (0.95, False)):
        A = np.array([[rate, 0.0], [0.0, 0.5]])
        xs, gs, _ = linear_em_pairs(A, np.array([0.1, 0.4]), [0.3, 1.0], 3)
        assert leaving_saddle(xs, gs) is leaving
    # x + eta (M(x) - x) in the packed parameters: the mean and the Cholesky factor
    frozen = parse_frozen(None, 1)
    x = Theta(np.ones(1), np.array([[0.3]]), np.array([[[1.0]]]), None)
    image = Theta(np.ones(1), np.array([[0.5]]), np.array([[[1.44]]]), None)
    out = overrelaxed(x, image, 4.0, np.ones(1), frozen, None)
    assert out.mean[0, 0] == pytest.approx(0.3 + 4 * 0.2)
    assert out.covar[0, 0, 0] == pytest.approx((1.0 + 4 * 0.2) ** 2)
    # amplitudes driven below zero: no point
    m, covar = np.zeros((2, 1)), np.array([np.eye(1)] * 2)
    x2 = Theta(np.array([0.5, 0.5]), m, covar, None)
    image2 = Theta(np.array([0.3, 0.7]), m, covar, None)
    assert overrelaxed(x2, image2, 4.0, np.ones(1), parse_frozen(None, 2), None) is None
    assert overrelaxed(x2, image2, 2.0, np.ones(1), parse_frozen(None, 2), None) is not None
    # the step doubles while kept, up to 64 EM steps, and starts again at 2
    assert [next_overrelax(e, True) for e in (2.0, 32.0, 64.0)] == [4.0, 64.0, 64.0]
    assert next_overrelax(16.0, False) == 2.0


def eight_overlapping() -> dg.GMM:
    """benchmarks/bench_truncation.py's population: 8 overlapping correlated 4-D
    components (means uniform in [-6, 6]^4)."""
    rng = np.random.default_rng(0)
    g = dg.GMM(8, 4)
    g.amp = rng.dirichlet(np.full(8, 5.0))
    g.mean = rng.uniform(-6, 6, size=(8, 4))
    A = rng.normal(size=(8, 4, 4)) * 0.6
    g.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(4)
    return g


def test_em_leaves_a_saddle_with_over_relaxed_steps():
    # 20,000 rows, the default start of rng 4 (two components on one cluster, one across
    # two): EM creeps away from a saddle at constant gains, where Anderson's mixing
    # would lead back onto it. With plain steps there the fit ended at maxiter=1000, not
    # converged, at mean logL -8.44261; with over-relaxed steps it converges in 761
    # iterations (865 with numpy 2.4.6 and scipy 1.17.1), 0.0005 nats per row higher
    X = eight_overlapping().draw(20_000, rng=5)
    res = dg.fit(dg.GMM(8, 4), X, rng=4)
    assert res.converged and res.logL > -8.4423, (res.n_iter, res.logL)


@pytest.mark.parametrize("pending", [True, False])
def test_a_fit_stopped_while_over_relaxing_resumes_bit_identical(tmp_path, caplog, monkeypatch,
                                                                 pending):
    # in the fit above, checkpoints taken while an over-relaxed point (eta > 2 EM steps)
    # is pending, and between two such points with eta > 2: the checkpoint must carry
    # both (either, dropped, changes a later step). The stops are read off the
    # uninterrupted fit's own states: where they fall depends on rounding (it moved
    # with the LAPACK build), what is tested does not
    X = eight_overlapping().draw(20_000, rng=5)
    end = 140
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        with checkpoint_states(monkeypatch, "overrelaxing", "overrelax") as saved:
            full = dg.fit(dg.GMM(8, 4), X, rng=4, maxiter=end,
                          checkpoint=tmp_path / "full.ckpt")
        later = [n for n, (on, _) in saved.items() if on]
        # a pending point whose eta is doubled when kept (below the cap), or eta > 2
        # between points; either way another over-relaxed point follows before the end
        stops = [n for n, (on, eta) in saved.items()
                 if on is pending and 2.0 < eta < OVERRELAX_MAX and 20 <= n < end - 10
                 and any(n + 1 < m < end - 1 for m in later)]
        assert stops, saved
        stop = stops[-1]
        dg.fit(dg.GMM(8, 4), X, rng=4, maxiter=stop, checkpoint=tmp_path / "c.ckpt")
        with np.load(tmp_path / "c.ckpt") as f:
            header = json.loads(f["header"].tobytes().decode())
        assert header["overrelaxing"] is pending and float.fromhex(header["overrelax"]) > 2.0
        with caplog.at_level(logging.INFO, logger="daskgmmis"):
            resumed = dg.fit(dg.GMM(8, 4), X, rng=4, maxiter=end,
                             checkpoint=tmp_path / "c.ckpt")
    assert resumed.history == full.history and resumed.n_iter == full.n_iter
    # resumed, not restarted: only the iterations after the checkpoint were evaluated
    steps = [r for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert 0 < len(steps) <= end - stop + 1


def test_anderson_restores_frozen_values_and_refuses_to_leave_the_parameter_space():
    A = np.array([[0.9, 0.0], [0.0, 0.9]])
    xs, gs, scale = linear_em_pairs(A, np.array([1.0, 0.2]), [0.0, 1.0], 3)
    template = Theta(np.ones(1), np.full((1, 1), 7.0), np.ones((1, 1, 1)), None)
    out = anderson(xs, gs, template, scale, parse_frozen({"mean": [0]}, 1), None)
    assert out.mean[0, 0] == 7.0 and out.covar[0, 0, 0] != 1.0
    # amplitudes heading below zero
    covar = np.array([np.eye(1)] * 2)
    m = np.zeros((2, 1))
    amps = [np.array([0.5, 0.5]), np.array([0.3, 0.7]), np.array([0.15, 0.85])]
    packed = [pack(Theta(a, m, covar, None), np.ones(1)) for a in amps]
    xs, gs = np.array(packed[:2]), np.array(packed[1:])
    template = Theta(amps[2], m, covar, None)
    assert anderson(xs, gs, template, np.ones(1), parse_frozen(None, 2), None) is None


def test_accelerated_and_plain_em_reach_the_same_fit_in_fewer_iterations():
    # heavy noise (variance 2.25 against component variances ~1): EM crawls
    truth = make_truth(2, 2, seed=5)
    rng = np.random.default_rng(2)
    X = truth.draw(2000, rng=rng) + 1.5 * rng.normal(size=(2000, 2))
    var = np.full((2000, 2), 2.25)
    start = truth.copy()
    start.mean = start.mean + 0.5
    fits = {}
    for acc in (True, False):
        g = start.copy()
        res = dg.fit(g, X, var, init_method="none", tol=1e-9, maxiter=3000, accelerate=acc)
        assert res.converged
        fits[acc] = (g, res)
    (ga, ra), (gp, rp) = fits[True], fits[False]
    # plain EM stops while still crawling (steps below tol): the same optimum to that
    assert ra.logL == pytest.approx(rp.logL, abs=1e-6)
    np.testing.assert_allclose(ga.mean, gp.mean, atol=1e-3)
    np.testing.assert_allclose(ga.covar, gp.covar, atol=1e-3)
    assert len(ra.history) < 0.5 * len(rp.history)            # E-steps performed


# ------------------------------------------------------------------- background

def test_background_density_no_noise_diag_noise_and_missing():
    bg = dg.Background(([0, -1], [2, 3]), amp=0.3)
    x = np.array([[1.0, 0.0], [3.0, 0.0], [1.0, np.nan]])
    ld = bg.log_density(x)
    assert ld[0] == pytest.approx(-np.log(8)) and ld[1] == -np.inf
    assert ld[2] == pytest.approx(-np.log(2))                 # marginal over feature 0
    var = np.array([0.25, 0.5])
    got = np.exp(bg.log_density(np.array([[1.9, 2.8]]), var)[0])
    ref = 1.0
    for j, (lo, hi, xj) in enumerate(zip(bg.lower, bg.upper, [1.9, 2.8])):
        s = np.sqrt(var[j])
        ref *= quad(lambda u: np.exp(-0.5 * ((u - xj) / s) ** 2) / (s * np.sqrt(2 * np.pi)),
                    lo, hi, epsabs=0, epsrel=1e-12)[0] / (hi - lo)
    assert got == pytest.approx(ref, rel=1e-9)
    assert dg.Background.from_dict(bg.to_dict()).to_dict() == bg.to_dict()


# ------------------------------------------------------------------- validation

def test_validation_names_argument_row_and_column():
    with pytest.raises(InputTypeError, match="coords: .*dtype <U"):
        check_numeric(np.array(["a"]), "coords")
    with pytest.raises(InputTypeError, match="dtype bool"):
        check_numeric(np.array([True]), "x")
    x = np.zeros((5, 2))
    x[3, 1] = np.inf
    with pytest.raises(InputError, match="data: row 13, column 1"):
        check_data_block(x, 10)
    x[3, 1] = np.nan
    x[3, 0] = np.nan
    with pytest.raises(InputError, match="row 3 has every feature missing"):
        check_data_block(x, 0)
    check_data_block(x, 0, allow_empty=True)
    assert as_index_array([2, 0, 2, -1], 4, "frozen").tolist() == [0, 2, 3]
    with pytest.raises(InputError, match=r"frozen: component indices must lie in \[0, 3\)"):
        as_index_array([5], 3, "frozen")
    with pytest.raises(InputTypeError, match="integer component indices"):
        as_index_array([0.5], 3, "frozen")
    with pytest.raises(InputError):
        check_model_params(np.array([0.5, 0.5]), np.zeros((2, 2)),
                           np.array([np.eye(2), -np.eye(2)]))


# ------------------------------------------------------------------- imputation

def test_candidate_count_scales_with_oversampling_and_unobserved_fraction():
    assert candidate_count(100, 4.0, 0.5) == 800
    assert candidate_count(100, 4.0, 1e-9) == 400_000          # f clipped at 1e-3
    assert candidate_count(0, 4.0, 0.5) == 0


def test_candidates_follow_the_proposal_and_are_keyed_by_block():
    g = make_truth(2, 2, seed=7)
    seed = np.random.SeedSequence(3)
    nothing = lambda c: np.zeros(len(c))                      # noqa: E731
    c = draw_candidates(2500, g.mean, g.covar, None, nothing, None, seed, 0)
    # Ω = 0: both components wholly unobserved, imputed as their whole (exact)
    # Gaussians minus an observed part that has no candidates
    assert c.per_source == 8 * 2500 and c.complement.all() and len(c.t) == 0
    faint = lambda c: np.full(len(c), 0.1)                    # noqa: E731
    c = draw_candidates(2500, g.mean, g.covar, None, faint, None, seed, 0)
    # Ω = 0.1: still mostly unobserved; every candidate is kept, with factor -Ω
    assert c.complement.all() and len(c.t) == 2 * c.per_source
    np.testing.assert_array_equal(c.unobs, -0.1)
    for k in range(2):
        t = c.t[c.source == k]
        # each source is its own component, widened by PROPOSAL_WIDTH
        np.testing.assert_allclose(t.mean(axis=0), g.mean[k], atol=0.02)
        np.testing.assert_allclose(np.cov(t.T), PROPOSAL_WIDTH**2 * g.covar[k], rtol=0.03)
    again = draw_candidates(2500, g.mean, g.covar, None, faint, None, seed, 0)
    other = draw_candidates(2500, g.mean, g.covar, None, faint, None, seed, 1)
    assert np.array_equal(c.t, again.t) and not np.array_equal(c.t, other.t)


def test_impute_block_weights_candidates_by_one_minus_omega():
    g = make_truth(2, 2, seed=7)
    seed = np.random.SeedSequence(3)
    everything = Box(upper=[np.inf, np.inf])
    c = draw_candidates(64, g.mean, g.covar, None, everything, None, seed, 0)
    assert len(c.t) == 0                                      # Ω = 1: nothing to impute
    stats, tally = impute_block(c, 500, g.amp, g.mean, g.covar, None)
    assert tally.weight == 0 and np.all(stats.A == 0)
    nothing = lambda c: np.zeros(len(c))                      # noqa: E731
    c = draw_candidates(64, g.mean, g.covar, None, nothing, None, seed, 0)
    stats, tally = impute_block(c, 500, g.amp, g.mean, g.covar, None)
    # Ω = 0: the candidates stand for all of the block's 500 rows, split by amp (up to
    # the Monte-Carlo error of the importance weights against the widened proposal)
    assert tally.weight == pytest.approx(500, rel=3e-3)
    np.testing.assert_allclose(stats.A, 500 * g.amp / g.amp.sum(), rtol=3e-3)
    assert np.sqrt(tally.weight_var) < 3 and tally.rows == 500
    assert stats.n == 0 and stats.logl == 0                   # candidates are not data
