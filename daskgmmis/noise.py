"""The noise of the rows as one value type: its kind, and everything that depends on it.

A row ``x_i = v_i + e_i`` carries noise ``e_i ~ N(0, S_i)`` of one of four kinds
(docs/design.md §1.1):

========  =================  ==============================================
kind      class              raw array (data units squared)
========  =================  ==============================================
"none"    :class:`NoNoise`     ``None``
"shared"  :class:`SharedNoise` one ``(D, D)`` matrix for every row
"diag"    :class:`DiagNoise`   ``(n, D)`` variances (uncorrelated noise)
"full"    :class:`FullNoise`   ``(n, D, D)`` covariances
========  =================  ==============================================

Every decision that depends on the kind is a method of these classes (as
scikit-learn dispatches on ``covariance_type`` in one place): the rows of a subset,
the sub-matrices of an observed-feature subset, ``T = V + S``, the diagonal, a
bound on the largest eigenvalue, validation, sampling, the arrays handed to the
numba kernels and the bytes a block task holds. Callers never compare the kind
string; it survives as :attr:`Noise.kind` for files, fingerprints and messages,
and as the integer :attr:`Noise.code` for the numba kernels.

The dask boundary
-----------------
A :class:`Noise` may hold a dask array (the whole data's per-row noise, as
:func:`daskgmmis.catalog.dask_input` returns it): dask-level code reads only
:attr:`Noise.row_array` (to rechunk, persist or split into blocks),
:attr:`Noise.shared_matrix` and the class attributes. What crosses into a block
task is the *raw numpy block* of :attr:`Noise.row_array` (``None`` for kinds
without per-row noise) together with the kind string and the shared matrix; the
task wraps them back with :func:`noise_block` (or :meth:`Noise.with_rows`) and
works on a :class:`Noise` from there on. A Noise holding a dask array is never
sent to a task itself (it would carry the whole graph). Raw arrays leave a Noise
only at the numba calls (:meth:`Noise.gap_arrays`, :meth:`Noise.rowcov_arrays`)
and where a file or a user gets them back (:attr:`Noise.array`).

This module is pure numpy/numba (no dask import).
"""

from __future__ import annotations

import warnings
from typing import Callable, ClassVar

import numba
import numpy as np

from .errors import InputError

__all__ = [
    "NOISE_KINDS",
    "STORED_KINDS",
    "Noise",
    "NoNoise",
    "psd_root",
    "SharedNoise",
    "DiagNoise",
    "FullNoise",
    "noise_class",
    "kind_of",
    "noise_block",
    "per_row_noise",
    "as_noise",
]

# The order gives the integer codes of the numba kernels (kernels._gap_kernel).
NOISE_KINDS = ("none", "shared", "diag", "full")
# Kinds a catalog stores (per-row noise or none; a shared matrix is an argument of fit).
STORED_KINDS = ("none", "diag", "full")

_EMPTY2 = (0, 0)
_EMPTY3 = (0, 0, 0)


