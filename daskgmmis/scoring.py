"""Model scores on catalogs: information criteria, held-out likelihood, stacking.

Every score is built from the per-row deconvolved log-likelihood
``log p(x_i | model, S_i)`` (:meth:`GMM.logL`: noise-convolved, missing features
marginalized), summed lazily over row blocks and computed once.

* :func:`bic`, :func:`aic` - information criteria of a fitted model;
* :func:`score` - mean log-likelihood per row (held-out data: a generalization score);
* :func:`cv_fit` - K-fold cross-validation: fit on every training split, score the
  held-out fold. Folds are drawn inside the block tasks (a row mask per chunk), so
  no row is ever gathered on the driver;
* :func:`stack` - one mixture from several fitted ones, weighted by their held-out
  likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from .background import Background
from .catalog import as_dask_input, as_dask_projection, as_dask_weights
from .errors import InputError, InputTypeError
from .validation import check_background
from .model import GMM
from .em import _root_seed, child_seed, fit
from .options import FitOptions

__all__ = ["n_parameters", "loglike", "bic", "aic", "score", "cv_fit", "CVResult", "stack"]


# ------------------------------------------------------------------- helpers


def _check_model(gmm, name: str = "gmm") -> None:
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"{name}: expected a daskgmmis.GMM; found {type(gmm).__name__}.")


def _resolve_data(gmm: GMM, data, covar, weights=None, projection=None):
    """(x, noise, weights or None, projection or None) of a scoring call; the catalog's
    weights and projection if it has them."""
    x, noise, kind = as_dask_input(data, covar)
    projection = as_dask_projection(data, projection, x, gmm.D)
    if projection is None and x.shape[1] != gmm.D:
        raise InputError(f"data: has D={x.shape[1]} features but the model has D={gmm.D}.")
    return x, noise, as_dask_weights(data, weights, x), projection


def _loglike_graph(gmm: GMM, x, noise, background, weights=None, projection=None):
    """Lazy (sum of per-row (weighted) logL, (weighted) count of rows with an observed
    feature)."""
    import dask.array as da

    # messages name 'data'
    ll = gmm._density(x, noise, True, background, name="data", projection=projection)
    used = ~da.isnan(ll)            # NaN: no observed feature, carries no information
    if weights is None:
        return da.where(used, ll, 0.0).sum(), used.sum()
    used &= weights > 0             # weight 0 leaves the row out, even at density 0
    return da.where(used, weights * ll, 0.0).sum(), da.where(used, weights, 0.0).sum()


def _compute(*graphs):
    import dask

    return dask.compute(*graphs)


# ------------------------------------------------------------------ criteria


def n_parameters(gmm: GMM, background: Background | None = None) -> int:
    """Number of free parameters of a mixture (and its background amplitude).

    Parameters
    ----------
    gmm : GMM
        K components in D dimensions.
    background : Background, optional
        Adds one parameter when its amplitude is adjustable (``adjust_amp``).

    Returns
    -------
    int
        ``(K - 1) + K D + K D (D + 1) / 2`` (+1 for an adjustable background).
    """
    _check_model(gmm)
    K, D = gmm.K, gmm.D
    p = (K - 1) + K * D + K * D * (D + 1) // 2
    if background is not None and background.adjust_amp:
        p += 1
    return int(p)


def loglike(gmm: GMM, data, covar=None, background: Background | None = None, *,
            weights=None, projection=None) -> tuple[float, int | float]:
    """Total deconvolved log-likelihood of a catalog, in one pass over the data.

    Parameters
    ----------
    gmm : GMM
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        NaN marks a missing feature (marginalized exactly).
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise covariances; taken from the catalog when ``data`` is one.
    background : Background, optional
        Uniform background of the model.
    weights : None, array_like or dask array, shape (N,)
        Per-row weights >= 0 (a row of weight w counts as w rows); taken from the
        catalog when it carries them.
    projection : None, array_like or dask array, shape (d, D) or (N, d, D)
        Projection matrices of the rows (see :func:`daskgmmis.fit`); taken from the
        catalog when it carries them.

    Returns
    -------
    total : float
        ``sum_i w_i log p(x_i | model, S_i)`` over rows with an observed feature.
    n : int or float
        Number of those rows (rows with every feature missing are left out); the
        sum of their weights for weighted rows.
    """
    _check_model(gmm)
    x, noise, w, proj = _resolve_data(gmm, data, covar, weights, projection)
    check_background(background, int(x.shape[1]), "the data")
    total, n = _compute(*_loglike_graph(gmm, x, noise, background, w, proj))
    return float(total), (int(n) if w is None else float(n))


def bic(gmm: GMM, data, covar=None, background: Background | None = None, *,
        weights=None, projection=None) -> float:
    """Bayesian information criterion ``-2 log L + p log N`` (lower is better).

    Parameters
    ----------
    gmm : GMM
        Fitted model.
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        The catalog it was fitted to; NaN = missing feature.
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise covariances; taken from the catalog when ``data`` is one.
    background : Background, optional
        Background fitted with the model (one more parameter if adjustable).
    weights : None, array_like or dask array, shape (N,)
        Per-row weights, as for :func:`loglike`.
    projection : None, (d, D) or (N, d, D)
        Projection matrices, as for :func:`loglike`.

    Returns
    -------
    float
        ``log L`` is the total deconvolved log-likelihood (:func:`loglike`),
        ``p`` is :func:`n_parameters`, ``N`` the number of rows with an observed
        feature (their total weight for weighted rows).
    """
    total, n = loglike(gmm, data, covar, background, weights=weights, projection=projection)
    return float(-2.0 * total + n_parameters(gmm, background) * np.log(n))


def aic(gmm: GMM, data, covar=None, background: Background | None = None, *,
        weights=None, projection=None) -> float:
    """Akaike information criterion ``-2 log L + 2 p`` (lower is better).

    Same parameters as :func:`bic`.

    Returns
    -------
    float
    """
    total, _ = loglike(gmm, data, covar, background, weights=weights, projection=projection)
    return float(-2.0 * total + 2.0 * n_parameters(gmm, background))


def score(gmm: GMM, data, covar=None, background: Background | None = None, *,
          weights=None, projection=None) -> float:
    """Mean log-likelihood per row (on held-out data: a generalization score).

    Same parameters as :func:`bic`.

    Returns
    -------
    float
        ``loglike / n`` (higher is better).
    """
    total, n = loglike(gmm, data, covar, background, weights=weights, projection=projection)
    if n == 0:
        raise InputError("data: no row has an observed feature; nothing to score.")
    return total / n


# ---------------------------------------------------------------- cross-validation


def _fold_counts(n: int, offset: int, n_folds: int) -> np.ndarray:
    """Rows of each fold in a chunk of n rows starting at global row ``offset``.

    Row ``i`` (global) draws label ``i % n_folds`` (labels are then shuffled
    inside the chunk), so folds are balanced to one row over the whole catalog and
    the counts follow from arithmetic alone: the driver never generates labels.
    """
    counts = np.full(n_folds, n // n_folds, dtype=np.int64)
    counts[(offset + np.arange(n % n_folds)) % n_folds] += 1
    return counts


def _fold_labels(n: int, offset: int, n_folds: int, base_seed, chunk: int) -> np.ndarray:
    labels = (offset + np.arange(n)) % n_folds
    np.random.default_rng(np.random.SeedSequence(list(base_seed) + [chunk])).shuffle(labels)
    return labels


def _take_rows(block, n_folds, fold, train, base_seed, chunk, offset):
    """The block's rows of one fold (``train=False``) or of its complement."""
    labels = _fold_labels(block.shape[0], offset, n_folds, base_seed, chunk)
    keep = labels != fold if train else labels == fold
    return block[keep]


