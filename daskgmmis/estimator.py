"""A scikit-learn style estimator over the daskgmmis engine, and best-of-n fitting.

:class:`GaussianMixture` follows scikit-learn's conventions (constructor stores
hyper-parameters only, ``fit`` returns ``self``, fitted attributes end with ``_``,
``get_params``/``set_params``, ``NotFittedError``) without importing
scikit-learn: it works where scikit-learn is absent and passes scikit-learn's
estimator checks where it is installed. Underneath every method is a library
call - :func:`daskgmmis.fit`, :meth:`GMM.logL`, :func:`daskgmmis.posterior`,
:func:`daskgmmis.bic` - so the estimator and the functional API give the same
numbers, and ``X`` may be a numpy array, a dask array, a :class:`Catalog` or a
catalog path (the last three stay lazy: nothing is gathered on the driver).

:func:`fit_best` runs several EM starts from independent seeds and keeps the
highest likelihood; the command line and the demo use it too.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import warnings

import numpy as np

from .background import Background
from .em import _root_seed, continue_fit, fit_best
from .options import FitOptions
from .progress import progress_display
from .skcompat import (check_covariance_type, check_covariances, check_means, check_weights,
                       covariances_from_precisions, precision_cholesky, resolve_init_method,
                       resolve_maxiter, resolve_regularization)
from .errors import ConvergenceWarning, DaskGMMisError, InputError, InputTypeError
from .model import GMM
from .validation import is_dask
from .catalog import as_dask_input, Catalog, open_catalog
from .scoring import aic, bic, score
from .posterior import posterior

__all__ = ["GaussianMixture", "NotFittedError", "fit_best"]


def _copy_background(bg: Background | None) -> Background | None:
    return None if bg is None else bg.copy()


# ------------------------------------------------------------------- not fitted


class NotFittedError(DaskGMMisError, ValueError, AttributeError):
    """An estimator method that needs ``fit`` was called before it.

    When scikit-learn is already imported, the instance raised also subclasses
    ``sklearn.exceptions.NotFittedError`` (without daskgmmis importing it), so
    scikit-learn's tools recognize it.
    """


_COMBINED: dict = {}


def _not_fitted(est) -> NotFittedError:
    msg = (f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with "
           f"appropriate arguments before using this estimator.")
    sk = sys.modules.get("sklearn.exceptions")
    if sk is None:
        return NotFittedError(msg)
    cls = _COMBINED.get(sk.NotFittedError)
    if cls is None:
        cls = type("NotFittedError", (NotFittedError, sk.NotFittedError),
                   {"__module__": __name__, "__doc__": NotFittedError.__doc__})
        _COMBINED[sk.NotFittedError] = cls
    return cls(msg)


# --------------------------------------------------------------------- estimator


def _is_lazy(X) -> bool:
    """Dask arrays, catalogs and catalog paths are passed to the library untouched."""
    return is_dask(X) or isinstance(X, (Catalog, str, os.PathLike))


def _seed_of(random_state):
    """scikit-learn's random_state as a daskgmmis rng (RandomState draws a seed)."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(random_state.randint(0, 2**32 - 1, size=4).tolist())
    return random_state


# The fit options that are estimator parameters under their own name; the others:
# rng is scikit-learn's random_state, progress is verbose.
OPTION_PARAMS = tuple(n for n in FitOptions.names() if n not in ("rng", "progress"))
_DEFAULTS = FitOptions.defaults()


# scikit-learn's wording of a fit that stopped at max_iter (its users search for it)
_SK_NOT_CONVERGED = ("Best performing initialization did not converge. Try different init "
                     "parameters, or increase max_iter, tol, or check for degenerate data.")


def _reissue(caught) -> None:
    """Issue the fit's warnings again from the estimator, the convergence one in
    scikit-learn's words followed by the library's details; the user's filters apply."""
    for w in caught:
        if issubclass(w.category, ConvergenceWarning) and "did not converge" in str(w.message):
            warnings.warn(f"{_SK_NOT_CONVERGED} ({w.message})", w.category, stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   source=w.source)


