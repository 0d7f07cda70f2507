"""Stepwise (online) EM: exact bookkeeping, the batch answer, determinism and resume."""

import textwrap
import warnings

import dask.array as da
import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.selection import Box
from daskgmmis.stats import SuffStats
from daskgmmis.stepwise import (DEFAULT_ALPHA, DEFAULT_T0, RunningStats, block_groups, recentre,
                                step_size)

from conftest import kill_and_resume, make_truth


# ----------------------------------------------------------------- pure pieces


def _moments(rows, q, centre):
    d = rows - centre
    return q.sum(), q @ d, np.einsum("i,ij,ik->jk", q, d, d)


def test_recentre_is_the_parallel_axis_identity():
    rng = np.random.default_rng(0)
    K, D, n = 3, 4, 50
    rows = rng.normal(size=(n, D)) * 3 + 10
    q = rng.random((n, K))
    old, new = rng.normal(size=(K, D)), rng.normal(size=(K, D)) + 5
    A, M1, M2 = (np.array(v) for v in zip(*(_moments(rows, q[:, k], old[k]) for k in range(K))))
    moved = recentre(SuffStats(A, M1, M2, 1.5, -3.0, 50), old, new)
    for k in range(K):
        a, m1, m2 = _moments(rows, q[:, k], new[k])
        np.testing.assert_allclose(moved.M1[k], m1, rtol=1e-11, atol=1e-9)
        np.testing.assert_allclose(moved.M2[k], m2, rtol=1e-11, atol=1e-9)
    assert moved.bg == 1.5 and moved.logl == -3.0


def test_blend_weights_the_group_by_the_step_size():
    rng = np.random.default_rng(1)
    K, D = 2, 3
    mean = rng.normal(size=(K, D))
    a = SuffStats(rng.random(K), rng.normal(size=(K, D)), np.tile(np.eye(D), (K, 1, 1)), 2.0)
    b = SuffStats(rng.random(K), rng.normal(size=(K, D)), np.tile(2 * np.eye(D), (K, 1, 1)),
                  4.0)
    run = RunningStats.start(a, mean, np.zeros(D), 100.0).blend(b, mean, 300.0, 0.25)
    back = run.about(mean)
    np.testing.assert_allclose(back.A, 0.75 * a.A + 0.25 * b.A)
    np.testing.assert_allclose(back.M1, 0.75 * a.M1 + 0.25 * b.M1, atol=1e-12)
    np.testing.assert_allclose(back.M2, 0.75 * a.M2 + 0.25 * b.M2, atol=1e-12)
    assert back.bg == pytest.approx(2.5) and run.n_orig == pytest.approx(150.0)


def test_step_size_schedule():
    assert step_size(0, 0.6, 0.0) == 1.0 and step_size(1, 0.6, 0.0) == pytest.approx(2 ** -0.6)
    assert step_size(0, 1.0, 20.0) == 1.0
    assert step_size(5, 1.0, 20.0) == pytest.approx(21 / 26)
    assert step_size(9, 0.7, 4.0) == pytest.approx((5 / 14) ** 0.7)
    steps = [step_size(t) for t in range(1, 200)]
    assert all(1 >= a > b > 0 for a, b in zip(steps, steps[1:]))   # the defaults decay
    assert steps[159] == pytest.approx(21 / 181)                     # 1/t decay after t0


def test_block_groups_visit_every_block_once_per_pass_in_a_seeded_order():
    groups = block_groups(10, 3, 2, np.random.default_rng(5))
    assert [len(g) for g in groups] == [3, 3, 3, 1] * 2
    for p in range(2):
        assert sorted(np.concatenate(groups[4 * p:4 * p + 4]).tolist()) == list(range(10))
    again = block_groups(10, 3, 2, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(groups, again))
    assert not all(np.array_equal(a, b) for a, b in zip(groups[:4], groups[4:]))


