"""Input checks shared by the public entry points and the first data pass.

Checks that need the data itself run inside block tasks (fused into the first
pass, never an extra read) and name the global row and column that failed.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, InputTypeError
from .background import Background
from .noise import SharedNoise, noise_class

__all__ = [
    "check_model_params",
    "check_data_block",
    "check_weights_block",
    "check_projection_shape",
    "check_projection_block",
    "check_noise_block",
    "check_shared_noise",
    "check_numeric",
    "as_index_array",
    "check_background",
    "check_regularization",
]

# w is a length: w**2 is added to every covariance. Above this its square is
# within a few orders of magnitude of float64's largest number, and the M-step's
# sums and determinants overflow.
MAX_W = 1e150


def is_dask(a) -> bool:
    """Whether ``a`` is a dask collection with chunks (a dask array), by duck typing."""
    return hasattr(a, "dask") and hasattr(a, "chunks")


def check_numeric(arr, name: str) -> np.ndarray:
    """``arr`` as an array of a real numeric dtype (integers or floats).

    Booleans, complex numbers, strings and objects are refused rather than
    silently cast (a complex cast drops the imaginary part; ``True`` is not a
    coordinate).

    Parameters
    ----------
    arr : array_like
    name : str
        Argument name for the message.

    Raises
    ------
    InputTypeError
        The values are not real numbers.
    """
    try:
        a = arr if hasattr(arr, "dtype") and hasattr(arr, "shape") else np.asarray(arr)
    except (TypeError, ValueError) as e:   # ragged nested lists
        raise InputTypeError(f"{name}: expected a numeric array; found {type(arr).__name__} "
                             f"that numpy cannot convert ({e}).") from None
    if a.dtype.kind not in "fiu":
        raise InputTypeError(f"{name}: expected a numeric array (floats or integers); found "
                             f"dtype {a.dtype}.")
    return a


def check_shared_noise(noise: np.ndarray, name: str = "covar") -> None:
    """Check one shared (D, D) noise covariance: finite, symmetric, PSD.

    Parameters
    ----------
    noise : ndarray, shape (D, D)
    name : str
        Argument name for the message.

    Notes
    -----
    :meth:`daskgmmis.noise.SharedNoise.validate` does the work.
    """
    SharedNoise(noise).validate(name=name)


# Tolerance of the amplitudes' sum: a fitted model sums to 1 within ~1e-12; a
# model written by hand with rounded amplitudes (0.333, 0.333, 0.334) passes.
AMP_SUM_TOL = 1e-6


def check_model_params(amp, mean, covar, *, where: str = "gmm",
                       bg_amp: float | None = None) -> None:
    """Check the shapes and values of mixture parameters, and what they mean.

    The amplitudes are finite, non-negative and sum to 1 within
    :data:`AMP_SUM_TOL`, the background's share included: with ``bg_amp`` given,
    ``sum(amp) + bg_amp = 1`` (a background-only model has zero amplitudes);
    without, ``0 < sum(amp) <= 1`` (a model fitted
    with a background, used without it, describes its Gaussian part).

    Parameters
    ----------
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
    where : str
        Name of the object in error messages.
    bg_amp : float, optional
        Amplitude of the background the model is used (or was saved) with.

    Raises
    ------
    InputError
        Wrong shapes, non-finite values, negative amplitudes, amplitudes that do
        not sum to 1, or covariances that are not symmetric positive definite
        (the component is named).
    """
    amp, mean, covar = (np.asarray(a) for a in (amp, mean, covar))
    if amp.ndim != 1 or amp.shape[0] < 1:
        raise InputError(f"{where}.amp: expected shape (K,) with K >= 1; found {amp.shape}.")
    K = amp.shape[0]
    if mean.ndim != 2 or mean.shape[0] != K or mean.shape[1] < 1:
        raise InputError(f"{where}.mean: expected shape (K, D) = ({K}, D); found {mean.shape}.")
    D = mean.shape[1]
    if covar.shape != (K, D, D):
        raise InputError(f"{where}.covar: expected shape (K, D, D) = ({K}, {D}, {D}); "
                         f"found {covar.shape}.")
    for name, arr in (("amp", amp), ("mean", mean), ("covar", covar)):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{where}.{name}: expected finite values; found NaN or Inf.")
    if (amp < 0).any():
        raise InputError(f"{where}.amp: expected non-negative amplitudes; found "
                         f"{amp.min():.3g} at component {int(amp.argmin())}.")
    total = float(amp.sum())
    if bg_amp is None and not total > 0:
        raise InputError(f"{where}.amp: every amplitude is zero; expected at least one "
                         f"positive amplitude (amplitudes summing to 1).")
    if bg_amp is not None and abs(total + float(bg_amp) - 1.0) > AMP_SUM_TOL:
        raise InputError(f"{where}.amp: the amplitudes sum to {total:.6g} and the background's "
                         f"to {float(bg_amp):.6g}; expected a total of 1 (within "
                         f"{AMP_SUM_TOL:g}). Normalize them: amp * (1 - bg_amp) / amp.sum().")
    if bg_amp is None and total > 1.0 + AMP_SUM_TOL:
        raise InputError(f"{where}.amp: the amplitudes sum to {total:.6g}; expected a sum of 1 "
                         f"(within {AMP_SUM_TOL:g}; less when a background holds the rest). "
                         f"Normalize them: amp / amp.sum().")
    asym = np.abs(covar - np.swapaxes(covar, 1, 2)).max(axis=(1, 2))
    scale = np.abs(covar).max(axis=(1, 2)) + np.finfo(float).tiny
    if (asym > 1e-8 * scale).any():
        k = int(np.argmax(asym / scale))
        raise InputError(f"{where}.covar[{k}]: expected a symmetric matrix; found an "
                         f"asymmetry of {asym[k]:.3g}.")
    for k in range(K):
        try:
            np.linalg.cholesky(covar[k])
        except np.linalg.LinAlgError:
            raise InputError(
                f"{where}.covar[{k}]: expected a positive-definite matrix; its smallest "
                f"eigenvalue is {np.linalg.eigvalsh(covar[k]).min():.3g}."
            ) from None


def check_data_block(x: np.ndarray, row_offset: int, name: str = "data", *,
                     allow_empty: bool = False) -> None:
    """Reject Inf values and rows with every feature missing.

    Parameters
    ----------
    x : ndarray, shape (n, D)
    row_offset : int
        Global index of the block's first row.
    name : str
        Argument name for the message.
    allow_empty : bool
        Accept rows with every feature missing (densities report NaN for them).
    """
    inf = np.isinf(x)
    if inf.any():
        i, j = np.argwhere(inf)[0]
        raise InputError(
            f"{name}: row {row_offset + int(i)}, column {int(j)} is {x[i, j]}; expected a "
            f"finite value or NaN (missing). Found {int(inf.sum())} infinite entries in "
            f"rows {row_offset}..{row_offset + len(x) - 1}.")
    if allow_empty:
        return
    empty = np.isnan(x).all(axis=1)
    if empty.any():
        i, where = _first_bad(empty, row_offset)
        raise InputError(
            f"{name}: row {row_offset + i} has every feature missing (all NaN); "
            f"{where}. Drop them before fitting: they carry no information.")


def _first_bad(bad: np.ndarray, row_offset: int) -> tuple[int, str]:
    """(index of the block's first bad row, "N such rows in rows a..b") for messages."""
    return (int(np.flatnonzero(bad)[0]),
            f"{int(bad.sum())} such rows in rows {row_offset}..{row_offset + len(bad) - 1}")


def check_weights_block(weights: np.ndarray, row_offset: int, name: str = "weights"
                        ) -> np.ndarray:
    """Per-row weights of a block as float64: finite and >= 0.

    A row of weight ``w`` counts as ``w`` rows in every sum of a fit (an integer
    weight is the same as duplicating the row); weight 0 leaves the row out.

    Parameters
    ----------
    weights : ndarray, shape (n,)
    row_offset : int
        Global index of the block's first row, for the message.
    name : str
        Argument name for the message.

    Returns
    -------
    ndarray, shape (n,), float64
    """
    w = np.asarray(weights)
    if w.ndim != 1 or w.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected one real number per row, shape (N,); found "
                         f"shape {w.shape} and dtype {w.dtype}.")
    w = w.astype(np.float64, copy=False)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i, where = _first_bad(bad, row_offset)
        raise InputError(
            f"{name}: row {row_offset + i} has weight {w[i]}; expected a finite weight >= 0 "
            f"(0 leaves the row out); {where}.")
    return w