class Noise:
    """Noise covariances of a set of rows; use :meth:`of` or :func:`noise_class`.

    Attributes
    ----------
    kind : str
        ``"none"``, ``"shared"``, ``"diag"`` or ``"full"`` (class attribute).
    code : int
        Index of ``kind`` in :data:`NOISE_KINDS`, the numba kernels' code.
    per_row : bool
        Whether every row has its own noise (``"diag"``, ``"full"``).
    noisy : bool
        Whether there is any noise (every kind but ``"none"``).
    array : ndarray, dask array or None
        The raw array, see the table in the module docstring.
    """

    kind: ClassVar[str]
    code: ClassVar[int]
    per_row: ClassVar[bool] = False
    noisy: ClassVar[bool] = True

    def __init__(self, array=None):
        self.array = array

    def __repr__(self) -> str:
        shape = None if self.array is None else tuple(self.array.shape)
        return f"{type(self).__name__}(shape={shape})"

    # ------------------------------------------------------------ construction

    @staticmethod
    def of(covar, n_rows: int | None, D: int, *, warn_ambiguous: bool = False) -> "Noise":
        """The noise a ``covar`` argument describes, classified by its shape.

        Parameters
        ----------
        covar : None, ndarray or dask array
            ``None``; ``(D, D)`` shared; ``(n, D)`` diagonal variances; ``(n, D, D)``
            full covariances. A dask array is kept lazy (only its shape is read);
            a shared matrix becomes float64 numpy.
        n_rows : int or None
            Number of data rows it must match (``None``: not checked).
        D : int
            Number of features.
        warn_ambiguous : bool
            Warn when a ``(D, D)`` array with ``n_rows == D`` is read as diagonal
            variances (it could be a shared matrix).

        Returns
        -------
        Noise
            The instance of the kind's class.

        Raises
        ------
        InputError
            A shape that is none of the four kinds (or does not match ``n_rows``).

        Notes
        -----
        With ``n_rows == D`` a ``(D, D)`` array is ambiguous. A numpy array with a
        negative entry cannot hold variances and is read as a shared matrix; any
        other is read as ``(n, D)`` diagonal variances.
        """
        kind = kind_of(covar, n_rows, D, warn_ambiguous=warn_ambiguous, stacklevel=5)
        return noise_class(kind).from_array(covar)

    @classmethod
    def from_array(cls, array) -> "Noise":
        """An instance holding ``array`` (the kind's raw array, unchecked)."""
        return cls(array)

    @classmethod
    def from_block(cls, block, shared) -> "Noise":
        """The noise of one block task: its raw per-row ``block`` or the ``shared`` matrix.

        Parameters
        ----------
        block : ndarray or None
            The block of the per-row array (``None`` for kinds without one).
        shared : ndarray, shape (D, D), or None
            The shared matrix (kind ``"shared"`` only).
        """
        return cls.from_array(None if block is None else np.asarray(block))

    # --------------------------------------------------------- per-kind facts

    @classmethod
    def array_shape(cls, n: int, D: int) -> tuple | None:
        """Shape of the raw array for ``n`` rows of ``D`` features (``None``: no array)."""
        raise NotImplementedError

    @classmethod
    def row_floats(cls, D: int) -> int:
        """Numbers stored per row (0 when the noise is not per row)."""
        return 0

    @classmethod
    def task_floats(cls, D: int) -> int:
        """float64 words a block task holds per row for its noise: the block, its
        float64 copy and the validation's temporaries (see :mod:`daskgmmis.memory`)."""
        return 0

    @classmethod
    def eigen_bound(cls, max_var: np.ndarray, matrix: np.ndarray | None = None) -> float:
        """Bound on the largest eigenvalue of any row's noise from per-feature maxima.

        Parameters
        ----------
        max_var : ndarray, shape (D,)
            Largest variance ``S_jj`` per feature over the rows.
        matrix : ndarray, shape (D, D), optional
            The shared matrix when known (gives the exact value).
        """
        return float(max_var.max(initial=0.0))

    # ------------------------------------------------------------- dask level

    @property
    def row_array(self):
        """The per-row array (numpy or dask), or ``None`` for kinds without one."""
        return self.array if self.per_row else None

    @property
    def shared_matrix(self) -> np.ndarray | None:
        """The shared ``(D, D)`` matrix, or ``None`` for other kinds."""
        return None

    def with_rows(self, block) -> "Noise":
        """The same noise with the per-row array replaced by ``block`` (a block task's
        rows); kinds without per-row noise return themselves."""
        return self

    def map_rows(self, fn: Callable) -> "Noise":
        """``fn`` applied to the per-row array (rechunk, persist, ...); else ``self``."""
        return self

    # ------------------------------------------------------------- block level

    def rows(self, idx) -> "Noise":
        """The noise of a subset of rows (index array, mask or slice)."""
        return self

    def as_float64(self) -> "Noise":
        """The same noise with a float64 array."""
        return self

    def observed(self, rows, obs: np.ndarray) -> "Noise":
        """Noise of ``rows`` restricted to the observed features ``obs``.

        Parameters
        ----------
        rows : ndarray of int or None
            Row indices (``None``: all rows).
        obs : ndarray of bool, shape (D,)
            Observed features.

        Returns
        -------
        Noise
            Of the same kind; its array is ``None``, ``(d, d)``, ``(n, d)`` or
            ``(n, d, d)`` for kinds none, shared, diag and full, ``d = obs.sum()``
            (the array itself, not a copy, when every feature is observed).
        """
        return self

    def add_to(self, V: np.ndarray, n: int) -> np.ndarray:
        """``T = V + S`` for this (already observed-restricted) noise.

        Parameters
        ----------
        V : ndarray, shape (K, d, d) or (n, K, d, d)
            Component covariances on the observed features (per row when every
            row sees them through its own projection).
        n : int
            Number of rows.

        Returns
        -------
        ndarray, shape (K, d, d) (same for every row: none, shared) or (n, K, d, d)
        """
        return V

    def diagonal(self):
        """Noise variances: ``(n, D)`` per row, ``(D,)`` shared, ``None`` without noise."""
        return None

    def max_variance(self, observed: np.ndarray) -> np.ndarray:
        """Largest variance per feature over the rows that observe it (0 where none does).

        Parameters
        ----------
        observed : ndarray of bool, shape (n, D)
        """
        return np.zeros(observed.shape[1])

    def max_eigenvalue(self, observed: np.ndarray) -> float:
        """Upper bound on the largest eigenvalue of each row's noise restricted to its
        observed features, over the rows (exact for none, shared and diag noise).

        Parameters
        ----------
        observed : ndarray of bool, shape (n, D)
        """
        return 0.0

    def validate(self, x: np.ndarray | None = None, row_offset: int = 0,
                 name: str = "covar") -> None:
        """Check the noise where the rows observe features; raise naming the row.

        Diagonal variances must be finite and >= 0; full matrices finite,
        symmetric and positive semi-definite on the observed features; a shared
        matrix finite, symmetric and positive semi-definite. Entries of missing
        features may be NaN.

        Parameters
        ----------
        x : ndarray, shape (n, D), optional
            The rows' values (NaN = missing); needed for per-row kinds.
        row_offset : int
            Global index of the first row, for the message.
        name : str
            Argument name for the message.

        Raises
        ------
        InputError
        """

    def sample(self, normals: np.ndarray) -> np.ndarray:
        """Noise draws ``e_i ~ N(0, S_i)`` from standard normals.

        PSD matrices may be singular: shared and full noise are factored by their
        eigen-decomposition (negative rounding eigenvalues clipped), not Cholesky.

        Parameters
        ----------
        normals : ndarray, shape (n, D)
            Independent standard normal variates.

        Returns
        -------
        ndarray, shape (n, D)
        """
        return np.zeros_like(normals)

    def background_kwargs(self) -> dict:
        """Keyword arguments of :meth:`daskgmmis.Background.log_density` for this noise."""
        return {}

    def gap_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(S_shared, S_diag, S_full)`` float64 contiguous for ``kernels._gap_kernel``
        (the unused ones empty)."""
        return np.empty(_EMPTY2), np.empty(_EMPTY2), np.empty(_EMPTY3)

    def rowcov_arrays(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(S_full, S_diag, is_diag)`` for ``kernels._rowcov_kernel`` (per-row kinds)."""
        raise TypeError(f"{self.kind} noise is not per row")

    @staticmethod
    def concatenate(parts: list["Noise"], sizes: list[int]) -> "Noise":
        """The noise of consecutive row sets stacked, as one Noise.

        Parameters
        ----------
        parts : list of Noise
            One kind (at least one part).
        sizes : list of int
            Rows in each part (for shared noise, whose array has no row axis).

        Returns
        -------
        Noise
            Of the parts' kind; for shared matrices that differ between parts,
            :class:`FullNoise` with each part's matrix on its rows (exact).
        """
        return type(parts[0])._concatenate(parts, sizes)

    @classmethod
    def _concatenate(cls, parts, sizes):
        return parts[0]

    def stored_kind(self) -> str:
        """Kind a catalog stores this noise as (per-row; a shared matrix as variances
        when it is diagonal, else as per-row matrices)."""
        return self.kind


