"""Per-row weights (Bovy's XD ``weight``): a row of weight w counts as w rows.

The reference is the catalog with every row repeated ``w`` times: from the same
start, EM on the weighted rows and EM on the repeated rows are the same map, so
they agree to rounding in every noise kind, with missing values, a background and
neighborhoods; weight 0 is the row removed.
"""

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.errors import CatalogError, InputError
from daskgmmis.ingest import ingest

from conftest import make_truth

N, D, K = 400, 3, 3
pytestmark = pytest.mark.filterwarnings("ignore::daskgmmis.errors.ConvergenceWarning")


def _noise(kind, rng, n):
    if kind == "none":
        return None
    if kind == "shared":
        return np.array([[0.3, 0.1, 0.0], [0.1, 0.4, 0.05], [0.0, 0.05, 0.2]])
    if kind == "diag":
        return rng.uniform(0.05, 0.5, (n, D))
    A = rng.normal(size=(n, D, D)) * 0.3
    return A @ A.transpose(0, 2, 1) + 0.05 * np.eye(D)


def _start():
    g = make_truth(K, D, seed=3)
    g.mean = g.mean + 0.5
    return g


def _data(seed=0, missing=True):
    rng = np.random.default_rng(seed)
    X = make_truth(K, D, seed=3).draw(N, rng=rng) + rng.normal(scale=0.3, size=(N, D))
    if missing:
        X[rng.random(X.shape) < 0.1] = np.nan
        X[np.isnan(X).all(axis=1), 0] = 0.0
    return X, rng


def _fit(X, noise, **kw):
    g = _start()
    res = dg.fit(g, X, noise, init_method="none", tol=0.0, maxiter=6, accelerate=False, **kw)
    return g, res