class GaussianMixture:
    """Gaussian mixture for noisy, incomplete, truncated data, scikit-learn style.

    Parameters
    ----------
    n_components : int
        Number of Gaussian components K.
    covariance_type : {"full"}
        scikit-learn's name; only full covariances are fitted (anything else is
        an :class:`InputError`).
    tol : float, optional
        Distance to the fixed point (mean log-likelihood per row still to gain) at
        which EM stops, as :func:`daskgmmis.fit`'s ``tol`` (default: 0.01 / N).
        scikit-learn stops on the change of that same per-sample quantity.
    reg_covar : float, optional
        scikit-learn's regularization: a variance added to every covariance's
        diagonal. It adds to ``w**2``: the fit runs with
        ``w = sqrt(reg_covar + w**2)``. Default None: ``w`` alone (0, i.e. no
        regularization - scikit-learn's default is 1e-6).
    max_iter : int, optional
        scikit-learn's name of ``maxiter`` (None: ``maxiter``).
    n_init : int
        Number of starts; the one with the highest likelihood is kept.
    init_params : {"kmeans", "k-means++", "random_from_data", "random"}, optional
        scikit-learn's name of the start: "kmeans" and "k-means++" are
        ``init_method="kmeans"`` (k-means||), "random_from_data" is "random"
        (components at random rows), "random" (scikit-learn: random
        responsibilities, starts spread over the data) is "minmax". None:
        ``init_method``.
    weights_init, means_init : array_like, optional
        Starting weights (K,) - in [0, 1], summing to 1 (scaled by
        ``1 - background.amp`` with a background) - and means (K, D). Any subset
        of the starting parameters may be given: the others come from the
        initialization (scikit-learn's rule).
    precisions_init : array_like, optional
        Starting precisions (K, D, D) (inverse covariances), scikit-learn's
        name; or give ``covariances_init``.
    random_state : None, int, numpy Generator, SeedSequence or RandomState
        Seed of every random choice (the fit option ``rng``).
    warm_start : bool
        Start ``fit`` from the previous fit's parameters (one start). On the same
        data and options the fit goes on from the previous fit's EM state (acceleration
        memory, imputation sample, the convergence test's rates), so repeated
        ``fit`` calls with ``max_iter=1`` take the steps of one long fit and set
        ``converged_`` where it would stop.
    verbose : int
        0: silent; 1: a header and a one-line summary per start; 2: also the
        iterations (every ``verbose_interval``-th) - on stderr (the fit option
        ``progress``; scikit-learn prints to stdout).
    verbose_interval : int
        Iterations between progress lines with ``verbose=2``.
    init_method : {"kmeans", "random", "minmax", "none"}
        Initialization (see :func:`daskgmmis.fit`). ``"none"`` starts from
        ``weights_init``, ``means_init`` and ``covariances_init`` (or
        ``precisions_init``).
    w : float
        Covariance regularization in data units (``w**2`` added to the variances).
    maxiter : int
        Maximum number of EM iterations.
    covariances_init : array_like, optional
        Starting covariances (K, D, D).
    cutoff : float, optional
        Neighborhood size in 1-D-equivalent sigmas (None: all rows).
    sel_callback : callable, optional
        Selection function Ω(coords) -> probabilities: fit the population before
        selection (truncation by imputation).
    covar_callback : callable, optional
        Noise covariance of unobserved rows at arbitrary positions.
    projection_callback : callable, optional
        Projection matrices of unobserved rows at true positions (truncated fits
        with per-row projections).
    background : Background, optional
        Uniform background fitted jointly. Not modified: the fitted copy is
        ``background_``.
    frozen : dict or sequence of int, optional
        Components whose amplitude/mean/covariance are held (with
        ``init_method="none"``).
    oversampling : float
        Monte-Carlo precision of the imputation (truncated fits).
    prefit : bool
        Start truncation-aware fits from a fit without the selection.
    accelerate : bool
        Anderson acceleration of the EM map (see :func:`daskgmmis.fit`).
    client : distributed.Client, optional
        Cluster to run on (default: the active client, else threads).
    persist : bool, optional
        Keep the data in (cluster) memory across iterations (default: when it fits).
    split_n_merge, callback_timeout, checkpoint, stepwise, estimate_mc_error
        As for :func:`daskgmmis.fit`.

    Every fit option of :class:`daskgmmis.FitOptions` is a parameter here, under
    its own name and with its default (tested), except ``rng`` - scikit-learn's
    ``random_state`` - and ``progress`` - ``verbose``.

    Attributes
    ----------
    weights_ : ndarray, shape (K,)
        Amplitudes of the components (they sum to ``1 - background_.amp``).
    means_ : ndarray, shape (K, D)
    covariances_ : ndarray, shape (K, D, D)
        Covariances of the error-free population (deconvolved).
    precisions_ : ndarray, shape (K, D, D)
        Inverse covariances.
    precisions_cholesky_ : ndarray, shape (K, D, D)
        Upper-triangular ``U_k`` with ``precisions_[k] = U_k U_k^T``
        (scikit-learn's convention).
    converged_ : bool
    n_iter_ : int
        EM iterations of the best start.
    lower_bound_ : float
        Mean log-likelihood per observed row of the best start (selection
        included; :attr:`FitResult.logL`).
    lower_bounds_ : list of float
        ``lower_bound_`` at every E-step of the best start.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a :class:`Catalog` (its column names).
    gmm_ : GMM
        The fitted model.
    background_ : Background or None
        The fitted background.
    result_ : FitResult
        Result of the best start (history, ``N_orig``, timings).
    N_orig_ : float
        Estimated population size before selection.

    Notes
    -----
    NaN entries of ``X`` are missing features, marginalized exactly; ``covar``
    (keyword) gives the noise as in :func:`daskgmmis.fit`. ``y`` is accepted and
    ignored, as scikit-learn requires of unsupervised estimators.

    Examples
    --------
    >>> est = GaussianMixture(3, random_state=0).fit(X, covar=noise)
    >>> est.predict_proba(X, covar=noise)
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=None, reg_covar=None,
                 max_iter=None, n_init=1, init_params=None, weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, verbose_interval=10, init_method="kmeans", w=0.0,
                 maxiter=1000, covariances_init=None, cutoff=None, sel_callback=None,
                 covar_callback=None, projection_callback=None, background=None, frozen=None,
                 oversampling=4.0, prefit=False, accelerate=True, client=None, persist=None,
                 split_n_merge=0, callback_timeout=None, checkpoint=None, stepwise=0,
                 estimate_mc_error=True):
        # scikit-learn's names first, then daskgmmis's; stored as given (validated at fit)
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.init_method = init_method
        self.w = w
        self.maxiter = maxiter
        self.covariances_init = covariances_init
        self.cutoff = cutoff
        self.sel_callback = sel_callback
        self.covar_callback = covar_callback
        self.projection_callback = projection_callback
        self.background = background
        self.frozen = frozen
        self.oversampling = oversampling
        self.prefit = prefit
        self.accelerate = accelerate
        self.client = client
        self.persist = persist
        self.split_n_merge = split_n_merge
        self.callback_timeout = callback_timeout
        self.checkpoint = checkpoint
        self.stepwise = stepwise
        self.estimate_mc_error = estimate_mc_error

    # ------------------------------------------------------------ parameters

    @classmethod
    def _get_param_names(cls) -> list:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict:
        """Hyper-parameters of the estimator.

        Parameters
        ----------
        deep : bool
            Also return the parameters of parameter values that are estimators
            themselves (as ``name__param``).

        Returns
        -------
        dict
        """
        out = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params) -> "GaussianMixture":
        """Set hyper-parameters (validated at ``fit``, as scikit-learn does).

        Parameters
        ----------
        **params
            ``name=value``, or ``name__sub=value`` for a parameter's own
            parameters.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Unknown parameter name.
        """
        valid = self._get_param_names()
        nested: dict = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise InputError(f"Invalid parameter {name!r} for estimator {self}. Valid "
                                 f"parameters are: {valid!r}.")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default
                    for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = []
        for name in self._get_param_names():
            value, default = getattr(self, name), defaults[name]
            same = value is default
            if not same:
                try:
                    same = type(value) is type(default) and bool(value == default)
                except (TypeError, ValueError):   # arrays: ambiguous truth value
                    same = False
            if not same:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __sklearn_tags__(self):
        """scikit-learn estimator tags (called by scikit-learn only, which is then
        importable): a density estimator that accepts NaN (missing features)."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type="density_estimator",
                    target_tags=TargetTags(required=False),
                    input_tags=InputTags(allow_nan=True))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "gmm_")

    # ------------------------------------------------------------ validation

    def _fit_options(self, **changes) -> FitOptions:
        """The fit options from the hyper-parameters (validated by the table).

        Every :class:`FitOptions` name is a parameter of the same name, except
        ``rng`` (``random_state``) and ``progress`` (``verbose``).
        """
        check_covariance_type(self.covariance_type)
        values = {name: getattr(self, name) for name in FitOptions.names()
                  if name in OPTION_PARAMS}
        values["rng"] = _seed_of(self.random_state)
        values["w"] = resolve_regularization(self.w, self.reg_covar)
        values["maxiter"] = resolve_maxiter(self.maxiter, self.max_iter, _DEFAULTS["maxiter"])
        values["init_method"] = resolve_init_method(self.init_method, self.init_params,
                                                    _DEFAULTS["init_method"])
        values.update(changes)
        return FitOptions.create(**values)


    def _check_is_fitted(self) -> None:
        if not hasattr(self, "gmm_"):
            raise _not_fitted(self)

    def _validate_X(self, X, *, reset: bool):
        """In-memory input as a float (N, D) numpy array, with scikit-learn's errors.

        Dask arrays, catalogs and paths pass through (the library validates them
        inside its first pass over the data).
        """
        if _is_lazy(X):
            D = X.shape[1] if hasattr(X, "shape") else None
            if D is None:
                D = open_catalog(X).data.shape[1]
        else:
            if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
                raise InputTypeError(
                    f"Sparse data was passed for X, but dense data is required by "
                    f"{type(self).__name__}. Use '.toarray()' to convert to a dense "
                    f"numpy array.")
            arr = np.asarray(X)
            if np.iscomplexobj(arr):
                raise InputError("Complex data not supported; expected real numbers.")
            if arr.dtype.kind in "fc" and arr.dtype != np.float16:
                X = arr
            else:
                # object arrays of numbers convert; anything else raises a TypeError
                # or ValueError naming the offending value
                X = arr.astype(np.float64)
            if X.ndim != 2:
                raise InputError(
                    f"Expected 2D array, got {X.ndim}D array instead. Reshape your data "
                    f"with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for "
                    f"a single sample.")
            # scikit-learn's wording, which its checks (and users) look for
            if X.shape[0] < 1:
                raise InputError(f"Found array with 0 sample(s) (shape={X.shape}) while a "
                                 f"minimum of 1 is required.")
            if X.shape[1] < 1:
                raise InputError(f"Found array with 0 feature(s) (shape={X.shape}) while a "
                                 f"minimum of 1 is required.")
            D = X.shape[1]
        if reset:
            self.n_features_in_ = int(D)
        elif D != self.n_features_in_:
            raise InputError(f"X has {D} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X

    def _given_start(self, K: int, D: int) -> dict:
        """The user's starting parameters, checked: {"amp"|"mean"|"covar": array}."""
        if self.precisions_init is not None and self.covariances_init is not None:
            raise InputError("precisions_init and covariances_init: give one (the "
                             "precisions are the inverse covariances).")
        given = {}
        if self.weights_init is not None:
            given["amp"] = check_weights(self.weights_init, K)
        if self.means_init is not None:
            given["mean"] = check_means(self.means_init, K, D)
        if self.precisions_init is not None:
            given["covar"] = covariances_from_precisions(self.precisions_init, K, D)
        if self.covariances_init is not None:
            given["covar"] = check_covariances(self.covariances_init, K, D)
        return given

    def _start(self, X, covar, opts: FitOptions):
        """(starting GMM, options of the fit from it).

        * ``warm_start`` with a previous fit: that fit's parameters (one start);
        * every starting parameter given (or ``init_method="none"``): them;
        * some given: the others from the initialization ``opts.init_method``
          (its parameters after zero EM iterations), then the given ones put in
          - scikit-learn's rule.

        Weights sum to 1; with a background they are scaled by ``1 - amp``.
        """
        K, D = self.n_components, self.n_features_in_
        if self.warm_start and hasattr(self, "gmm_") and self.gmm_.K == K \
                and self.gmm_.D == D:
            gmm = self.gmm_.copy()
            bg = opts.background
            if bg is not None and self.background_ is not None:
                bg.amp = self.background_.amp
            return gmm, opts.replace(init_method="none", n_init=1)
        gmm = GMM(K, D)
        given = self._given_start(K, D)
        if opts.init_method == "none" and len(given) < 3:
            raise InputError("init_method='none': give weights_init, means_init and "
                             "covariances_init (or precisions_init), the starting parameters.")
        if not given:
            return gmm, opts
        if len(given) < 3:
            if opts.n_init > 1:
                raise InputError(f"n_init={opts.n_init} with some of weights_init/means_init/"
                                 f"precisions_init: every start would begin from the given "
                                 f"parameters; use n_init=1 or give none of them.")
            # the missing parameters from the initialization (no EM iteration)
            fit_best(gmm, X, covar, options=opts.replace(
                maxiter=0, sel_callback=None, covar_callback=None, projection_callback=None,
                prefit=False,
                checkpoint=None, progress=False, split_n_merge=0,
                background=_copy_background(opts.background)))
        for key, value in given.items():
            setattr(gmm, key, value.copy())
        bg = opts.background
        if "amp" in given and bg is not None:
            gmm.amp = gmm.amp * (1.0 - bg.amp)
        return gmm, opts.replace(init_method="none", n_init=1)

    # -------------------------------------------------------------------- fit

    def fit(self, X, y=None, *, covar=None) -> "GaussianMixture":
        """Fit the mixture to ``X`` (with noise ``covar``) by EM.

        Parameters
        ----------
        X : array_like (N, D), dask array, Catalog, or catalog path
            NaN marks a missing feature.
        y : ignored
            Present for scikit-learn compatibility. A 2-D ``y`` is refused: it is
            most likely noise meant for ``covar=``.
        covar : None, (D, D), (N, D) or (N, D, D), keyword-only
            Noise covariances (shared, diagonal variances, full); taken from the
            catalog when ``X`` is one.

        Returns
        -------
        self
        """
        if y is not None and np.ndim(y) > 1:
            raise InputError("y: unsupervised estimator; y is ignored and must be 1-D or "
                             "None. Pass noise covariances as covar=...")
        X = self._validate_X(X, reset=True)
        if not _is_lazy(X):
            n = X.shape[0]
            if isinstance(self.n_components, (int, np.integer)) and n < self.n_components:
                raise InputError(f"Expected n_samples >= n_components but got "
                                 f"n_components = {self.n_components}, n_samples = {n}.")
        verbose = self.verbose
        if isinstance(verbose, bool) or not isinstance(verbose, (int, np.integer)) \
                or verbose < 0:
            raise InputError(f"verbose: expected an integer >= 0; found {verbose!r}.")
        interval = self.verbose_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) \
                or interval < 1:
            raise InputError(f"verbose_interval: expected an integer >= 1; found "
                             f"{interval!r}.")
        opts = self._fit_options(background=_copy_background(self.background))
        gmm, opts = self._start(X, covar, opts)
        # a warm start goes on with the previous fit's convergence test (same problem)
        previous = getattr(self, "result_", None) if self.warm_start else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # verbose=1: a header and a summary per start; 2: also every
            # verbose_interval-th iteration (on stderr, as the library's progress)
            display = (progress_display(interval=interval if verbose > 1 else 1) if verbose
                       else contextlib.nullcontext())
            with display as handler:
                if handler is not None:
                    handler.show_iterations = verbose > 1
                result = continue_fit(gmm, X, covar, options=opts, previous=previous)
        _reissue(caught)
        bg = opts.background
        if bg is not None:
            gmm.background = bg
        self.gmm_ = gmm
        self.background_ = bg
        self.result_ = result
        dtype = X.dtype if isinstance(X, np.ndarray) and X.dtype == np.float32 else np.float64
        self.weights_ = np.asarray(gmm.amp, dtype=dtype)
        self.means_ = np.asarray(gmm.mean, dtype=dtype)
        self.covariances_ = np.asarray(gmm.covar, dtype=dtype)
        chol = precision_cholesky(gmm.covar)
        self.precisions_cholesky_ = chol.astype(dtype)
        self.precisions_ = (chol @ np.swapaxes(chol, 1, 2)).astype(dtype)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.logL)
        self.lower_bounds_ = list(result.history)
        self.N_orig_ = float(result.N_orig)
        cat = open_catalog(X) if isinstance(X, (str, os.PathLike)) else X
        if isinstance(cat, Catalog):
            self.feature_names_in_ = np.asarray(cat.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def fit_predict(self, X, y=None, *, covar=None):
        """Fit, then return the most probable component of each row.

        Parameters
        ----------
        X, y, covar
            As for :meth:`fit`.

        Returns
        -------
        ndarray or dask array of int, shape (N,)
            ``self.fit(X, covar=covar).predict(X, covar=covar)``: the labels of the
            fitted parameters (scikit-learn's rule).
        """
        return self.fit(X, y, covar=covar).predict(X, covar=covar)

    # --------------------------------------------------------------- predict

    def score_samples(self, X, *, covar=None):
        """Log-density of each row under the fitted (noise-convolved) model.

        Parameters
        ----------
        X : array_like (N, D), dask array, Catalog, or catalog path
            NaN marks a missing feature (marginalized).
        covar : None, (D, D), (N, D) or (N, D, D)
            Noise of the rows.

        Returns
        -------
        ndarray or dask array, shape (N,)
            ``log p(x_i)`` (the population density, background included); NaN for
            rows with no observed feature. Lazy for dask/catalog input.
        """
        self._check_is_fitted()
        X = self._validate_X(X, reset=False)
        if _is_lazy(X):
            X, covar, _ = as_dask_input(X, covar)
        out = self.gmm_.logL(X, covar, background=self.background_)
        # scikit-learn's rule: float32 data give float32 results
        return out.astype(np.float32) if getattr(X, "dtype", None) == np.float32 else out

    def score(self, X, y=None, *, covar=None) -> float:
        """Mean log-likelihood per row (rows with an observed feature).

        Parameters
        ----------
        X, covar
            As for :meth:`score_samples`.
        y : ignored

        Returns
        -------
        float
        """
        self._check_is_fitted()
        X = self._validate_X(X, reset=False)
        return float(score(self.gmm_, X, covar, background=self.background_))

    def _posterior_resp(self, X, covar):
        import dask.array as da

        self._check_is_fitted()
        X = self._validate_X(X, reset=False)
        lazy = _is_lazy(X)
        # numpy input goes through dask too: the posterior blocks are then sized to
        # a memory budget and only the responsibilities are gathered
        data = X if lazy else da.asarray(X)
        resp = posterior(self.gmm_, data, covar, background=self.background_).resp
        return resp if lazy else resp.compute()

    def predict_proba(self, X, *, covar=None):
        """Posterior probability of each component for each row.

        Parameters
        ----------
        X, covar
            As for :meth:`score_samples`.

        Returns
        -------
        ndarray or dask array, shape (N, K)
            Rows sum to 1; conditional on the row belonging to the Gaussian
            population when a background was fitted (see
            :class:`daskgmmis.Posterior`).
        """
        return self._posterior_resp(X, covar)

    def predict(self, X, *, covar=None):
        """Most probable component of each row.

        Parameters
        ----------
        X, covar
            As for :meth:`score_samples`.

        Returns
        -------
        ndarray or dask array of int, shape (N,)
        """
        return self._posterior_resp(X, covar).argmax(axis=1)

    def sample(self, n_samples: int = 1):
        """Draw error-free samples from the fitted population.

        Parameters
        ----------
        n_samples : int
            Number of samples.

        Returns
        -------
        X : ndarray, shape (n_samples, D)
        labels : ndarray of int, shape (n_samples,)
            Component of each sample, grouped by component as scikit-learn does;
            -1 for background samples.
        """
        self._check_is_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
                or n_samples < 1:
            raise InputError(f"Invalid value for 'n_samples': {n_samples!r}. n_samples: "
                             f"expected an integer >= 1 (the sampling requires at least "
                             f"one sample).")
        rng = np.random.default_rng(_root_seed(_seed_of(self.random_state)))
        amp = np.asarray(self.gmm_.amp, dtype=np.float64)
        bg = self.background_
        p_bg = 0.0 if bg is None else bg.amp
        probs = np.append(amp / amp.sum() * (1.0 - p_bg), p_bg)
        counts = rng.multinomial(n_samples, probs / probs.sum())
        parts, labels = [], []
        for k, c in enumerate(counts[:-1]):
            one = GMM(1, self.gmm_.D)
            one.amp = np.ones(1)
            one.mean = self.gmm_.mean[k:k + 1]
            one.covar = self.gmm_.covar[k:k + 1]
            parts.append(one.draw(int(c), rng=rng))
            labels.append(np.full(c, k))
        if counts[-1]:
            parts.append(rng.uniform(bg.lower, bg.upper, size=(counts[-1], self.gmm_.D)))
            labels.append(np.full(counts[-1], -1))
        return np.concatenate(parts), np.concatenate(labels)

    def bic(self, X, *, covar=None) -> float:
        """Bayesian information criterion on ``X`` (lower is better).

        See :func:`daskgmmis.bic`.
        """
        self._check_is_fitted()
        return bic(self.gmm_, self._validate_X(X, reset=False), covar,
                   background=self.background_)

    def aic(self, X, *, covar=None) -> float:
        """Akaike information criterion on ``X`` (lower is better).

        See :func:`daskgmmis.aic`.
        """
        self._check_is_fitted()
        return aic(self.gmm_, self._validate_X(X, reset=False), covar,
                   background=self.background_)