class NoNoise(Noise):
    """No noise: the rows are the error-free values."""

    kind, code, noisy = "none", 0, False

    @classmethod
    def array_shape(cls, n, D):
        return None


class SharedNoise(Noise):
    """One ``(D, D)`` noise covariance shared by every row (float64)."""

    kind, code = "shared", 1

    def __init__(self, array):
        super().__init__(np.asarray(array, dtype=np.float64))

    @classmethod
    def from_block(cls, block, shared):
        return cls(shared)

    @classmethod
    def array_shape(cls, n, D):
        return (D, D)

    @classmethod
    def eigen_bound(cls, max_var, matrix=None):
        if matrix is not None:
            return float(max(np.linalg.eigvalsh(np.asarray(matrix, dtype=np.float64)).max(),
                             0.0))
        # lambda_max <= trace for a PSD matrix
        return float(max_var.sum())

    @property
    def shared_matrix(self):
        return self.array

    def observed(self, rows, obs):
        return SharedNoise(self.array[np.ix_(obs, obs)])

    def add_to(self, V, n):
        return V + self.array[None]

    def diagonal(self):
        return np.diag(self.array).copy()

    def max_variance(self, observed):
        return np.where(observed.any(axis=0), np.diag(self.array), 0.0)

    def max_eigenvalue(self, observed):
        return float(max(np.linalg.eigvalsh(self.array).max(), 0.0))

    def validate(self, x=None, row_offset=0, name="covar"):
        S = self.array
        if not np.all(np.isfinite(S)):
            raise InputError(f"{name}: the shared (D, D) noise covariance has NaN or Inf; "
                             f"expected finite values.")
        scale = np.abs(S).max() + np.finfo(float).tiny
        asym = np.abs(S - S.T).max()
        if asym > 1e-8 * scale:
            raise InputError(f"{name}: the shared (D, D) noise covariance is not symmetric "
                             f"(asymmetry {asym:.3g}); expected a symmetric matrix.")
        ev = np.linalg.eigvalsh(S).min()
        if ev < -1e-12 * scale:
            raise InputError(f"{name}: the shared (D, D) noise covariance is not positive "
                             f"semi-definite (smallest eigenvalue {ev:.3g}); expected a valid "
                             f"covariance.")

    def sample(self, normals):
        return normals @ psd_root(self.array).T

    def background_kwargs(self):
        return {"noise_cov": self.array}

    def gap_arrays(self):
        return (np.ascontiguousarray(self.array, dtype=np.float64), np.empty(_EMPTY2),
                np.empty(_EMPTY3))

    @classmethod
    def _concatenate(cls, parts, sizes):
        if all(np.array_equal(p.array, parts[0].array) for p in parts):
            return parts[0]
        D = parts[0].array.shape[0]
        return FullNoise(np.concatenate([np.broadcast_to(p.array, (n, D, D))
                                         for p, n in zip(parts, sizes)]))

    def stored_kind(self):
        off = self.array - np.diag(np.diag(self.array))
        return "full" if off.any() else "diag"