def _assert_same(a, b, rtol=1e-10):
    for name in ("amp", "mean", "covar"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("kind", ["none", "shared", "diag", "full"])
@pytest.mark.parametrize("missing", [False, True])
def test_integer_weights_equal_repeated_rows(kind, missing):
    X, rng = _data(1, missing)
    noise = _noise(kind, rng, N)
    w = rng.integers(0, 4, N)
    rep = np.repeat(np.arange(N), w)
    per_row = noise is not None and noise.shape[0] == N
    g_w, r_w = _fit(X, noise, weights=w)
    g_r, r_r = _fit(X[rep], noise[rep] if per_row else noise)
    _assert_same(g_w, g_r)
    np.testing.assert_allclose(r_w.history, r_r.history, rtol=1e-12)
    assert r_w.N == r_r.N == w.sum()


def test_weights_with_background_and_neighborhoods():
    X, rng = _data(2)
    noise = _noise("diag", rng, N)
    w = rng.uniform(0, 3, N).round(0)
    rep = np.repeat(np.arange(N), w.astype(int))
    bg = dg.Background((np.nanmin(X, 0) - 1, np.nanmax(X, 0) + 1), amp=0.1)
    bg_r = bg.copy()
    g_w, r_w = _fit(X, noise, weights=w, background=bg, cutoff=5.0)
    g_r, r_r = _fit(X[rep], noise[rep], background=bg_r, cutoff=5.0)
    _assert_same(g_w, g_r)
    assert bg.amp == pytest.approx(bg_r.amp, rel=1e-10)
    assert r_w.logL == pytest.approx(r_r.logL, rel=1e-12)


def test_zero_weight_is_the_row_removed_and_fractional_weights_scale():
    X, rng = _data(3)
    noise = _noise("full", rng, N)
    w = np.ones(N)
    w[::7] = 0.0
    keep = w > 0
    X[0] = np.nan
    X[0, 1] = 1e6          # far outlier with weight 0: must not move anything
    w[0] = 0.0
    keep[0] = False
    g_w, r_w = _fit(X, noise, weights=w)
    g_k, r_k = _fit(X[keep], noise[keep])
    _assert_same(g_w, g_k)
    # scaling every weight leaves the fit unchanged and scales N
    g_s, r_s = _fit(X, noise, weights=2.5 * w)
    _assert_same(g_w, g_s)
    assert r_s.N == pytest.approx(2.5 * r_w.N)


def test_truncated_fit_counts_weights_in_n_orig():
    """Doubling every weight is the same catalog counted twice: the same fit and twice
    the population (the imputation's candidates do not depend on the weights)."""
    truth = make_truth(2, 2, seed=5)
    sel = dg.selection.Box([-20, -20], [20, 1.0])
    X, _, _ = dg.draw(truth, orig_size=1500, sel_callback=sel, rng=4)
    opts = dict(sel_callback=sel, rng=0, maxiter=20)
    g1, g2 = truth.copy(), truth.copy()
    r1 = dg.fit(g1, X, init_method="none", weights=np.ones(len(X)), **opts)
    r2 = dg.fit(g2, X, init_method="none", weights=np.full(len(X), 2.0), **opts)
    _assert_same(g1, g2, rtol=1e-9)
    assert r2.N_orig == pytest.approx(2 * r1.N_orig, rel=1e-10)
    assert r2.N == 2 * len(X) and r1.N_orig > len(X)


@pytest.mark.parametrize("bad, message", [(-1.0, "row 5 has weight -1"),
                                          (np.nan, "row 5 has weight nan"),
                                          (np.inf, "row 5 has weight inf")])
def test_negative_and_non_finite_weights_are_refused_with_the_row(bad, message):
    X, _ = _data(4, missing=False)
    w = np.ones(N)
    w[5] = bad
    with pytest.raises(InputError, match=message):
        dg.fit(dg.GMM(K, D), X, weights=w, maxiter=2)
    with pytest.raises(InputError, match="shape"):
        dg.fit(dg.GMM(K, D), X, weights=np.ones(N - 1), maxiter=2)


def test_scores_are_weighted_like_repeated_rows():
    X, rng = _data(5)
    noise = _noise("diag", rng, N)
    g = make_truth(K, D, seed=3)
    w = rng.integers(0, 3, N)
    rep = np.repeat(np.arange(N), w)
    assert dg.score(g, X, noise, weights=w) == pytest.approx(dg.score(g, X[rep], noise[rep]),
                                                             rel=1e-12)
    assert dg.bic(g, X, noise, weights=w) == pytest.approx(dg.bic(g, X[rep], noise[rep]),
                                                           rel=1e-12)
    assert dg.aic(g, X, noise, weights=w) == pytest.approx(dg.aic(g, X[rep], noise[rep]),
                                                           rel=1e-12)


def test_catalog_weights_travel_with_rows_and_are_used(tmp_path):
    X, rng = _data(6)
    noise = _noise("diag", rng, N)
    w = rng.uniform(0.5, 2.0, N)
    cat = dg.write_catalog(tmp_path / "c.zarr", X, noise, weights=w, order="spatial",
                           chunks=64)
    perm = cat.row_index.compute()
    np.testing.assert_array_equal(cat.weights.compute(), w[perm])
    g_c, r_c = _fit(str(tmp_path / "c.zarr"), None)
    g_a, r_a = _fit(X, noise, weights=w)
    _assert_same(g_c, g_a, rtol=1e-9)
    assert dg.score(g_a, cat) == pytest.approx(dg.score(g_a, X, noise, weights=w), rel=1e-12)
    with pytest.raises(InputError, match="catalog carries its own per-row weights"):
        dg.fit(dg.GMM(K, D), cat, weights=w)
    with pytest.raises(InputError, match="row 3 has weight -2"):
        dg.write_catalog(tmp_path / "bad.zarr", X, noise, weights=np.where(
            np.arange(N) == 3, -2.0, 1.0))


def test_corrupted_catalog_weights_are_refused(tmp_path):
    import zarr

    X, rng = _data(7, missing=False)
    dg.write_catalog(tmp_path / "c.zarr", X, weights=np.ones(N), chunks=100)
    z = zarr.open_array(tmp_path / "c.zarr" / "weights", mode="r+")
    z[250] = -1.0
    with pytest.raises(InputError, match="row 250 has weight -1"):
        dg.fit(dg.GMM(K, D), str(tmp_path / "c.zarr"), maxiter=1)
    group = zarr.open_group(tmp_path / "c.zarr", mode="r+")
    del group["weights"]
    group.create_array("weights", shape=(N,), dtype="int32", chunks=(100,))[:] = 1
    with pytest.raises(CatalogError, match="weights has shape"):
        dg.open_catalog(tmp_path / "c.zarr")


def test_ingest_weight_column_csv_and_cli(tmp_path):
    from click.testing import CliRunner

    from daskgmmis.cli import main

    rng = np.random.default_rng(8)
    n = 300
    t = {"a": rng.normal(size=n), "b": rng.normal(size=n), "wt": rng.uniform(0, 2, n),
         "oid": np.arange(n) + 1000}
    t["a"][7] = np.nan
    t["b"][7] = np.nan
    path = tmp_path / "t.csv"
    with open(path, "w") as f:
        f.write("a,b,wt,oid\n")
        for i in range(n):
            f.write(",".join("" if np.isnan(t[c][i]) else repr(float(t[c][i]))
                             if c != "oid" else str(t[c][i]) for c in t) + "\n")
    result = CliRunner().invoke(main, ["ingest", str(path), str(tmp_path / "c.zarr"),
                                       "--weight", "wt", "--id", "oid", "--drop-empty",
                                       "--chunks", "64"])
    assert result.exit_code == 0, result.output
    assert "features: a, b" in result.output and "per-row weights" in result.output
    cat = dg.open_catalog(tmp_path / "c.zarr")
    keep = np.arange(n) != 7
    np.testing.assert_array_equal(cat.weights.compute(), t["wt"][keep])   # dropped with row 7
    # CSV identifiers stay text
    np.testing.assert_array_equal(cat.ids.compute(), t["oid"][keep].astype(str))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,wt\n1,2,1\n3,4,-0.5\n")
    result = CliRunner().invoke(main, ["ingest", str(bad), str(tmp_path / "b.zarr"),
                                       "--weight", "wt"])
    assert result.exit_code != 0
    assert "weight column 'wt'" in result.output and "row 1 has weight -0.5" in result.output
    assert not (tmp_path / "b.zarr").exists()


def test_parallel_ingest_of_parts_keeps_weights(tmp_path, cluster_client):
    pa = pytest.importorskip("pyarrow")
    import dask
    import pyarrow.parquet as pq

    rng = np.random.default_rng(9)
    parts, whole = tmp_path / "parts", []
    parts.mkdir()
    for i in range(4):
        n = 50 + 10 * i
        tab = {"a": rng.normal(size=n), "b": rng.normal(size=n), "w": rng.uniform(0, 3, n)}
        pq.write_table(pa.table(tab), parts / f"part-{i}.parquet")
        whole.append(tab["w"])
    with dask.config.set(scheduler=cluster_client):
        cat = ingest(parts, tmp_path / "c.zarr", weight_column="w")
    assert cat.columns == ["a", "b"]
    np.testing.assert_array_equal(cat.weights.compute(), np.concatenate(whole))


def test_cv_fit_splits_weights_with_rows():
    X, rng = _data(10, missing=False)
    w = rng.integers(1, 3, N).astype(float)
    cv = dg.cv_fit(dg.GMM(K, D), X, n_folds=3, rng=0, weights=w, maxiter=30)
    assert cv.n_heldout.sum() == pytest.approx(w.sum())
    assert np.isfinite(cv.scores).all()
