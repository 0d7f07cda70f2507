"""Figures: corner plots, convergence history, 2-D density contours (optional extra ``plot``).

matplotlib is imported when a figure is made, not with :mod:`daskgmmis`; install it
with ``pip install 'daskgmmis[plot]'``. Figures are :class:`matplotlib.figure.Figure`
objects built without :mod:`matplotlib.pyplot` (no global state, no GUI backend),
so they can be made from worker threads and scripts alike; :func:`save_figure`
writes PNG, PDF or SVG atomically.

* :func:`corner` - for every pair of features, each component's 1-σ and 2-σ
  ellipses over a 2-D histogram of the catalog; 1-D histograms and the model's
  marginal densities on the diagonal. A legend says which is which: the
  histograms are the *observed* rows (with their noise), the ellipses and curves
  the *deconvolved* model of the error-free population.
* :func:`convergence` - mean log-likelihood per iteration and its change.
* :func:`density` - density contours of a 2-D model (or of a pair of features) over
  a filled 2-D histogram of the catalog (or its points, for small ones), with
  original points and the boundary of a selection function.

Histograms are summed on the workers, block by block: a figure of a 10^8-row
catalog reads it once and gathers only ``bins x bins`` counts per panel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .background import Background
from .errors import InputError, InputTypeError
from .files import check_new_output, write_atomic
from .model import GMM
from .catalog import Catalog, as_dask_input, open_catalog
from .selection import evaluate_selection

__all__ = ["corner", "convergence", "density", "figure", "marginal", "sample_rows", "save_figure",
           "selection_boundary", "FIGURE_FORMATS"]

FIGURE_FORMATS = ("png", "pdf", "svg")

# Component colours: matplotlib's tab10 cycle, repeated for K > 10.
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def figure(**kwargs):
    """A new :class:`matplotlib.figure.Figure` (no pyplot state); kwargs go to Figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plots need matplotlib; install it with "
                         "pip install 'daskgmmis[plot]'.") from None
    return Figure(**kwargs)


def _check_gmm(gmm) -> None:
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")


def marginal(gmm: GMM, dims: Sequence[int]) -> GMM:
    """The mixture's marginal over the dimensions ``dims`` (exact: sub-vectors and
    sub-matrices of every component).

    Parameters
    ----------
    gmm : GMM
    dims : sequence of int
        Unique dimension indices, in the order wanted.

    Returns
    -------
    GMM
        K components in ``len(dims)`` dimensions (no background).
    """
    _check_gmm(gmm)
    d = np.asarray(dims)
    if d.ndim != 1 or d.size == 0 or d.dtype.kind not in "iu" or d.min() < 0 \
            or d.max() >= gmm.D or np.unique(d).size != d.size:
        raise InputError(f"dims: expected unique indices in [0, {gmm.D}); found {dims!r}.")
    amp, mean, covar = gmm._params()
    g = GMM(gmm.K, d.size)
    g.amp, g.mean = amp.copy(), mean[:, d]
    g.covar = covar[np.ix_(np.arange(gmm.K), d, d)]
    return g


def sample_rows(data, n: int = 20_000, rng=0, covar=None) -> np.ndarray:
    """A uniform random sample of at most ``n`` rows of a catalog or array.

    Only the chunks holding sampled rows are read.

    Parameters
    ----------
    data : array_like (N, D), dask array, Catalog, or catalog path
    n : int
        Rows wanted (all rows when N <= n).
    rng : None, int or Generator
    covar : ignored
        Accepted so that catalog-like arguments can be forwarded unchanged.

    Returns
    -------
    ndarray, shape (min(n, N), D)
        Rows in catalog order.
    """

    x, _, _ = as_dask_input(data, None)
    N = int(x.shape[0])
    if N > n:
        idx = np.sort(np.random.default_rng(rng).choice(N, size=n, replace=False))
        x = x[idx]
    return np.asarray(x.compute(), dtype=np.float64)


def _as_rows(data):
    """(x, columns): the rows of ``data`` as a row-chunked dask array, and the
    catalog's column names (None for arrays)."""
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    columns = list(data.columns) if isinstance(data, Catalog) else None
    x, _, _ = as_dask_input(data, None)
    if hasattr(x, "dask"):
        return x.rechunk({1: -1}), columns
    import dask.array as da

    return da.from_array(x, chunks=(max(1, min(len(x), 1_000_000)), x.shape[1])), columns


