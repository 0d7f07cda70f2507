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

import inspect
import os
import sys

import numpy as np

from .background import Background
from .em import _root_seed, fit_best
from .errors import DaskGMMisError, InputError, InputTypeError
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


class GaussianMixture:
    """Gaussian mixture for noisy, incomplete, truncated data, scikit-learn style.

    Parameters
    ----------
    n_components : int
        Number of Gaussian components K.
    init_method : {"kmeans", "random", "minmax", "none"}
        Initialization (see :func:`daskgmmis.fit`). ``"none"`` starts from
        ``weights_init``, ``means_init`` and ``covariances_init``.
    w : float
        Covariance regularization in data units (``w**2`` floor on the variances).
    cutoff : float, optional
        Neighborhood size in 1-D-equivalent sigmas (None: all rows).
    sel_callback : callable, optional
        Selection function Ω(coords) -> probabilities: fit the population before
        selection (truncation by imputation).
    covar_callback : callable, optional
        Noise covariance of unobserved rows at arbitrary positions.
    background : Background, optional
        Uniform background fitted jointly. Not modified: the fitted copy is
        ``background_``.
    tol : float
        Convergence threshold on the change of the mean log-likelihood per row.
    maxiter : int
        Maximum number of EM iterations.
    frozen : dict or sequence of int, optional
        Components whose amplitude/mean/covariance are held (with
        ``init_method="none"``).
    oversampling : float
        Monte-Carlo precision of the imputation (truncated fits).
    n_init : int
        Number of starts; the one with the highest likelihood is kept.
    prefit : bool
        Start truncation-aware fits from a fit without the selection (see
        :func:`fit_best`).
    weights_init, means_init, covariances_init : array_like, optional
        Starting parameters, shapes (K,), (K, D), (K, D, D); required (all three)
        with ``init_method="none"``.
    accelerate : bool
        SQUAREM extrapolation of the EM map (see :func:`daskgmmis.fit`).
    random_state : None, int, numpy Generator, SeedSequence or RandomState
        Seed of every random choice.
    client : distributed.Client, optional
        Cluster to run on (default: the active client, else threads).
    persist : bool, optional
        Keep the data in (cluster) memory across iterations (default: when it fits).

    Attributes
    ----------
    weights_ : ndarray, shape (K,)
        Amplitudes of the components (they sum to ``1 - background_.amp``).
    means_ : ndarray, shape (K, D)
    covariances_ : ndarray, shape (K, D, D)
        Covariances of the error-free population (deconvolved).
    converged_ : bool
    n_iter_ : int
        EM iterations of the best start.
    lower_bound_ : float
        Mean log-likelihood per observed row of the best start (selection
        included; :attr:`FitResult.logL`).
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

    def __init__(self, n_components=1, *, init_method="kmeans", w=0.0, cutoff=None,
                 sel_callback=None, covar_callback=None, background=None, tol=1e-3,
                 maxiter=1000, frozen=None, oversampling=4.0, n_init=1, prefit=False,
                 weights_init=None, means_init=None, covariances_init=None,
                 accelerate=True, random_state=None, client=None, persist=None):
        self.n_components = n_components
        self.init_method = init_method
        self.w = w
        self.cutoff = cutoff
        self.sel_callback = sel_callback
        self.covar_callback = covar_callback
        self.background = background
        self.tol = tol
        self.maxiter = maxiter
        self.frozen = frozen
        self.oversampling = oversampling
        self.n_init = n_init
        self.prefit = prefit
        self.weights_init = weights_init
        self.means_init = means_init
        self.covariances_init = covariances_init
        self.accelerate = accelerate
        self.random_state = random_state
        self.client = client
        self.persist = persist

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

    def _initial_gmm(self, D: int) -> GMM:
        gmm = GMM(self.n_components, D)
        given = [v is not None for v in (self.weights_init, self.means_init,
                                         self.covariances_init)]
        if self.init_method == "none":
            if not all(given):
                raise InputError("init_method='none': give weights_init, means_init and "
                                 "covariances_init (the starting parameters).")
            gmm.amp = np.array(self.weights_init, dtype=np.float64)
            gmm.mean = np.array(self.means_init, dtype=np.float64)
            gmm.covar = np.array(self.covariances_init, dtype=np.float64)
        elif any(given):
            raise InputError(f"weights_init/means_init/covariances_init: only used with "
                             f"init_method='none'; found init_method={self.init_method!r}.")
        return gmm

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
        gmm = self._initial_gmm(self.n_features_in_)
        bg = _copy_background(self.background)
        result = fit_best(
            gmm, X, covar, n_init=self.n_init, rng=_seed_of(self.random_state),
            background=bg, prefit=self.prefit, init_method=self.init_method, w=self.w,
            cutoff=self.cutoff, sel_callback=self.sel_callback,
            covar_callback=self.covar_callback, tol=self.tol, maxiter=self.maxiter,
            frozen=self.frozen, oversampling=self.oversampling, client=self.client,
            persist=self.persist, accelerate=self.accelerate)
        if bg is not None:
            gmm.background = bg
        self.gmm_ = gmm
        self.background_ = bg
        self.result_ = result
        self.weights_ = np.array(gmm.amp)
        self.means_ = np.array(gmm.mean)
        self.covariances_ = np.array(gmm.covar)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.logL)
        self.N_orig_ = float(result.N_orig)
        cat = open_catalog(X) if isinstance(X, (str, os.PathLike)) else X
        if isinstance(cat, Catalog):
            self.feature_names_in_ = np.asarray(cat.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

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
        return self.gmm_.logL(X, covar, background=self.background_)

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
            raise InputError(f"n_samples: expected an integer >= 1; found {n_samples!r}.")
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
