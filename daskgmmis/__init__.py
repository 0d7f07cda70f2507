"""daskgmmis: Gaussian mixtures for large, noisy, incomplete and truncated catalogs.

Extreme deconvolution with exact missing-feature marginalization, truncation by
imputation, a uniform background and per-component neighborhoods (the method of
pyGMMis, Melchior & Goulding 2016), map-reduced over row chunks with Dask.
"""

from .background import Background
from .catalog import Catalog, open_catalog, write_catalog
from .cluster import client_context, get_client
from .em import FitResult, fit
from .errors import (CallbackError, CatalogError, CatalogNotFoundError, CheckpointError,
                     ClusterError, ConvergenceWarning, DaskGMMisError, DeadComponentWarning,
                     PrecisionWarning,
                     InputError, InputTypeError, ModelFileError, NumericalError, OutputError,
                     OutputExistsError, SchedulerFileError, SchedulerFileNotFoundError,
                     StoreExistsError)
from .model import GMM
from .options import FitOptions
from .posterior import Posterior, posterior, predict_missing, write_posterior
from .scoring import CVResult, aic, bic, cv_fit, score, stack
from .simulate import draw
from .estimator import GaussianMixture
from . import selection

__version__ = "0.1.0"

__all__ = [
    "GMM", "FitOptions", "Background", "Catalog", "FitResult", "fit", "open_catalog", "write_catalog",
    "DaskGMMisError", "InputError", "InputTypeError", "CatalogError", "CatalogNotFoundError",
    "ModelFileError", "NumericalError", "CallbackError", "CheckpointError", "ClusterError", "OutputError", "OutputExistsError",
    "StoreExistsError",
    "SchedulerFileError", "SchedulerFileNotFoundError", "get_client", "client_context",
    "ConvergenceWarning", "DeadComponentWarning", "PrecisionWarning", "__version__",
    "Posterior", "posterior", "predict_missing", "write_posterior",
    "CVResult", "aic", "bic", "cv_fit", "score", "stack", "draw", "selection", "GaussianMixture",
]
