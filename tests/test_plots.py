"""Figures: corner plots, convergence, density contours, atomic saving."""

import os

import numpy as np
import pytest

import daskgmmis as dg

pytest.importorskip("matplotlib")
from daskgmmis import plots  # noqa: E402

from conftest import make_truth  # noqa: E402


@pytest.fixture(scope="module")
def model3():
    return make_truth(K=3, D=3, seed=2)


def _saved(fig, path):
    plots.save_figure(fig, path)
    assert os.path.getsize(path) > 10_000
    return path


@pytest.mark.parametrize("D", [1, 2, 3])
def test_corner_has_one_panel_per_pair_and_feature(tmp_path, D):
    g = make_truth(K=2, D=D, seed=D)
    X = g.draw(3000, rng=0)
    X[::7, 0] = np.nan                            # missing values are left out per pair
    fig = plots.corner(g, X, title="t")
    assert len(fig.axes) == D * (D + 1) // 2
    # every pair panel carries the K components' 1- and 2-sigma ellipses
    from matplotlib.patches import Ellipse

    ellipses = [[p for p in ax.patches if isinstance(p, Ellipse)] for ax in fig.axes]
    pair_axes = [e for e in ellipses if e]
    assert len(pair_axes) == D * (D - 1) // 2
    assert all(len(e) == 2 * 2 for e in pair_axes)
    _saved(fig, tmp_path / "c.png")


def test_corner_from_catalog_samples_rows_and_uses_column_names(tmp_path, model3):
    X = model3.draw(5000, rng=1)
    cat = dg.write_catalog(tmp_path / "c.zarr", X, columns=["u", "v", "w"], chunks=1000)
    fig = plots.corner(model3, str(tmp_path / "c.zarr"), sample_size=500)
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert {"u", "v", "w"} <= labels
    s = plots.sample_rows(cat, 500, rng=0)
    assert s.shape == (500, 3)
    # the sample is made of catalog rows, in catalog order
    idx = np.searchsorted(X[:, 0], s[:, 0], sorter=np.argsort(X[:, 0]))
    assert np.array_equal(np.sort(X[:, 0])[idx], s[:, 0])
    assert plots.sample_rows(X[:10], 500).shape == (10, 3)
    with pytest.raises(dg.InputError, match="D=2"):
        plots.corner(model3, X[:, :2])


def test_marginal_is_exact(model3):
    m = plots.marginal(model3, [2, 0])
    assert np.array_equal(m.mean, model3.mean[:, [2, 0]])
    assert np.array_equal(m.covar[1], model3.covar[1][np.ix_([2, 0], [2, 0])])
    x = np.array([[0.5, np.nan, -1.0]])
    # marginal density equals the model's with the other feature missing
    assert np.isclose(m(x[:, [2, 0]])[0], model3(x)[0])
    with pytest.raises(dg.InputError):
        plots.marginal(model3, [0, 0])


def test_convergence_accepts_result_report_and_list(tmp_path):
    g = make_truth(K=2, D=2, seed=0)
    res = dg.fit(dg.GMM(2, 2), g.draw(500, rng=1), rng=0)
    for h in (res, {"history": res.history, "tol": 1e-3}, list(res.history)):
        fig = plots.convergence(h)
        assert len(fig.axes) == 2
    _saved(fig, tmp_path / "conv.pdf")
    with pytest.raises(dg.InputError, match="history"):
        plots.convergence({"logL": 1.0})


def test_density_with_points_and_selection_boundary(tmp_path):
    from daskgmmis.selection import Box, Sphere

    g = make_truth(K=2, D=2, seed=3)
    sel = Box([-5, -5], [5, 5]) & ~Sphere([0, 0], 1.5)
    ax = plots.density(g, data=g.draw(200, rng=0), orig=g.draw(100, rng=1),
                       sel_callback=sel, extent=(-8, 8, -8, 8), title="d")
    assert len(ax.lines) == 2                     # original and observed points
    assert len(ax.collections) >= 2               # filled contours + the boundary
    _saved(ax.figure, tmp_path / "d.png")
    _saved(ax.figure, tmp_path / "d.svg")
    g3 = make_truth(K=2, D=3, seed=4)
    ax = plots.density(g3, dims=(2, 1))           # a pair of a 3-D model
    assert ax.get_xlim()[1] > ax.get_xlim()[0]
    with pytest.raises(dg.InputError, match="2-D"):
        plots.density(g3, sel_callback=sel)


