"""Figures: corner plots, convergence history, 2-D density contours (optional extra ``plot``).

matplotlib is imported when a figure is made, not with :mod:`daskgmmis`; install it
with ``pip install 'daskgmmis[plot]'``. Figures are :class:`matplotlib.figure.Figure`
objects built without :mod:`matplotlib.pyplot` (no global state, no GUI backend),
so they can be made from worker threads and scripts alike; :func:`save_figure`
writes PNG, PDF or SVG atomically.

* :func:`corner` - for every pair of features, each component's 1-σ and 2-σ
  ellipses over a 2-D histogram of a sample of the catalog; 1-D histograms and
  the model's marginal densities on the diagonal.
* :func:`convergence` - mean log-likelihood per iteration and its change.
* :func:`density` - density contours of a 2-D model (or of a pair of features),
  with observed and original points and the boundary of a selection function.
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
    2-D histogram of the sampled rows observed in both features, and each
    component's ``sigmas`` ellipses (the projected covariance; opacity follows the
    amplitude). The diagonal shows the 1-D histogram of each feature and the
    model's marginal density. The figure has ``D (D + 1) / 2`` axes.

    Parameters
    ----------
    gmm : GMM
    data : array_like (N, D), dask array, Catalog, or catalog path, optional
        Rows to histogram (a random sample of ``sample_size`` of them).
    columns : sequence of str, optional
        Axis labels (default: the catalog's column names, else ``x0 ..``).
    sample_size : int
        Rows drawn from ``data``.
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
    sample = None
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            data = open_catalog(data)
        if columns is None and isinstance(data, Catalog):
            columns = data.columns
        sample = sample_rows(data, sample_size, rng)
        if sample.shape[1] != D:
            raise InputError(f"data: has D={sample.shape[1]} features; the model has D={D}.")
    columns = list(columns) if columns is not None else [f"x{j}" for j in range(D)]
    if len(columns) != D:
        raise InputError(f"columns: expected {D} names; found {len(columns)}.")
    if fig is None:
        size = max(3.0, 2.2 * D)
        fig = figure(figsize=(size, size), layout="constrained")
    ranges = [_range(gmm, sample, j) for j in range(D)]
    weight = amp / amp.max()
    for i in range(D):
        for j in range(i + 1):
            ax = fig.add_subplot(D, D, i * D + j + 1)
            if i == j:
                grid = np.linspace(*ranges[j], 200)
                if sample is not None:
                    col = sample[:, j]
                    ax.hist(col[np.isfinite(col)], bins=bins, range=ranges[j], density=True,
                            color="0.75")
                # the marginal density of the Gaussian population, normalized like
                # the histogram
                dens = marginal(gmm, [j])(grid[:, None]) / amp.sum()
                ax.plot(grid, dens, color="k", lw=1.2)
                ax.set_yticks([])
            else:
                if sample is not None:
                    both = np.isfinite(sample[:, j]) & np.isfinite(sample[:, i])
                    ax.hist2d(sample[both, j], sample[both, i], bins=bins,
                              range=[ranges[j], ranges[i]], cmap="Greys")
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
            title: str | None = None, columns: Sequence[str] | None = None):
    """Density contours of a 2-D mixture (or its marginal over two features).

    The density is shown with an ``arcsinh(p / stretch)`` scale, as in pyGMMis'
    figures, so that the tails stay visible.

    Parameters
    ----------
    gmm : GMM
    ax : matplotlib Axes, optional
        Drawn into (default: a new figure with one axes).
    dims : (int, int)
        Features shown (x, y); other features are marginalized.
    extent : (xmin, xmax, ymin, ymax), optional
        Default: the observed points' range, else the components' 3-σ range.
    resolution : int
        Grid points per axis.
    data : ndarray (n, D), optional
        Observed rows, drawn as filled squares.
    orig : ndarray (n, D), optional
        Original (error-free, pre-selection) rows, drawn as open circles.
    sel_callback : callable, optional
        Selection function of the full D features (D = 2 only): its boundary is drawn.
    background : Background, optional
        Added to the density.
    stretch : float
        Density scale of the arcsinh stretch.
    title : str, optional
    columns : sequence of str, optional
        Axis labels.

    Returns
    -------
    matplotlib Axes
    """
    _check_gmm(gmm)
    dims = list(dims)
    g = gmm if dims == list(range(gmm.D)) else marginal(gmm, dims)
    if g.D != 2:
        raise InputError(f"dims: expected two features; found {dims}.")
    if background is not None and dims != list(range(gmm.D)):
        background = Background((background.lower[dims], background.upper[dims]),
                                background.amp)
    if ax is None:
        ax = figure(figsize=(5, 5), layout="constrained").add_subplot(1, 1, 1)
    pts = [np.asarray(p, dtype=np.float64)[:, dims] for p in (data, orig) if p is not None]
    if extent is None:
        if pts:
            allp = np.concatenate(pts)
            lo, hi = np.nanmin(allp, axis=0), np.nanmax(allp, axis=0)
            pad = 0.1 * (hi - lo)
            lo, hi = lo - pad, hi + pad
        else:
            sd = np.sqrt(np.diagonal(g.covar, axis1=1, axis2=2))
            lo, hi = (g.mean - 3 * sd).min(axis=0), (g.mean + 3 * sd).max(axis=0)
        extent = (lo[0], hi[0], lo[1], hi[1])
    xs = np.linspace(extent[0], extent[1], resolution)
    ys = np.linspace(extent[2], extent[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    p = g(np.column_stack([gx.ravel(), gy.ravel()]), background=background).reshape(gx.shape)
    ax.contourf(gx, gy, np.arcsinh(p / stretch), levels=10, cmap="Greys")
    if orig is not None:
        o = np.asarray(orig, dtype=np.float64)[:, dims]
        ax.plot(o[:, 0], o[:, 1], "o", mfc="none", mec="tab:red", mew=0.8, ms=4,
                label="original")
    if data is not None:
        d = np.asarray(data, dtype=np.float64)[:, dims]
        ax.plot(d[:, 0], d[:, 1], "s", mfc="tab:blue", mec="none", ms=3, label="observed")
    if sel_callback is not None:
        if gmm.D != 2:
            raise InputError("sel_callback: the boundary is drawn for 2-D models only.")
        selection_boundary(ax, sel_callback, extent)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    if columns is not None:
        ax.set_xlabel(columns[dims[0]])
        ax.set_ylabel(columns[dims[1]])
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