class _PerRowNoise(Noise):
    """Noise with one entry per row (the leading axis of :attr:`array`)."""

    per_row = True

    def with_rows(self, block):
        return type(self)(None if block is None else np.asarray(block))

    def map_rows(self, fn):
        return type(self)(fn(self.array))

    def rows(self, idx):
        return type(self)(self.array[idx])

    def as_float64(self):
        a = self.array
        if isinstance(a, np.ndarray) and a.dtype == np.float64:
            return self
        return type(self)(np.asarray(a, dtype=np.float64))

    @classmethod
    def _concatenate(cls, parts, sizes):
        return cls(np.concatenate([p.array for p in parts]))

    def _observed_rows(self, rows):
        return self.array if rows is None else self.array[rows]


class DiagNoise(_PerRowNoise):
    """Uncorrelated per-row noise: ``(n, D)`` variances."""

    kind, code = "diag", 2

    @classmethod
    def array_shape(cls, n, D):
        return (n, D)

    @classmethod
    def row_floats(cls, D):
        return D

    @classmethod
    def task_floats(cls, D):
        return 3 * D

    def observed(self, rows, obs):
        sub = self._observed_rows(rows)
        return DiagNoise(sub if obs.all() else sub[:, obs])

    def add_to(self, V, n):
        T = np.broadcast_to(V, (n,) + V.shape[-3:]).copy()
        idx = np.arange(V.shape[-1])
        T[:, :, idx, idx] += self.array[:, None, :]
        return T

    def diagonal(self):
        return self.array

    def max_variance(self, observed):
        var = np.where(observed, np.asarray(self.array, dtype=np.float64), 0.0)
        return var.max(axis=0, initial=0.0)

    def max_eigenvalue(self, observed):
        return float(self.max_variance(observed).max(initial=0.0))

    def validate(self, x=None, row_offset=0, name="covar"):
        noise = self.array
        observed = ~np.isnan(x)
        bad = ~np.isfinite(noise) & observed
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"{name}: row {row_offset + int(i)}, column {int(j)} is "
                             f"{noise[i, j]}; expected a finite variance where the "
                             f"feature is observed.")
        neg = (noise < 0) & observed
        if neg.any():
            i, j = np.argwhere(neg)[0]
            raise InputError(f"{name}: row {row_offset + int(i)}, column {int(j)} is a "
                             f"negative variance ({noise[i, j]:.3g}); expected >= 0 "
                             f"(variances, not standard deviations with signs).")

    def sample(self, normals):
        return np.sqrt(self.array) * normals

    def background_kwargs(self):
        return {"noise_var": self.array}

    def gap_arrays(self):
        return np.empty(_EMPTY2), np.ascontiguousarray(self.array), np.empty(_EMPTY3)

    def rowcov_arrays(self):
        return np.empty(_EMPTY3), np.ascontiguousarray(self.array, dtype=np.float64), True