def _fold_split(arr, n_folds, fold, train, base_seed, offsets):
    """Rows of ``arr`` (row-chunked dask) in a split, as a dask array of known chunks."""
    import dask.array as da

    pieces = []
    for j, off in enumerate(offsets):
        blk = arr.blocks[j]
        counts = _fold_counts(blk.shape[0], off, n_folds)
        n_keep = int(counts.sum() - counts[fold]) if train else int(counts[fold])
        if n_keep == 0:
            continue
        tail = tuple((s,) for s in arr.shape[1:])
        pieces.append(blk.map_blocks(
            _take_rows, n_folds, fold, train, base_seed, j, off, dtype=arr.dtype,
            chunks=((n_keep,),) + tail, meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
            token="cv-split"))
    return da.concatenate(pieces, axis=0)


@dataclass
class CVResult:
    """Outcome of :func:`cv_fit`.

    Attributes
    ----------
    scores : ndarray, shape (n_folds,)
        Held-out mean log-likelihood per row of each fold's model on its fold.
    n_heldout : ndarray, shape (n_folds,)
        Rows scored in each fold.
    models : list of GMM, length n_folds
        The model fitted on each training split (all rows but the fold).
    results : list of FitResult, length n_folds
        The fits' results (the best of ``n_init`` starts).
    backgrounds : list of Background or None
        Each fold's fitted background (copies), when one was given.
    """

    scores: np.ndarray
    n_heldout: np.ndarray
    models: list
    results: list
    backgrounds: list | None = None

    @property
    def score(self) -> float:
        """Held-out mean log-likelihood per row over all folds (row-weighted)."""
        return float((self.scores * self.n_heldout).sum() / self.n_heldout.sum())


