"""Exception and warning hierarchy of daskgmmis.

Every error subclasses both :class:`DaskGMMisError` and the built-in exception a
caller would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``...), so
``except ValueError`` keeps working while ``except DaskGMMisError`` catches all of
ours. Messages name the argument, what was expected, what was found and the fix.
"""

from __future__ import annotations

import sys

__all__ = [
    "DaskGMMisError",
    "InputError",
    "InputTypeError",
    "CatalogError",
    "CatalogNotFoundError",
    "ModelFileError",
    "NumericalError",
    "CallbackError",
    "CheckpointError",
    "ClusterError",
    "SchedulerFileError",
    "SchedulerFileNotFoundError",
    "OutputError",
    "OutputExistsError",
    "StoreExistsError",
    "ConvergenceWarning",
    "DeadComponentWarning",
    "adopt_sklearn_warnings",
]


class DaskGMMisError(Exception):
    """Base class of every daskgmmis error."""


class InputError(DaskGMMisError, ValueError):
    """An argument has the right type but a wrong value, shape or content."""


class InputTypeError(DaskGMMisError, TypeError):
    """An argument has the wrong type."""


class CatalogError(DaskGMMisError, ValueError):
    """A Zarr store is not a valid daskgmmis catalog, or cannot be written."""


class CatalogNotFoundError(CatalogError, FileNotFoundError):
    """A catalog path or URL does not exist."""


class ModelFileError(DaskGMMisError, ValueError):
    """A saved model file is missing, corrupted, tampered with or of another version."""


class NumericalError(DaskGMMisError, ArithmeticError):
    """A computation produced a non-finite or non-positive-definite result."""


class CallbackError(DaskGMMisError, ValueError):
    """A user callback (selection or covariance) raised or returned bad values."""


class CheckpointError(DaskGMMisError, ValueError):
    """A checkpoint belongs to another problem or cannot be read."""


class ClusterError(DaskGMMisError, ConnectionError):
    """A Dask scheduler cannot be reached, or no workers joined it in time."""


class SchedulerFileError(DaskGMMisError, ValueError):
    """A scheduler file is not the JSON written by ``dask scheduler --scheduler-file``."""


class SchedulerFileNotFoundError(SchedulerFileError, FileNotFoundError):
    """A scheduler file does not exist (yet)."""


class OutputError(DaskGMMisError, OSError):
    """An output file cannot be written (missing directory, permissions, full disk)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and ``overwrite`` was not given."""


class StoreExistsError(OutputExistsError, CatalogError):
    """A Zarr store (catalog, scores, posteriors) exists and ``overwrite`` was not given.

    An :class:`OutputExistsError` like every existing output, and a
    :class:`CatalogError` as store errors were before.
    """


class _WarningBase(UserWarning):
    """Base of the package's warnings until scikit-learn's ``ConvergenceWarning``
    replaces it (a heap class like scikit-learn's, so that the two layouts agree
    and ``__bases__`` may be reassigned)."""


class ConvergenceWarning(_WarningBase):
    """EM stopped at ``maxiter`` before reaching ``tol``.

    A subclass of ``sklearn.exceptions.ConvergenceWarning`` whenever
    scikit-learn is imported (see :func:`adopt_sklearn_warnings`), so that
    warning filters written for scikit-learn catch it.
    """


class DeadComponentWarning(_WarningBase):
    """A component lost (almost) all responsibility and was re-seeded, or collapsed
    onto a numerically singular covariance (identical rows, a constant feature).

    Like :class:`ConvergenceWarning`, a subclass of scikit-learn's
    ``ConvergenceWarning`` whenever scikit-learn is imported.
    """


def adopt_sklearn_warnings() -> bool:
    """Make the package's warnings subclasses of scikit-learn's ``ConvergenceWarning``.

    daskgmmis never imports scikit-learn (its import costs seconds and it is an
    optional dependency). A user who filters on scikit-learn's class has
    imported it, so this is called where it matters - when daskgmmis is
    imported, by the estimator, and before every warning the fit issues - and,
    if ``sklearn.exceptions`` is loaded, it puts scikit-learn's class in the
    bases of :class:`ConvergenceWarning` and :class:`DeadComponentWarning`
    (classes are mutable; both derive from ``UserWarning`` either way).

    Returns
    -------
    bool
        Whether scikit-learn's class is a base now.
    """
    sk = sys.modules.get("sklearn.exceptions")
    base = getattr(sk, "ConvergenceWarning", None)
    if base is None:
        return False
    for cls in (ConvergenceWarning, DeadComponentWarning):
        if not issubclass(cls, base):
            cls.__bases__ = (base,)
    return True


adopt_sklearn_warnings()


class PrecisionWarning(UserWarning):
    """``tol`` asks for a precision far below the Monte-Carlo error of the imputation:
    the fit converges to its own imputation sample's fixed point, which differs from
    the maximum-likelihood answer by more than that."""