class FullNoise(_PerRowNoise):
    """Correlated per-row noise: ``(n, D, D)`` covariances."""

    kind, code = "full", 3

    @classmethod
    def array_shape(cls, n, D):
        return (n, D, D)

    @classmethod
    def row_floats(cls, D):
        return D * D

    @classmethod
    def task_floats(cls, D):
        return 4 * D * D

    @classmethod
    def eigen_bound(cls, max_var, matrix=None):
        # lambda_max <= trace for a PSD matrix
        return float(max_var.sum())

    def observed(self, rows, obs):
        sub = self._observed_rows(rows)
        return FullNoise(sub if obs.all() else sub[:, obs][:, :, obs])

    def add_to(self, V, n):
        T = np.broadcast_to(V, (n,) + V.shape[-3:]).copy()
        T += self.array[:, None]
        return T

    def diagonal(self):
        return np.diagonal(self.array, axis1=1, axis2=2)

    def _on_observed(self, observed):
        both = observed[:, :, None] & observed[:, None, :]
        return np.where(both, np.asarray(self.array, dtype=np.float64), 0.0)

    def max_variance(self, observed):
        var = np.where(observed, np.diagonal(np.asarray(self.array, dtype=np.float64),
                                             axis1=1, axis2=2), 0.0)
        return var.max(axis=0, initial=0.0)

    def max_eigenvalue(self, observed):
        # both the trace and the largest absolute row sum bound lambda_max
        S = self._on_observed(observed)
        diag = np.diagonal(S, axis1=1, axis2=2)
        per_row = np.minimum(diag.sum(axis=1), np.abs(S).sum(axis=2).max(axis=1, initial=0.0))
        return float(per_row.max(initial=0.0))

    def validate(self, x=None, row_offset=0, name="covar"):
        noise = self.array
        observed = ~np.isnan(x)
        pair = observed[:, :, None] & observed[:, None, :]
        bad = ~np.isfinite(noise) & pair
        if bad.any():
            i, a, b = np.argwhere(bad)[0]
            raise InputError(f"{name}: row {row_offset + int(i)} entry ({int(a)}, {int(b)}) "
                             f"is {noise[i, a, b]}; expected finite covariances where "
                             f"features are observed.")
        filled = np.where(pair, noise, 0.0).astype(np.float64, copy=False)
        asym = np.abs(filled - np.swapaxes(filled, 1, 2)).max(axis=(1, 2))
        scale = np.abs(filled).max(axis=(1, 2)) + np.finfo(float).tiny
        if (asym > 1e-8 * scale).any():
            i = int(np.argmax(asym > 1e-8 * scale))
            raise InputError(f"{name}: row {row_offset + i} is not symmetric (asymmetry "
                             f"{asym[i]:.3g}); expected a symmetric (D, D) covariance.")
        i = _first_not_psd(np.ascontiguousarray(filled), observed)
        if i >= 0:
            ev = np.linalg.eigvalsh(filled[i][np.ix_(observed[i], observed[i])]).min()
            raise InputError(f"{name}: row {row_offset + int(i)} is not positive "
                             f"semi-definite (smallest eigenvalue {ev:.3g}); expected a "
                             f"valid covariance.")

    def sample(self, normals):
        return np.einsum("nij,nj->ni", psd_root(self.array), normals)

    def background_kwargs(self):
        return {"noise_cov": self.array}

    def gap_arrays(self):
        return np.empty(_EMPTY2), np.empty(_EMPTY2), np.ascontiguousarray(self.array)

    def rowcov_arrays(self):
        return np.ascontiguousarray(self.array, dtype=np.float64), np.empty(_EMPTY2), False