def cv_fit(gmm: GMM, data, covar=None, n_folds: int = 5, rng=None, *, n_init: int | None = None,
           weights=None, projection=None, options: FitOptions | None = None,
           **fit_kwargs) -> CVResult:
    """K-fold cross-validated fit: held-out likelihood of the model class of ``gmm``.

    Rows are split into ``n_folds`` balanced folds, drawn per row chunk from
    ``rng`` (reproducible for a given seed and chunking; nothing is gathered on
    the driver). For every fold a copy of ``gmm`` is fitted with
    :func:`daskgmmis.fit` on the other rows and scored on the fold. All folds are
    scored in one pass at the end.

    Parameters
    ----------
    gmm : GMM
        Template: its K and D (and, with ``init_method="none"``, its parameters as
        the starting point). Not modified.
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        NaN marks a missing feature.
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise covariances; taken from the catalog when ``data`` is one.
    n_folds : int
        Number of folds, ``2 <= n_folds <= N``.
    rng : None, int, Generator or SeedSequence
        Seeds the split and every fit (each fold's fits get their own child seeds).
    n_init : int, optional
        Fits per fold from different seeds; the one with the highest training
        likelihood is kept (as a user would). Default: ``options.n_init`` (1).
    weights : None, array_like or dask array, shape (N,)
        Per-row weights (see :func:`daskgmmis.fit`), split with the rows: they
        weight both the fits and the held-out scores.
    projection : None, (d, D) or (N, d, D)
        Projection matrices (see :func:`daskgmmis.fit`); per-row ones are split with
        the rows.
    options : FitOptions, optional
        The fits' options (validated once, here); ``rng`` is replaced per fold.
    **fit_kwargs
        Fit options (:class:`daskgmmis.FitOptions`: ``init_method``, ``tol``,
        ``maxiter``, ``w``, ``background`` - copied per fold -, ...), replacing
        those of ``options``.

    Returns
    -------
    CVResult
        Per-fold held-out mean log-likelihood per row, fitted models and results.
    """

    _check_model(gmm)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise InputError(f"n_folds: expected an integer >= 2; found {n_folds!r}.")
    if n_init is not None:
        fit_kwargs["n_init"] = n_init
    opts = FitOptions.create(options, **fit_kwargs)
    background = opts.background
    x, noise, weights, projection = _resolve_data(gmm, data, covar, weights, projection)
    check_background(background, int(x.shape[1]), "the data")
    N = int(x.shape[0])
    if n_folds > N:
        raise InputError(f"n_folds: {n_folds} folds for {N} rows; expected n_folds <= N.")
    per_row = noise is not None and not isinstance(noise, np.ndarray)
    offsets = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).astype(int).tolist()
    root = _root_seed(rng)
    split_seed, fit_seed = child_seed(root, 0), child_seed(root, 1)
    base_seed = split_seed.generate_state(4).tolist()

    def split(fold, train):
        xs = _fold_split(x, n_folds, fold, train, base_seed, offsets)
        ns = _fold_split(noise, n_folds, fold, train, base_seed, offsets) if per_row else noise
        ws = (None if weights is None else
              _fold_split(weights, n_folds, fold, train, base_seed, offsets))
        ps = (_fold_split(projection, n_folds, fold, train, base_seed, offsets)
              if projection is not None and projection.ndim == 3 else projection)
        return xs, ns, ws, ps

    models, results, backgrounds, graphs = [], [], [], []
    for fold in range(n_folds):
        x_train, n_train, w_train, p_train = split(fold, True)
        g = gmm.copy()
        bg = None if background is None else background.copy()
        # the package's one multi-start loop (best training likelihood of n_init)
        res = fit(g, x_train, n_train, weights=w_train, projection=p_train,
                  options=opts.replace(background=bg, rng=child_seed(fit_seed, fold)))
        models.append(g)
        results.append(res)
        backgrounds.append(bg)
        x_test, n_test, w_test, p_test = split(fold, False)
        graphs.extend(_loglike_graph(g, x_test, n_test, bg, w_test, p_test))
    values = _compute(*graphs)
    totals = np.array(values[0::2], dtype=np.float64)
    counts = np.array(values[1::2], dtype=np.int64 if weights is None else np.float64)
    return CVResult(totals / counts, counts, models, results,
                    backgrounds if background is not None else None)


