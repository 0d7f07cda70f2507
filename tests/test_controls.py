"""Background, frozen parameters, initializations, dead components, split-and-merge."""

import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.selection import Box
from conftest import make_truth


def quiet(g, X, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        warnings.simplefilter("ignore", dg.DeadComponentWarning)
        return dg.fit(g, X, *args, **kw)


def contaminated(frac=0.3, N=20_000, seed=0):
    rng = np.random.default_rng(seed)
    t = make_truth(2, 2, seed=3, spread=4)
    n_bg = int(frac * N)
    lo, hi = np.array([-10.0, -10.0]), np.array([10.0, 10.0])
    X = np.vstack([t.draw(N - n_bg, rng=rng), lo + (hi - lo) * rng.random((n_bg, 2))])
    return t, X, (lo, hi)


def test_background_amplitude_and_signal_recovered():
    t, X, box = contaminated()
    bg = dg.Background(box, amp=0.1)
    g = t.copy()
    res = quiet(g, X, init_method="none", background=bg, tol=1e-7)
    assert abs(bg.amp - 0.3) < 0.03
    assert res.bg_amp == bg.amp
    assert g.amp.sum() + bg.amp == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(g.amp / g.amp.sum(), t.amp, atol=0.03)
    np.testing.assert_allclose(g.mean, t.mean, atol=0.1)
    np.testing.assert_allclose(g.covar, t.covar, atol=0.15)


def test_background_bounds_and_hold():
    t, X, box = contaminated()
    capped = dg.Background(box, amp=0.1, amp_max=0.2)
    g = t.copy()
    quiet(g, X, init_method="none", background=capped, tol=1e-7)
    assert capped.amp == 0.2
    assert g.amp.sum() + capped.amp == pytest.approx(1.0, abs=1e-12)
    held = dg.Background(box, amp=0.05, adjust_amp=False)
    h = t.copy()
    quiet(h, X, init_method="none", background=held, tol=1e-7)
    assert held.amp == 0.05
    assert h.amp.sum() == pytest.approx(0.95, abs=1e-12)


def test_background_with_truncation_and_noise():
    t, X, box = contaminated(N=20_000, seed=1)
    sel = Box(upper=[3.0, np.inf])
    X = X[sel(X) > 0]
    var = np.full(X.shape, 0.05)
    bg = dg.Background(box, amp=0.2)
    g = t.copy()
    quiet(g, X, var, init_method="none", background=bg, sel_callback=sel, tol=1e-6, rng=2,
          covar_callback=lambda x: np.full(x.shape, 0.05))
    assert abs(bg.amp - 0.3) < 0.04
    assert g.amp.sum() + bg.amp == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("frozen", [
    {"amp": [0]}, {"mean": np.array([1], dtype=np.int32)}, {"covar": [np.int64(2)]},
    {"amp": [1], "mean": [1], "covar": [1]}, [0, 2],
])
def test_frozen_values_are_bit_identical(frozen):
    t = make_truth(3, 2, seed=5)
    X = t.draw(5000, rng=6)
    g = t.copy()
    g.mean = g.mean + 0.4
    g.covar = g.covar * 1.5
    g.amp = np.array([0.5, 0.3, 0.2])
    before = g.copy()
    quiet(g, X, init_method="none", frozen=frozen, tol=1e-6)
    spec = frozen if isinstance(frozen, dict) else {k: frozen for k in ("amp", "mean", "covar")}
    for key, idx in spec.items():
        np.testing.assert_array_equal(getattr(g, key)[np.asarray(idx)],
                                      getattr(before, key)[np.asarray(idx)])
    assert g.amp.sum() == pytest.approx(1.0, abs=1e-12)
    free_mean = np.setdiff1d(np.arange(3), spec.get("mean", []))
    assert not np.array_equal(g.mean[free_mean], before.mean[free_mean])


@pytest.mark.parametrize("frozen, words", [
    ({"amp": [3]}, r"\[0, 3\)"), ({"covariance": [0]}, "unknown keys"),
    ({"mean": [0.5]}, "integer"),
])
def test_bad_frozen(frozen, words):
    X = make_truth(3, 2).draw(500, rng=1)
    with pytest.raises((dg.InputError, dg.InputTypeError), match=words):
        dg.fit(dg.GMM(3, 2), X, frozen=frozen)


@pytest.mark.parametrize("method", ["random", "minmax", "kmeans"])
def test_two_blobs_resolved_from_every_init(method):
    rng = np.random.default_rng(7)
    X = np.vstack([rng.normal(size=(3000, 2)) + [-1.5, 0], rng.normal(size=(3000, 2)) + [1.5, 0]])
    for seed in range(3):
        g = dg.GMM(2, 2)
        quiet(g, X, init_method=method, rng=seed, tol=1e-7)
        assert np.isfinite(g.covar).all()
        m = np.sort(g.mean[:, 0])
        np.testing.assert_allclose(m, [-1.5, 1.5], atol=0.15)


def test_seven_dimensional_twenty_components_kmeans_and_multistart():
    rng = np.random.default_rng(8)
    centres = rng.uniform(-20, 20, size=(20, 7))
    X = np.vstack([c + rng.normal(size=(400, 7)) for c in centres])
    g = dg.GMM(20, 7)
    quiet(g, X, init_method="kmeans", rng=1, tol=1e-5)
    found = np.array([np.min(np.linalg.norm(g.mean - c, axis=1)) for c in centres])
    assert (found < 0.3).all() and np.isfinite(g.covar).all()
    a, b = dg.GMM(20, 7), dg.GMM(20, 7)
    ra = quiet(a, X, init_method="minmax", rng=3, tol=1e-4, maxiter=200)
    rb = quiet(b, X, init_method="minmax", rng=3, tol=1e-4, maxiter=200, n_init=3)
    assert rb.logL >= ra.logL - 1e-9          # the first start is among the three


def test_far_component_does_not_poison_the_fit():
    t = make_truth(3, 2, seed=9)
    X = t.draw(6000, rng=10)
    g = t.copy()
    g.mean[1] = [1e6, -1e6]
    with pytest.warns(dg.DeadComponentWarning, match=r"components \[1\]"):
        res = dg.fit(g, X, init_method="none", tol=1e-7, maxiter=500)
    assert np.isfinite(g.mean).all() and np.isfinite(g.covar).all()
    assert np.isfinite(res.logL) and abs(g.amp.sum() - 1) < 1e-12
    assert np.abs(g.mean).max() < 50


def test_split_and_merge_unsticks_em():
    t = dg.GMM(3, 2)
    t.amp = np.array([0.3, 0.3, 0.4])
    t.mean = np.array([[-6.0, 0], [0, 0], [6, 0]])
    t.covar = np.array([np.eye(2)] * 3)
    X = t.draw(6000, rng=1)
    stuck = dg.GMM(3, 2)
    stuck.mean = np.array([[-6.3, 0], [-5.7, 0], [3, 0]])
    stuck.covar = np.array([np.eye(2), np.eye(2), 9 * np.eye(2)])
    a, b = stuck.copy(), stuck.copy()
    ra = quiet(a, X, init_method="none", tol=1e-6)
    rb = quiet(b, X, init_method="none", tol=1e-6, split_n_merge=3)
    assert rb.logL > ra.logL + 0.1
    np.testing.assert_allclose(np.sort(b.mean[:, 0]), [-6, 0, 6], atol=0.1)
    c = stuck.copy()
    rc = quiet(c, X, init_method="none", tol=1e-6, split_n_merge=3, cutoff=5.0)
    assert rc.logL == pytest.approx(rb.logL, abs=1e-3)