_REGISTRY: dict[str, type[Noise]] = {c.kind: c for c in (NoNoise, SharedNoise, DiagNoise,
                                                          FullNoise)}
assert tuple(_REGISTRY) == NOISE_KINDS and all(
    NOISE_KINDS.index(k) == c.code for k, c in _REGISTRY.items())


def noise_class(kind: str) -> type[Noise]:
    """The class of a noise kind.

    Parameters
    ----------
    kind : {"none", "shared", "diag", "full"}

    Raises
    ------
    InputError
        An unknown kind.
    """
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise InputError(f"kind: expected one of {', '.join(map(repr, NOISE_KINDS))}; "
                         f"found {kind!r}.") from None


def noise_block(kind: str, block, shared=None) -> Noise:
    """The :class:`Noise` of one block task from what crosses the dask boundary.

    Parameters
    ----------
    kind : str
        Noise kind.
    block : ndarray or None
        The task's block of the per-row array (``None`` for none/shared).
    shared : ndarray, shape (D, D), or None
        The shared matrix (kind ``"shared"``).
    """
    return noise_class(kind).from_block(block, shared)


def per_row_noise(array) -> Noise:
    """Stored per-row noise (a catalog's) by its number of dimensions.

    Parameters
    ----------
    array : None, or (n, D) / (n, D, D) array (numpy or dask)
        ``None``: no noise; 2-D: diagonal variances; 3-D: full covariances.
    """
    if array is None:
        return NoNoise()
    return {2: DiagNoise, 3: FullNoise}[array.ndim](array)