def test_save_figure_checks_and_leaves_nothing(tmp_path):
    fig = plots.convergence([1.0, 2.0])
    with pytest.raises(dg.InputError, match=".png"):
        plots.save_figure(fig, tmp_path / "f.jpg")
    with pytest.raises(dg.OutputError, match="does not exist"):
        plots.save_figure(fig, tmp_path / "nodir" / "f.png")
    plots.save_figure(fig, tmp_path / "f.png")
    with pytest.raises(dg.OutputExistsError, match="exists"):
        plots.save_figure(fig, tmp_path / "f.png", overwrite=False)
    assert os.listdir(tmp_path) == ["f.png"]


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_density_of_a_large_catalog_is_a_histogram_counted_on_the_workers(tmp_path):
    from matplotlib.collections import QuadMesh

    from daskgmmis.selection import Box

    g = make_truth(K=2, D=3, seed=5)
    X = g.draw(40_000, rng=2)
    X[::9, 2] = np.nan                            # missing in a feature not shown
    X[::11, 0] = np.nan                           # missing in a feature shown
    cat = dg.write_catalog(tmp_path / "d.zarr", X, columns=["ra", "dec", "mag"],
                           chunks=5000)
    sel = Box([-100, -100], [100, 100])
    with pytest.raises(dg.InputError, match="2-D"):
        plots.density(g, data=cat, sel_callback=sel)
    ax = plots.density(g, data=cat, dims=(0, 2), bins=30)
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1 and not ax.lines      # a filled histogram, no markers
    # its counts are numpy's histogram of every row observed in both features
    xlo, xhi = ax.get_xlim()
    ylo, yhi = ax.get_ylim()
    both = np.isfinite(X[:, 0]) & np.isfinite(X[:, 2])
    expected, _, _ = np.histogram2d(X[both, 0], X[both, 2], bins=30,
                                    range=[(xlo, xhi), (ylo, yhi)])
    shown = np.ma.filled(meshes[0].get_array(), 0).reshape(30, 30)
    assert np.array_equal(shown, expected.T)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("ra", "mag")
    texts = _legend_texts(ax.get_legend())
    assert any(t.startswith("observed rows") for t in texts)
    assert "model density (deconvolved)" in texts
    _saved(ax.figure, tmp_path / "dens.png")


def test_density_small_data_are_points_and_the_legend_names_the_boundary(tmp_path):
    from daskgmmis.selection import Sphere

    g = make_truth(K=2, D=2, seed=6)
    ax = plots.density(g, data=g.draw(300, rng=0), orig=g.draw(100, rng=1),
                       sel_callback=~Sphere([0, 0], 2.0), extent=(-8, 8, -8, 8))
    assert [len(line.get_xdata()) for line in ax.lines] == [300, 100]
    texts = _legend_texts(ax.get_legend())
    assert {"observed rows", "original rows", "selection boundary (Ω = ½)",
            "model density (deconvolved)"} <= set(texts)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x0", "x1")
    _saved(ax.figure, tmp_path / "small.png")


def test_corner_histograms_are_every_row_and_the_legend_says_data_vs_model(tmp_path):
    g = make_truth(K=2, D=2, seed=7)
    X = g.draw(20_000, rng=3)
    cat = dg.write_catalog(tmp_path / "c.zarr", X, columns=["g", "r"], chunks=3000)
    fig = plots.corner(g, cat, bins=25, sample_size=1000)
    texts = _legend_texts(fig.legends[0])
    assert texts == ["data: observed rows (with their noise)",
                     "model: deconvolved (error-free) population"]
    pair = fig.axes[1]                            # (1, 0): g against r
    xlo, xhi = pair.get_xlim()
    ylo, yhi = pair.get_ylim()
    expected, _, _ = np.histogram2d(X[:, 0], X[:, 1], bins=25, range=[(xlo, xhi), (ylo, yhi)])
    shown = np.ma.filled(pair.collections[0].get_array(), 0).reshape(25, 25)
    assert np.array_equal(shown, expected.T)
    assert (pair.get_xlabel(), pair.get_ylabel()) == ("g", "r")
    # without data only the model is named
    assert _legend_texts(plots.corner(g).legends[0]) == [
        "model: deconvolved (error-free) population"]
    _saved(fig, tmp_path / "corner.png")