def check_noise_block(noise: np.ndarray, kind: str, x: np.ndarray, row_offset: int,
                      name: str = "covar") -> None:
    """Check per-row noise covariances of a block (only where features are observed).

    Entries belonging to missing features may be NaN. Diagonal variances must be
    >= 0; full matrices symmetric positive semi-definite.

    Parameters
    ----------
    noise : ndarray, shape (n, D) or (n, D, D)
    kind : {"diag", "full"}
    x : ndarray, shape (n, D)
        The rows' values (NaN = missing).
    row_offset : int
        Global index of the first row.
    name : str
        Argument name for the message.

    Notes
    -----
    :meth:`daskgmmis.noise.Noise.validate` of the kind does the work.
    """
    noise_class(kind).from_array(noise).validate(x, row_offset, name)


def as_index_array(idx, K: int, name: str) -> np.ndarray:
    """Component indices as a sorted unique int array, checked against K.

    Parameters
    ----------
    idx : int, sequence of int, or boolean mask of length K
    K : int
    name : str
        Argument name for the message.
    """
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (K,):
            raise InputError(f"{name}: a boolean mask must have shape ({K},); found {arr.shape}.")
        return np.flatnonzero(arr)
    arr = np.atleast_1d(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputTypeError(f"{name}: expected integer component indices; found dtype "
                             f"{arr.dtype}.")
    arr = arr.astype(np.int64).ravel()
    if arr.size and (arr.min() < -K or arr.max() >= K):
        raise InputError(f"{name}: component indices must lie in [0, {K}); found "
                         f"{arr.min()}..{arr.max()}.")
    return np.unique(arr % K) if arr.size else arr


def check_background(background, D: int, against: str = "data") -> None:
    """Check an optional ``background`` argument against the problem's dimension.

    Parameters
    ----------
    background : Background or None
    D : int
        Number of features it must have.
    against : str
        What D belongs to, for the message (``"data"``, ``"gmm"``, ...).
    """

    if background is None:
        return
    if not isinstance(background, Background):
        raise InputTypeError(f"background: expected a daskgmmis.Background or None; found "
                             f"{type(background).__name__}.")
    if background.D != D:
        raise InputError(f"background: footprint has D={background.D}; {against} has D={D}.")


def check_regularization(w) -> None:
    """``w`` (a length; ``w**2`` is added to each covariance) squares to a finite number.

    Parameters
    ----------
    w : float
        Already checked to be a finite number >= 0.
    """
    if w > MAX_W:
        raise InputError(f"w: {w!r} squared (the variance added to every covariance) "
                         f"overflows float64; expected w <= {MAX_W:g} in data units (a "
                         f"regularization is a small fraction of the data's spread).")


def check_projection_shape(shape: tuple, N: int, d: int, D: int,
                           name: str = "projection") -> bool:
    """Check the shape of a projection argument; return whether it is per row.

    Rows observe ``y_i = R_i v_i + e_i`` (docs/design.md §1.1): ``R`` is one shared
    ``(d, D)`` matrix or one ``(N, d, D)`` matrix per row, ``d`` the data's columns,
    ``D`` the model's dimension, ``d <= D``.

    Parameters
    ----------
    shape : tuple
        Shape of the projection array.
    N, d : int
        Rows and columns of the data.
    D : int
        Dimension of the model.
    name : str
        Argument name for the message.

    Returns
    -------
    bool
        True for per-row matrices (N, d, D), False for one shared (d, D).

    Raises
    ------
    InputError
        Any other shape, or ``d > D``.
    """
    shape = tuple(int(s) for s in shape)
    if d > D:
        raise InputError(f"{name}: the data have d={d} columns but the model only D={D} "
                         f"dimensions; a projection maps D dimensions to d <= D.")
    if shape == (d, D):
        return False
    if shape == (N, d, D):
        return True
    raise InputError(f"{name}: expected one shared matrix of shape ({d}, {D}) or one per row, "
                     f"({N}, {d}, {D}) (data columns d={d}, model dimension D={D}); found "
                     f"shape {shape}.")


def check_projection_block(R: np.ndarray, x: np.ndarray, row_offset: int,
                           name: str = "projection") -> np.ndarray:
    """A block of projection matrices as float64, finite where the rows are observed.

    Row ``a`` of ``R_i`` maps the model to entry ``a`` of ``y_i``; where ``y_i[a]`` is
    NaN (missing, or padding of a row seen in fewer dimensions) that row of ``R_i`` is
    not used and may be NaN. A shared ``(d, D)`` matrix must be finite everywhere.

    Parameters
    ----------
    R : ndarray, shape (d, D) or (n, d, D)
    x : ndarray, shape (n, d)
        The block's rows (NaN = missing).
    row_offset : int
        Global index of the block's first row, for the message.
    name : str
        Argument name for the message.

    Returns
    -------
    ndarray, float64, same shape as ``R``
    """
    R = np.asarray(R)
    if R.dtype.kind not in "biuf":
        raise InputTypeError(f"{name}: expected real numbers; found dtype {R.dtype}.")
    R = R.astype(np.float64, copy=False)
    if R.ndim == 2:
        bad = ~np.isfinite(R)
        if bad.any():
            a, c = np.argwhere(bad)[0]
            raise InputError(f"{name}: entry ({int(a)}, {int(c)}) of the shared matrix is "
                             f"{R[a, c]}; expected finite numbers (a row of y that is NaN "
                             f"selects out its row of R; pass per-row matrices to pad them "
                             f"with NaN).")
        return R
    used = ~np.isnan(np.asarray(x))[:, :, None]
    bad = used & ~np.isfinite(R)
    if bad.any():
        i, a, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"{name}: row {row_offset + i}, entry ({a}, {c}) is {R[i, a, c]} where the row "
            f"observes y[{a}]; expected finite numbers (only the rows of R_i at NaN entries "
            f"of y_i may be NaN). Found {int(bad.any(axis=(1, 2)).sum())} such rows in rows "
            f"{row_offset}..{row_offset + len(R) - 1}.")
    return R