# ------------------------------------------------------------------- stacking


def stack(models, weights=None, *, data=None, covar=None, background=None,
          rule: str = "mean") -> GMM:
    """One mixture from several fitted ones, weighted by held-out likelihood.

    The result holds every component of every model, with amplitudes
    ``w_m amp_mk / sum_k amp_mk`` (each model's Gaussian part normalized, then
    weighted). Backgrounds are not stacked: the result is the Gaussian population.

    Weights, in order of precedence:

    * ``weights`` given: used as they are (normalized to sum 1);
    * ``data`` given: each model is scored on it (one pass for all models) and
      ``w_m ∝ exp(s_m)``, computed as a softmax in log space, with ``s_m`` the mean
      log-likelihood per row (``rule="mean"``: the pyGMMis ``stack`` rule, mild)
      or the total log-likelihood (``rule="total"``: Bayesian model averaging with
      equal priors, nearly picks the best model on large data);
    * ``models`` is a :class:`CVResult`: its fold models weighted by their own
      held-out fold scores, with the same ``rule``.

    Parameters
    ----------
    models : sequence of GMM or CVResult
        Fitted models, all with the same D.
    weights : array_like, shape (M,), optional
        Non-negative weights, one per model.
    data : array_like (N, D), dask array, Catalog, or catalog path/URL, optional
        Held-out rows (not those the models were fitted on).
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise of ``data``.
    background : Background or sequence of Background, optional
        Background(s) of the models when scoring ``data``.
    rule : {"mean", "total"}
        Score turned into weights (see above).

    Returns
    -------
    GMM
        ``sum_m K_m`` components.
    """
    if rule not in ("mean", "total"):
        raise InputError(f"rule: expected 'mean' or 'total'; found {rule!r}.")
    if weights is not None and data is not None:
        raise InputError("weights, data: give one of them (explicit weights, or held-out "
                         "data to derive them), not both.")
    log_w = None
    if isinstance(models, CVResult):
        cv = models
        models = cv.models
        if weights is None and data is None:
            log_w = cv.scores if rule == "mean" else cv.scores * cv.n_heldout
    models = list(models)
    if not models:
        raise InputError("models: expected at least one GMM; found none.")
    for m, g in enumerate(models):
        _check_model(g, f"models[{m}]")
    D = models[0].D
    if any(g.D != D for g in models):
        raise InputError(f"models: expected the same D for every model; found "
                         f"{[g.D for g in models]}.")
    M = len(models)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (M,):
            raise InputError(f"weights: expected shape ({M},), one per model; found {w.shape}.")
        if not np.all(np.isfinite(w)) or (w < 0).any() or not w.sum() > 0:
            raise InputError(f"weights: expected finite, non-negative weights with a "
                             f"positive sum; found {w.tolist()}.")
        w = w / w.sum()
    else:
        if log_w is None:
            if data is None:
                raise InputError("stack: give weights, held-out data, or a CVResult.")
            bgs = (list(background) if isinstance(background, (list, tuple))
                   else [background] * M)
            if len(bgs) != M:
                raise InputError(f"background: expected one per model ({M}); found {len(bgs)}.")
            for bg in bgs:
                check_background(bg, D, "the model")
            x, noise, weights, proj = _resolve_data(models[0], data, covar)
            graphs = []
            for g, bg in zip(models, bgs):
                graphs.extend(_loglike_graph(g, x, noise, bg, weights, proj))
            values = _compute(*graphs)
            totals = np.array(values[0::2], dtype=np.float64)
            counts = np.array(values[1::2], dtype=np.float64)
            log_w = totals / counts if rule == "mean" else totals
        log_w = np.asarray(log_w, dtype=np.float64)
        if not np.isfinite(log_w).any():
            raise InputError(f"the models' scores are all non-finite ({log_w.tolist()}); "
                             f"cannot weight them.")
        w = np.exp(log_w - logsumexp(log_w))
    amp, mean, covar_out = [], [], []
    for wm, g in zip(w, models):
        a, mu, V = g._params()
        amp.append(wm * a / a.sum())
        mean.append(mu)
        covar_out.append(V)
    out = GMM(sum(g.K for g in models), D)
    out.amp = np.concatenate(amp)
    out.mean = np.concatenate(mean)
    out.covar = np.concatenate(covar_out)
    return out