def _hist_block(block, pairs, edges, bins: int) -> np.ndarray:
    """Counts of one block for every panel: (1, P, bins, bins); a 1-D panel (i, i)
    fills column 0. Rows missing a panel's feature are left out of that panel."""
    out = np.zeros((1, len(pairs), bins, bins))
    block = np.asarray(block, dtype=np.float64)
    for p, (i, j) in enumerate(pairs):
        if i == j:
            col = block[:, i]
            out[0, p, :, 0] = np.histogram(col[np.isfinite(col)], bins=edges[i])[0]
        else:
            both = np.isfinite(block[:, i]) & np.isfinite(block[:, j])
            out[0, p] = np.histogram2d(block[both, j], block[both, i],
                                       bins=[edges[j], edges[i]])[0]
    return out


def histograms(x, pairs: Sequence[tuple[int, int]], ranges, bins: int) -> np.ndarray:
    """Histograms of feature pairs of a row-chunked dask array, summed on the workers.

    Parameters
    ----------
    x : dask array (N, D)
        One chunk across the columns.
    pairs : sequence of (i, j)
        ``(i, j)``, ``i != j``: 2-D counts of feature ``j`` (first axis) against ``i``;
        ``(i, i)``: 1-D counts of feature ``i`` (in column 0 of its panel).
    ranges : sequence of (lo, hi)
        Per-feature histogram range; rows outside it are not counted.
    bins : int
        Bins per axis.

    Returns
    -------
    ndarray, shape (len(pairs), bins, bins)
        Counts (one compute; nothing but the counts leaves the workers).
    """
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in ranges]
    pairs = [tuple(map(int, p)) for p in pairs]
    counts = x.map_blocks(_hist_block, pairs, edges, bins, dtype=np.float64,
                          chunks=((1,) * x.numblocks[0], (len(pairs),), (bins,), (bins,)),
                          new_axis=[2, 3])
    return np.asarray(counts.sum(axis=0).compute())


def _legend_proxies(items):
    """Legend handles for (kind, label, style) entries: 'line' or 'patch'."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Line2D([], [], **style, label=label) if kind == "line" else
            Patch(**style, label=label) for kind, label, style in items]


def _ellipse(mean2, cov2, nsig: float, color: str, alpha: float):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    return Ellipse(mean2, 2 * nsig * np.sqrt(vals[1]), 2 * nsig * np.sqrt(vals[0]),
                   angle=angle, fill=False, edgecolor=color, alpha=alpha, lw=1.2)


def _range(gmm: GMM, sample: np.ndarray | None, j: int, pad: float = 3.0):
    """Plot range of feature j: the sample's 0.5-99.5% span, else means +- pad sd."""
    if sample is not None:
        col = sample[:, j]
        col = col[np.isfinite(col)]
        if col.size:
            lo, hi = np.percentile(col, [0.5, 99.5])
            if hi > lo:
                return float(lo), float(hi)
    sd = np.sqrt(gmm.covar[:, j, j])
    return float((gmm.mean[:, j] - pad * sd).min()), float((gmm.mean[:, j] + pad * sd).max())