def as_noise(noise, kind: str | None = None) -> Noise:
    """A :class:`Noise` from a Noise or from a raw array and its kind.

    Parameters
    ----------
    noise : Noise, ndarray or None
    kind : str, optional
        Required with a raw array; with a Noise it must match (or be None).
    """
    if isinstance(noise, Noise):
        if kind is not None and kind != noise.kind:
            raise InputError(f"kind: {kind!r} given with {noise.kind!r} noise.")
        return noise
    if kind is None:
        raise InputError("kind: required with a raw noise array.")
    return noise_class(kind).from_array(noise)


def kind_of(covar, n_rows: int | None, D: int, *, warn_ambiguous: bool = False,
            stacklevel: int = 4) -> str:
    """The kind of a covariance argument, by its shape (see :meth:`Noise.of`).

    Only the shape is read (a dask array stays lazy). ``stacklevel`` is that of the
    ambiguity warning, counted from this function.
    """
    if covar is None:
        return "none"
    shape = tuple(covar.shape)
    if len(shape) == 2 and shape == (D, D) and (n_rows is None or n_rows != D):
        return "shared"
    if len(shape) == 2 and shape == (D, D):
        # n_rows == D: ambiguous between shared and diagonal variances. Negative
        # covariances are common, negative variances impossible.
        if isinstance(covar, np.ndarray) and (covar < 0).any():
            return "shared"
        if warn_ambiguous and D > 1:
            warnings.warn(f"covar: shape ({D}, {D}) with {D} rows is ambiguous; read as "
                          f"({D}, {D}) diagonal variances, one row per data row. For one "
                          f"shared matrix S pass np.broadcast_to(S, ({D}, {D}, {D})).",
                          UserWarning, stacklevel=stacklevel)
        return "diag"
    if len(shape) == 2 and shape[1] == D and (n_rows is None or shape[0] == n_rows):
        return "diag"
    if len(shape) == 3 and shape[1:] == (D, D) and (n_rows is None or shape[0] == n_rows):
        return "full"
    raise InputError(
        f"covar: expected None, a shared (D, D) = ({D}, {D}) matrix, ({n_rows}, {D}) "
        f"diagonal variances or ({n_rows}, {D}, {D}) full covariances; found shape {shape}."
    )


def psd_root(S: np.ndarray) -> np.ndarray:
    """``R`` with ``R R^T = S`` for PSD (possibly singular) ``S``, by eigen-decomposition.

    Eigenvalues within rounding of zero (below ``D * eps`` times the largest of their
    matrix, either sign) are taken as zero: their square roots (~1e-8 of the scale)
    would put noise along directions where ``S`` has none, by an amount that depends
    on the LAPACK build.

    Parameters
    ----------
    S : ndarray, shape (..., D, D)
        Symmetric positive semi-definite matrices.

    Returns
    -------
    ndarray, shape (..., D, D)
    """
    w, Q = np.linalg.eigh(S)
    floor = S.shape[-1] * np.finfo(float).eps * np.abs(w).max(axis=-1, keepdims=True)
    return Q * np.sqrt(np.where(w > floor, w, 0.0))[..., None, :]


@numba.njit(nogil=True, cache=True)
def _first_not_psd(S, observed):  # pragma: no cover - compiled
    """Index of the first (n, d, d) matrix whose observed block is not PSD, or -1."""
    n, d, _ = S.shape
    L = np.empty((d, d))
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        m = idx.shape[0]
        tr = 0.0
        for a in range(m):
            tr += S[i, idx[a], idx[a]]
        if tr == 0.0:
            allzero = True
            for a in range(m):
                for b in range(m):
                    if S[i, idx[a], idx[b]] != 0.0:
                        allzero = False
            if allzero:
                continue
            return i
        # Cholesky with a relative jitter accepts PSD matrices up to rounding
        jit = 1e-12 * tr / m
        for a in range(m):
            for b in range(a + 1):
                t = S[i, idx[a], idx[b]] + (jit if a == b else 0.0)
                for c in range(b):
                    t -= L[a, c] * L[b, c]
                if a == b:
                    if not t > 0.0:
                        return i
                    L[a, a] = np.sqrt(t)
                else:
                    L[a, b] = t / L[b, b]
    return -1