def _reference_stepwise(X, blocks, amp, mean, covar, order, alpha, t0):
    """Stepwise EM for a plain GMM in numpy, from the formulas of docs/design.md §1.7:
    raw moments of each group scaled to the catalog, blended with
    ``eta_t = ((t0 + 1) / (t + t0 + 1))**alpha``, a plain M-step after every group."""
    N = len(X)
    S = None
    for t, group in enumerate(order):
        rows = np.concatenate([blocks[b] for b in group])
        x = X[rows]
        d = x[:, None, :] - mean[None]                                     # (n, K, D)
        L = np.linalg.cholesky(covar)
        z = np.linalg.solve(L[None], d[..., None])[..., 0]
        logp = (np.log(amp) - 0.5 * (z ** 2).sum(-1) - np.log(np.diagonal(L, axis1=1, axis2=2)
                ).sum(-1) - 0.5 * X.shape[1] * np.log(2 * np.pi))
        q = np.exp(logp - logp.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        scale = N / len(x)
        g = (q.sum(0) * scale, q.T @ x * scale, np.einsum("ik,id,ie->kde", q, x, x) * scale)
        eta = 1.0 if t == 0 else ((t0 + 1) / (t + t0 + 1)) ** alpha
        S = g if S is None else tuple((1 - eta) * s + eta * n for s, n in zip(S, g))
        amp = S[0] / S[0].sum()
        mean = S[1] / S[0][:, None]
        covar = S[2] / S[0][:, None, None] - mean[:, :, None] * mean[:, None, :]
    return amp, mean, covar


def test_stepwise_path_equals_a_numpy_reference():
    """Every blend and M-step of a stepwise pass, against numpy and the documented
    step-size schedule (a changed schedule or a wrong scaling fails here)."""
    from daskgmmis import em
    truth = make_truth(3, 2, seed=2)
    X = truth.draw(6000, rng=np.random.default_rng(4))
    start = make_truth(3, 2, seed=2)
    start.mean = start.mean + 0.7
    g = dg.GMM(3, 2)
    g.amp, g.mean, g.covar = start.amp.copy(), start.mean.copy(), start.covar.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg.fit(g, da.from_array(X, chunks=250), init_method="none", stepwise=2, maxiter=0,
               rng=11)
    n_blocks = 6000 // 250
    size = min(em._stepwise_group_size(None), n_blocks)
    order = block_groups(n_blocks, size, 2, np.random.default_rng(
        em.child_seed(em._root_seed(11), em._STEPWISE_KEY)))
    blocks = [np.arange(b * 250, (b + 1) * 250) for b in range(n_blocks)]
    assert (DEFAULT_ALPHA, DEFAULT_T0) == (1.0, 20.0)                # the documented defaults
    amp, mean, covar = _reference_stepwise(X, blocks, start.amp, start.mean, start.covar,
                                           order, 1.0, 20.0)
    np.testing.assert_allclose(g.amp, amp, rtol=1e-9)
    np.testing.assert_allclose(g.mean, mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(g.covar, covar, rtol=1e-9, atol=1e-10)
    # the schedule is the one documented: a plain (t + 1)**-0.6 path ends elsewhere
    _, other, _ = _reference_stepwise(X, blocks, start.amp, start.mean, start.covar, order,
                                      0.6, 0.0)
    assert not np.allclose(other, mean, rtol=1e-6)


# -------------------------------------------------------------------- fitting


def _catalog(tmp_path, N=24_000, seed=0, chunks=1500):
    truth = make_truth(3, 2, seed=4)
    sel = Box(upper=[np.inf, truth.mean[:, 1].max() + 1.0])
    rng = np.random.default_rng(seed)
    # noisy rows (variance 0.1 per feature) selected at their noisy positions
    X, var, _ = dg.draw(truth, orig_size=N, sel_callback=sel, covar_callback=_covar_callback,
                        rng=seed)
    X[rng.random(len(X)) < 0.1, 0] = np.nan
    path = tmp_path / "cat.zarr"
    dg.write_catalog(path, X, var, chunks=chunks)
    return str(path), truth, sel


def _fit(path, sel, **kw):
    g = dg.GMM(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(g, path, rng=3, sel_callback=sel, covar_callback=_covar_callback, **kw)
    return g, res


def _covar_callback(coords):
    return np.full(coords.shape, 0.1)


def _pair(g_a, g_b):
    """Components of two fits of the same data, matched by their first coordinate."""
    a, b = np.argsort(g_a.mean[:, 0]), np.argsort(g_b.mean[:, 0])
    return (g_a.mean[a], g_a.covar[a], g_a.amp[a]), (g_b.mean[b], g_b.covar[b], g_b.amp[b])


def test_stepwise_reaches_the_batch_answer_on_a_cluster(tmp_path, cluster_client):
    """Noisy rows with missing values in a Zarr store, on two worker processes: the
    stepwise passes alone come close, batch polishing ends at the batch answer."""
    truth = make_truth(4, 3, seed=6)
    rng = np.random.default_rng(0)
    X = truth.draw(16_000, rng=rng)
    var = rng.uniform(0.05, 0.5, X.shape)
    X = X + rng.normal(size=X.shape) * np.sqrt(var)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    path = str(tmp_path / "cat.zarr")
    dg.write_catalog(path, X, var, chunks=1000)                   # 16 blocks
    opts = dict(rng=3, tol=1e-7, client=cluster_client)
    g_batch, g_step, g_alone = dg.GMM(4, 3), dg.GMM(4, 3), dg.GMM(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = dg.fit(g_batch, path, **opts)
        step = dg.fit(g_step, path, stepwise=2, **opts)
        # what the stepwise passes alone reached (batch EM only evaluates it)
        alone = dg.fit(g_alone, path, stepwise=2, maxiter=0, **opts)
    start = batch.history[0]                                      # the same start
    assert len(alone.stepwise_history) == 2 * 16 // 2             # 2 threads per group
    assert alone.passes == pytest.approx(3.0)                     # 2 stepwise + 1 batch
    assert alone.logL > start + 0.03                              # the passes learned...
    assert alone.logL == pytest.approx(batch.logL, abs=1e-3)      # ... nearly everything,
    assert batch.history[2] < alone.logL                          # more than 3 batch passes
    assert step.logL == pytest.approx(batch.logL, abs=1e-6)
    (m_s, c_s, a_s), (m_b, c_b, a_b) = _pair(g_step, g_batch)
    np.testing.assert_allclose(m_s, m_b, atol=2e-3)
    np.testing.assert_allclose(c_s, c_b, atol=5e-3)
    np.testing.assert_allclose(a_s, a_b, atol=1e-3)


def test_stepwise_is_deterministic_and_changes_the_path(tmp_path):
    path, truth, sel = _catalog(tmp_path, N=8000, seed=1)
    kw = dict(stepwise=1, maxiter=0, tol=0.0)
    (g1, r1), (g2, r2) = _fit(path, sel, **kw), _fit(path, sel, **kw)
    assert np.array_equal(g1.mean, g2.mean) and r1.stepwise_history == r2.stepwise_history
    g0, r0 = _fit(path, sel, maxiter=0, tol=0.0)
    assert not np.allclose(g0.mean, g1.mean)      # stepwise=1 did move the start
    with pytest.raises(dg.InputError, match="stepwise"):
        _fit(path, sel, stepwise=-1)


def test_stepwise_with_weights_equals_repeated_rows():
    """The group statistics are scaled by the groups' weights, not their row counts."""
    rng = np.random.default_rng(2)
    X = make_truth(2, 2, seed=1).draw(4000, rng=rng)
    w = rng.integers(1, 3, len(X)).astype(float)
    g_w, g_r = make_truth(2, 2, seed=1), make_truth(2, 2, seed=1)
    # one block: the groups are the whole catalog in both fits
    dg.fit(g_w, da.from_array(X, chunks=4000), weights=w, init_method="none", stepwise=3,
           maxiter=0)
    rep = np.repeat(np.arange(len(X)), w.astype(int))
    dg.fit(g_r, da.from_array(X[rep], chunks=len(rep)), init_method="none", stepwise=3,
           maxiter=0)
    np.testing.assert_allclose(g_w.mean, g_r.mean, rtol=1e-10)
    np.testing.assert_allclose(g_w.covar, g_r.covar, rtol=1e-10)


SCRIPT = textwrap.dedent("""
    import logging, sys, time, warnings
    import numpy as np
    import daskgmmis as dg
    from daskgmmis.selection import Box
    catalog, ckpt, out, slow = sys.argv[1:5]
    class Report(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(("stepwise group", "iteration")):
                print(record.getMessage(), flush=True)
                if slow == "1":
                    time.sleep(0.3)
    logging.getLogger("daskgmmis").addHandler(Report())
    logging.getLogger("daskgmmis").setLevel(logging.INFO)
    warnings.simplefilter("ignore")
    g = dg.GMM(3, 2)
    dg.fit(g, catalog, rng=7, tol=0, maxiter=3, stepwise=2, sel_callback=Box(upper=[np.inf, 1.0]),
           checkpoint=ckpt)
    g.save(out)
""")


def test_killed_stepwise_fit_resumes_bit_identical(tmp_path):
    truth = make_truth(3, 2, seed=4)
    X, _, _ = dg.draw(truth, orig_size=6000, sel_callback=Box(upper=[np.inf, 1.0]), rng=2)
    catalog = str(tmp_path / "cat.zarr")
    dg.write_catalog(catalog, X, chunks=500)
    ref_groups, seen, again_groups, a, b = kill_and_resume(tmp_path, SCRIPT, catalog,
                                                           "stepwise group", 4)
    # resumed inside the stepwise phase: the checkpointed groups were not redone
    assert 0 < again_groups <= ref_groups - (seen - 1)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.covar, b.covar)
    assert np.array_equal(a.amp, b.amp)