def corner(gmm: GMM, data=None, *, columns: Sequence[str] | None = None,
           sample_size: int = 20_000, bins: int = 40, sigmas: Sequence[float] = (1.0, 2.0),
           rng=0, title: str | None = None, fig=None):
    """Corner plot: component ellipses over 2-D histograms, for every feature pair.

    Panel ``(i, j)`` with ``i > j`` shows feature ``j`` (x) against ``i`` (y): a
    2-D histogram (grey) of the catalog's rows observed in both features, and each
    component's ``sigmas`` ellipses (the projected covariance; opacity follows the
    amplitude). The diagonal shows the 1-D histogram of each feature and the
    model's marginal density. The histograms are the *observed* rows, noise
    included; the ellipses and curves are the *deconvolved* model (the
    error-free population), so with noisy data the grey is broader than the
    lines — a legend on the figure says so. The figure has ``D (D + 1) / 2`` axes.

    Parameters
    ----------
    gmm : GMM
    data : array_like (N, D), dask array, Catalog, or catalog path, optional
        Rows to histogram: every row, counted on the workers.
    columns : sequence of str, optional
        Axis labels (default: the catalog's column names, else the model's, else
        ``x0 ..``).
    sample_size : int
        Rows sampled from ``data`` to choose the axis ranges (0.5-99.5 %).
    bins : int
        Histogram bins per axis.
    sigmas : sequence of float
        Ellipse sizes in (1-D) standard deviations.
    rng : None, int or Generator
        Seed of the row sample.
    title : str, optional
    fig : matplotlib Figure, optional
        Drawn into (default: a new figure sized for D).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_gmm(gmm)
    amp, mean, cov = gmm._params()
    D = gmm.D
    sample = x = None
    if data is not None:
        x, names = _as_rows(data)
        if x.shape[1] != D:
            raise InputError(f"data: has D={x.shape[1]} features; the model has D={D}.")
        columns = names if columns is None else columns
        sample = sample_rows(x, sample_size, rng)
    columns = (list(columns) if columns is not None else
               gmm.columns or [f"x{j}" for j in range(D)])
    if len(columns) != D:
        raise InputError(f"columns: expected {D} names; found {len(columns)}.")
    if fig is None:
        size = max(3.0, 2.2 * D)
        fig = figure(figsize=(size, size), layout="constrained")
    ranges = [_range(gmm, sample, j) for j in range(D)]
    panels = [(i, j) for i in range(D) for j in range(i + 1)]
    counts = None if x is None else dict(zip(panels, histograms(x, panels, ranges, bins)))
    weight = amp / amp.max()
    for i in range(D):
        for j in range(i + 1):
            ax = fig.add_subplot(D, D, i * D + j + 1)
            if i == j:
                grid = np.linspace(*ranges[j], 200)
                if counts is not None:
                    c = counts[(i, j)][:, 0]
                    edges = np.linspace(*ranges[j], bins + 1)
                    total = c.sum() * (edges[1] - edges[0])
                    ax.stairs(c / total if total > 0 else c, edges, fill=True, color="0.75")
                # the marginal density of the Gaussian population, normalized like
                # the histogram
                dens = marginal(gmm, [j])(grid[:, None]) / amp.sum()
                ax.plot(grid, dens, color="k", lw=1.2)
                ax.set_yticks([])
            else:
                if counts is not None:
                    c = counts[(i, j)]
                    ax.pcolormesh(np.linspace(*ranges[j], bins + 1),
                                  np.linspace(*ranges[i], bins + 1),
                                  np.ma.masked_equal(c.T, 0), cmap="Greys", shading="flat")
                for k in range(gmm.K):
                    sub = cov[k][np.ix_([j, i], [j, i])]
                    for s in sigmas:
                        ax.add_patch(_ellipse(mean[k, [j, i]], sub, s,
                                              _COLORS[k % len(_COLORS)],
                                              0.3 + 0.7 * weight[k] / max(s, 1.0)))
                ax.set_ylim(*ranges[i])
                if j == 0:
                    ax.set_ylabel(columns[i])
            ax.set_xlim(*ranges[j])
            if i == D - 1:
                ax.set_xlabel(columns[j])
            else:
                ax.tick_params(labelbottom=False)
            if j > 0:
                ax.tick_params(labelleft=False)
    legend = [("line", "model: deconvolved (error-free) population", {"color": "k"})]
    if counts is not None:
        legend.insert(0, ("patch", "data: observed rows (with their noise)",
                          {"color": "0.6"}))
    # the empty upper triangle holds the legend (below the title); a single panel has
    # no room to spare
    where = ({"loc": "upper right", "bbox_to_anchor": (0.99, 0.93)} if D > 1 else
             {"loc": "outside upper right"})
    fig.legend(handles=_legend_proxies(legend), fontsize="small", frameon=False, **where)
    if title:
        fig.suptitle(title)
    return fig


def _history_of(history) -> np.ndarray:
    if hasattr(history, "history"):           # FitResult
        history = history.history
    elif isinstance(history, dict):           # fit report (JSON)
        if "history" not in history:
            raise InputError("history: the report has no 'history' entry.")
        history = history["history"]
    h = np.asarray(history, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise InputError(f"history: expected a non-empty sequence of mean log-likelihoods; "
                         f"found shape {h.shape}.")
    return h


def convergence(history, *, tol: float | None = None, title: str | None = None, fig=None):
    """Convergence of an EM fit: mean log-likelihood and its change per iteration.

    Parameters
    ----------
    history : FitResult, dict with key ``"history"`` (a fit report), or sequence
        Mean log-likelihood per row at every E-step.
    tol : float, optional
        Convergence threshold, drawn on the change panel.
    title : str, optional
    fig : matplotlib Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: log-likelihood, and ``|change|`` on a log scale.
    """
    h = _history_of(history)
    if tol is None and hasattr(history, "get"):
        tol = history.get("tol")
    if fig is None:
        fig = figure(figsize=(7, 3.2), layout="constrained")
    ax1 = fig.add_subplot(1, 2, 1)
    ax1.plot(np.arange(h.size), h, "o-", ms=3, color="k")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("mean log-likelihood per row")
    ax2 = fig.add_subplot(1, 2, 2)
    if h.size > 1:
        change = np.abs(np.diff(h))
        change = np.where(change > 0, change, np.nan)   # log scale: exact zeros not drawn
        ax2.semilogy(np.arange(1, h.size), change, "o-", ms=3, color="k")
    if tol:
        ax2.axhline(tol, ls="--", color="tab:red", lw=1, label=f"tol = {tol:g}")
        ax2.legend(loc="upper right", fontsize="small")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("|change of mean log-likelihood|")
    if title:
        fig.suptitle(title)
    return fig


def selection_boundary(ax, sel_callback, extent, *, resolution: int = 300, **style) -> None:
    """Draw where a 2-D selection function crosses 1/2 (its boundary).

    Works for any selection callable (hard or smooth), by contouring Ω on a grid.

    Parameters
    ----------
    ax : matplotlib Axes
    sel_callback : callable
        Ω(coords (n, 2)) -> (n,).
    extent : (xmin, xmax, ymin, ymax)
    resolution : int
        Grid points per axis.
    **style
        Passed to ``contour`` (default: dashed black).
    """

    xs = np.linspace(extent[0], extent[1], resolution)
    ys = np.linspace(extent[2], extent[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    omega = evaluate_selection(sel_callback, np.column_stack([gx.ravel(), gy.ravel()]),
                               where="sel_callback").reshape(gx.shape)
    if omega.min() < 0.5 < omega.max():
        ax.contour(gx, gy, omega, levels=[0.5],
                   **{"colors": "k", "linestyles": "dashed", "linewidths": 1.0, **style})


def density(gmm: GMM, *, ax=None, dims: Sequence[int] = (0, 1), extent=None,
            resolution: int = 200, data=None, orig=None, sel_callback=None,
            background: Background | None = None, stretch: float = 1e-4,
            title: str | None = None, columns: Sequence[str] | None = None,
            bins: int = 80, max_points: int = 2_000, legend: bool = True):
    """Density contours of a 2-D mixture (or its marginal over two features) over the data.

    The data are a filled 2-D histogram (counts on a logarithmic colour scale, summed
    on the workers: readable for 10^3-10^9 rows; catalogs of at most ``max_points``
    rows are drawn as points instead); the model's density is drawn on top as
    contour lines with an ``arcsinh(p / stretch)`` scale, as in pyGMMis' figures, so
    that the tails stay visible. A legend names the data, the model, the original
    rows and the selection boundary that are drawn.

    Parameters
    ----------
    gmm : GMM
    ax : matplotlib Axes, optional
        Drawn into (default: a new figure with one axes).
    dims : (int, int)
        Features shown (x, y); other features are marginalized.
    extent : (xmin, xmax, ymin, ymax), optional
        Default: the observed rows' range (a sample of them), else the components'
        3-σ range.
    resolution : int
        Grid points per axis of the model density.
    data : array_like (N, D), dask array, Catalog or catalog path, optional
        Observed rows (NaN = missing: left out of the histogram).
    orig : ndarray (n, D), optional
        Original (error-free, pre-selection) rows, drawn as open circles.
    sel_callback : callable, optional
        Selection function of the full D features (D = 2 only): its boundary
        (where Ω crosses 1/2) is drawn dashed.
    background : Background, optional
        Added to the density.
    stretch : float
        Density scale of the arcsinh stretch, in data units^-2.
    title : str, optional
    columns : sequence of str, optional
        Feature names for the axis labels (default: the catalog's, else the model's,
        else ``x0 ..``).
    bins : int
        Histogram bins per axis.
    max_points : int
        Data of at most this many rows are drawn as points, not as a histogram.
    legend : bool
        Draw the legend.

    Returns
    -------
    matplotlib Axes
    """
    from matplotlib.colors import LogNorm

    _check_gmm(gmm)
    dims = list(dims)
    g = gmm if dims == list(range(gmm.D)) else marginal(gmm, dims)
    if g.D != 2:
        raise InputError(f"dims: expected two features; found {dims}.")
    if background is not None and dims != list(range(gmm.D)):
        background = Background((background.lower[dims], background.upper[dims]),
                                background.amp)
    if ax is None:
        ax = figure(figsize=(5.6, 5), layout="constrained").add_subplot(1, 1, 1)
    x = names = None
    if data is not None:
        x, names = _as_rows(data)
        if x.shape[1] != gmm.D:
            raise InputError(f"data: has D={x.shape[1]} features; the model has D={gmm.D}.")
    columns = list(columns) if columns is not None else names or gmm.columns
    small = x is not None and x.shape[0] <= max_points
    observed = None if x is None else sample_rows(x, max_points, 0)[:, dims]
    if extent is None:
        pts = [p for p in (observed, None if orig is None else
                           np.asarray(orig, dtype=np.float64)[:, dims]) if p is not None]
        allp = np.concatenate(pts) if pts else np.empty((0, 2))
        allp = allp[np.isfinite(allp).all(axis=1)]
        if len(allp):
            lo, hi = np.percentile(allp, 0.5, axis=0), np.percentile(allp, 99.5, axis=0)
            pad = 0.1 * np.where(hi > lo, hi - lo, 1.0)
            lo, hi = lo - pad, hi + pad
        else:
            sd = np.sqrt(np.diagonal(g.covar, axis1=1, axis2=2))
            lo, hi = (g.mean - 3 * sd).min(axis=0), (g.mean + 3 * sd).max(axis=0)
        extent = (lo[0], hi[0], lo[1], hi[1])
    items = []
    if x is not None and small:
        ax.plot(observed[:, 0], observed[:, 1], "s", mfc="tab:blue", mec="none", ms=2.5,
                alpha=0.8, label="observed rows")
    elif x is not None:
        # columns (x, y) of the view; panel (1, 0): x along the first axis
        counts = histograms(x[:, dims], [(1, 0)], [extent[:2], extent[2:]], bins)[0]
        if counts.max() > 0:
            mesh = ax.pcolormesh(np.linspace(extent[0], extent[1], bins + 1),
                                 np.linspace(extent[2], extent[3], bins + 1),
                                 np.ma.masked_equal(counts.T, 0), cmap="Blues",
                                 norm=LogNorm(vmin=1, vmax=counts.max()), shading="flat")
            ax.figure.colorbar(mesh, ax=ax, label="observed rows per bin", shrink=0.8)
        items.append(("patch", f"observed rows ({int(counts.sum()):,} in view)",
                      {"color": "tab:blue", "alpha": 0.6}))
    xs = np.linspace(extent[0], extent[1], resolution)
    ys = np.linspace(extent[2], extent[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    p = g(np.column_stack([gx.ravel(), gy.ravel()]), background=background).reshape(gx.shape)
    ax.contour(gx, gy, np.arcsinh(p / stretch), levels=8, cmap="Oranges_r", linewidths=1.0)
    items.append(("line", "model density (deconvolved)", {"color": "tab:orange"}))
    if orig is not None:
        o = np.asarray(orig, dtype=np.float64)[:, dims]
        ax.plot(o[:, 0], o[:, 1], "o", mfc="none", mec="tab:red", mew=0.6, ms=3.5,
                alpha=0.8, label="original rows")
    if sel_callback is not None:
        if gmm.D != 2:
            raise InputError("sel_callback: the boundary is drawn for 2-D models only.")
        selection_boundary(ax, sel_callback, extent)
        items.append(("line", "selection boundary (Ω = ½)",
                      {"color": "k", "linestyle": "dashed", "linewidth": 1.0}))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    labels = columns if columns is not None else [f"x{d}" for d in range(gmm.D)]
    ax.set_xlabel(labels[dims[0]])
    ax.set_ylabel(labels[dims[1]])
    if legend:
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + _legend_proxies(items), loc="upper right",
                  fontsize="x-small", framealpha=0.8)
    if title:
        ax.set_title(title, fontsize="medium")
    return ax


def save_figure(fig, path, *, dpi: int = 120, overwrite: bool = True) -> None:
    """Write a figure to PNG, PDF or SVG (format from the suffix), atomically.

    Parameters
    ----------
    fig : matplotlib Figure
    path : str or os.PathLike
        Destination; its suffix picks the format.
    dpi : int
        Resolution of raster formats.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    InputError
        Unknown suffix, missing directory, or an existing file without ``overwrite``.
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"{path}: expected a figure file ending in one of "
                         f"{['.' + f for f in FIGURE_FORMATS]}.")
    check_new_output(path, overwrite, hint="overwrite")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), suffix=f".{fmt}")
