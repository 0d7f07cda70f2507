"""Zarr v3 catalogs: write, open, and turn any accepted input into row-chunked dask arrays.

Layout of a catalog (a Zarr v3 group):

* ``data`` - (N, D) float32 or float64, NaN = missing feature, chunked along rows only;
* ``covar`` - optional noise: (N, D) diagonal variances or (N, D, D) full covariances,
  chunked like ``data``;
* group attributes ``daskgmmis_format`` (``"daskgmmis-catalog"``),
  ``daskgmmis_format_version``, ``columns`` (D names), ``covar_kind``
  (``"none" | "diag" | "full"``).

A fit never writes into the catalog it reads.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass

import dask.array as da
import numpy as np
import zarr

from .errors import CatalogError, CatalogNotFoundError, InputError, InputTypeError
from .kernels import noise_kind_of

__all__ = ["Catalog", "write_catalog", "open_catalog", "default_row_chunk", "as_dask_input",
           "CATALOG_FORMAT", "CATALOG_FORMAT_VERSION"]

CATALOG_FORMAT = "daskgmmis-catalog"
CATALOG_FORMAT_VERSION = 1

# Block size target: big enough that the ~1 ms per-task scheduler cost is noise,
# small enough for a few blocks per core at 10^6 rows.
_BLOCK_BYTES = 8 * 2**20
_MIN_ROWS = 16_384


def default_row_chunk(N: int, D: int, covar_kind: str = "none") -> int:
    """Rows per block for a catalog of N rows, a function of the shape only.

    Depending only on (N, D, covar_kind) makes numpy, dask and Zarr inputs of the
    same data chunk alike, so fits agree bit for bit whatever the input type.

    Parameters
    ----------
    N, D : int
    covar_kind : str

    Returns
    -------
    int
        Rows per block (at least 1).
    """
    per_row = 8 * D * {"none": 1, "shared": 1, "diag": 2, "full": 1 + D}[covar_kind]
    rows = max(_MIN_ROWS, _BLOCK_BYTES // per_row)
    # at least ~8 blocks for parallelism when the catalog is not tiny
    rows = min(rows, max(_MIN_ROWS, -(-N // 8)))
    return int(max(1, min(rows, N)))


@dataclass
class Catalog:
    """An opened catalog.

    Attributes
    ----------
    data : dask array, shape (N, D)
        Feature values (NaN = missing), chunked along rows.
    covar : dask array or None
        Noise covariances: (N, D) diagonal variances or (N, D, D).
    columns : list of str
        Feature names, length D.
    path : str or None
        Where the catalog lives.
    row_index : dask array or None, shape (N,)
        Original row index when the rows were reordered (``order="spatial"``).
    """

    data: da.Array
    covar: da.Array | None
    columns: list
    path: str | None = None
    row_index: da.Array | None = None

    @property
    def covar_kind(self) -> str:
        if self.covar is None:
            return "none"
        return "diag" if self.covar.ndim == 2 else "full"

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return (f"Catalog(path={self.path!r}, N={self.data.shape[0]}, D={self.data.shape[1]}, "
                f"covar_kind={self.covar_kind!r}, chunks={self.data.chunksize[0]} rows)")


def _is_url(path: str) -> bool:
    return "://" in path


def _check_array(arr, name, ndim=None):
    if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
        arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise InputTypeError(f"{name}: expected a numeric array; found dtype {arr.dtype}.")
    if ndim is not None and arr.ndim not in ndim:
        raise InputError(f"{name}: expected {' or '.join(f'{d}-D' for d in ndim)}; found shape "
                         f"{arr.shape}.")
    return arr


def _as_source(arr, dtype, chunks):
    """Dask input stays lazy (rechunked); anything else becomes a numpy array."""
    if isinstance(arr, da.Array):
        return arr.astype(dtype).rechunk(chunks)
    return np.asarray(arr, dtype=dtype)


def write_catalog(path, data, covar=None, *, chunks: int | None = None, columns=None,
                  order: str = "input", overwrite: bool = False) -> Catalog:
    """Write a catalog to a Zarr v3 store.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or fsspec URL of the new store.
    data : array_like or dask array, shape (N, D)
        Feature values, NaN = missing. float32 is kept; other types become float64.
    covar : array_like or dask array, optional
        (N, D) diagonal variances or (N, D, D) full covariances (data units squared).
    chunks : int, optional
        Rows per chunk (default :func:`default_row_chunk`).
    columns : sequence of str, optional
        Feature names (default ``x0 .. x{D-1}``).
    order : {"input", "spatial"}
        ``"spatial"`` stores rows in Morton order of their observed features and
        keeps the original index in array ``row_index``.
    overwrite : bool
        Replace an existing store; otherwise an existing path is an error.

    Returns
    -------
    Catalog
        The written catalog, opened.
    """
    path = os.fspath(path)
    x = _check_array(data, "data", ndim=(2,))
    N, D = x.shape
    if N < 1 or D < 1:
        raise InputError(f"data: expected at least one row and one column; found shape {x.shape}.")
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    kind = "none"
    if covar is not None:
        covar = _check_array(covar, "covar", ndim=(2, 3))
        kind = noise_kind_of(covar, N, D)
        if kind == "shared":
            raise InputError("covar: a catalog stores per-row noise, (N, D) or (N, D, D); "
                             "pass a shared (D, D) matrix to fit() instead.")
    if columns is None:
        columns = [f"x{j}" for j in range(D)]
    columns = [str(c) for c in columns]
    if len(columns) != D:
        raise InputError(f"columns: expected {D} names; found {len(columns)}.")
    if order not in ("input", "spatial"):
        raise InputError(f"order: expected 'input' or 'spatial'; found {order!r}.")
    rows = int(chunks) if chunks is not None else default_row_chunk(N, D, kind)
    if rows < 1:
        raise InputError(f"chunks: expected a positive number of rows; found {chunks}.")

    exists = os.path.exists(path) if not _is_url(path) else False
    if exists and not overwrite:
        raise CatalogError(f"path: {path} exists; pass overwrite=True to replace it "
                           f"(a catalog is never overwritten by default).")
    target = path if _is_url(path) else f"{path}.tmp-{uuid.uuid4().hex[:8]}"

    xd = _as_source(x, dtype, (rows, D))
    cd = None if covar is None else _as_source(covar, np.float64,
                                               (rows,) + tuple(covar.shape[1:]))
    row_index = None
    if order == "spatial":
        from .neighborhoods import spatial_order
        perm = spatial_order(np.asarray(xd))
        xd = np.asarray(xd)[perm]
        if cd is not None:
            cd = np.asarray(cd)[perm]
        row_index = perm.astype(np.int64)
    try:
        group = zarr.open_group(target, mode="w-" if not _is_url(path) or not overwrite else "w",
                                zarr_format=3)
        group.attrs.update({"daskgmmis_format": CATALOG_FORMAT,
                            "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                            "columns": columns, "covar_kind": kind,
                            "order": order})
        arrays = [("data", xd)] + ([("covar", cd)] if cd is not None else [])
        targets = []
        for name, arr in arrays:
            z = group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                                   chunks=(rows,) + tuple(arr.shape[1:]))
            targets.append(z)
        for (_, arr), z in zip(arrays, targets):
            if isinstance(arr, da.Array):
                da.store(arr, z, lock=False)
            else:
                # in-memory input: write slabs directly rather than shipping the
                # array through a (possibly distributed) graph
                for start in range(0, arr.shape[0], rows):
                    z[start:start + rows] = arr[start:start + rows]
        if row_index is not None:
            group.create_array("row_index", data=row_index, chunks=(rows,))
    except BaseException:
        if not _is_url(path):
            shutil.rmtree(target, ignore_errors=True)
        raise
    if not _is_url(path):
        if exists:
            backup = f"{path}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, backup)
            os.rename(target, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(target, path)
    return open_catalog(path)


def open_catalog(path) -> Catalog:
    """Open a catalog written by :func:`write_catalog`.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or fsspec URL (``s3://...`` where the filesystem package is
        installed).

    Returns
    -------
    Catalog

    Raises
    ------
    CatalogNotFoundError
        Nothing at ``path``.
    CatalogError
        ``path`` is not a daskgmmis catalog, is of another format version, or its
        arrays are inconsistent.
    """
    path = os.fspath(path)
    if not _is_url(path) and not os.path.exists(path):
        raise CatalogNotFoundError(f"catalog: {path} does not exist; expected a Zarr catalog "
                                   f"written by daskgmmis.write_catalog or 'daskgmmis ingest'.")
    try:
        group = zarr.open_group(path, mode="r")
    except FileNotFoundError:
        raise CatalogNotFoundError(f"catalog: {path} does not exist.") from None
    except Exception as e:  # zarr raises several types for non-zarr content
        raise CatalogError(f"catalog: {path} is not a Zarr group ({type(e).__name__}: {e}); "
                           f"expected a catalog written by daskgmmis.") from None
    attrs = dict(group.attrs)
    if attrs.get("daskgmmis_format") != CATALOG_FORMAT:
        raise CatalogError(f"catalog: {path} is a Zarr group but not a daskgmmis catalog "
                           f"(attribute daskgmmis_format is {attrs.get('daskgmmis_format')!r}).")
    if attrs.get("daskgmmis_format_version") != CATALOG_FORMAT_VERSION:
        raise CatalogError(f"catalog: {path} has format version "
                           f"{attrs.get('daskgmmis_format_version')!r}; this daskgmmis reads "
                           f"version {CATALOG_FORMAT_VERSION}.")
    names = set(group.array_keys())
    if "data" not in names:
        raise CatalogError(f"catalog: {path} has no 'data' array (found {sorted(names)}).")
    zdata = group["data"]
    if zdata.ndim != 2:
        raise CatalogError(f"catalog: {path}/data has shape {zdata.shape}; expected (N, D).")
    N, D = zdata.shape
    data = da.from_zarr(zdata)
    covar = None
    kind = attrs.get("covar_kind", "none")
    if kind != "none":
        if "covar" not in names:
            raise CatalogError(f"catalog: {path} declares covar_kind={kind!r} but has no "
                               f"'covar' array.")
        zc = group["covar"]
        expected = (N, D) if kind == "diag" else (N, D, D)
        if zc.shape != expected:
            raise CatalogError(f"catalog: {path}/covar has shape {zc.shape}; expected "
                               f"{expected} for covar_kind={kind!r}.")
        covar = da.from_zarr(zc).rechunk((data.chunks[0],) + tuple((s,) for s in expected[1:]))
    columns = list(attrs.get("columns", [f"x{j}" for j in range(D)]))
    if len(columns) != D:
        raise CatalogError(f"catalog: {path} names {len(columns)} columns for D={D}.")
    row_index = da.from_zarr(group["row_index"]) if "row_index" in names else None
    return Catalog(data, covar, columns, path, row_index)


def as_dask_input(data, covar=None):
    """Resolve the ``data``/``covar`` arguments of fit-like functions.

    Parameters
    ----------
    data : array_like, dask array, Catalog, or str / os.PathLike (catalog path or URL)
    covar : None or array
        Ignored (must be None) when ``data`` is a catalog, which carries its own.

    Returns
    -------
    x : dask array, shape (N, D)
        Row-chunked, one chunk across columns.
    noise : None, ndarray (D, D), or dask array (N, D) / (N, D, D) chunked like ``x``
    kind : str
        Noise kind.
    """
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    if isinstance(data, Catalog):
        if covar is not None:
            raise InputError("covar: the catalog carries its own noise covariances; pass "
                             "covar=None when data is a catalog.")
        x, covar = data.data, data.covar
    elif hasattr(data, "dask") and hasattr(data, "chunks"):
        x = data
    else:
        x = None
        arr = _check_array(data, "data", ndim=(2,))
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.float64)
        x = arr
    if x.ndim != 2:
        raise InputError(f"data: expected shape (N, D); found {x.shape}.")
    if x.dtype.kind not in "fiu":
        raise InputTypeError(f"data: expected a numeric array; found dtype {x.dtype}.")
    N, D = x.shape
    if N < 1 or D < 1:
        raise InputError(f"data: expected at least one row and one feature; found {x.shape}.")
    kind = noise_kind_of(covar, N, D)
    if isinstance(x, np.ndarray):
        rows = default_row_chunk(N, D, kind)
        x = da.from_array(x, chunks=(rows, D))
    else:
        x = x.rechunk({1: -1})
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)
    noise = None
    if kind == "shared":
        noise = np.asarray(covar, dtype=np.float64)
        if not np.all(np.isfinite(noise)):
            raise InputError("covar: the shared (D, D) noise covariance has NaN or Inf.")
        if np.abs(noise - noise.T).max() > 1e-8 * (np.abs(noise).max() + 1e-300):
            raise InputError("covar: the shared (D, D) noise covariance is not symmetric.")
        if np.linalg.eigvalsh(noise).min() < -1e-12 * max(np.abs(noise).max(), 1e-300):
            raise InputError("covar: the shared (D, D) noise covariance is not positive "
                             f"semi-definite (smallest eigenvalue "
                             f"{np.linalg.eigvalsh(noise).min():.3g}).")
    elif kind in ("diag", "full"):
        c = covar if hasattr(covar, "dask") else _check_array(covar, "covar", ndim=(2, 3))
        noise = da.asarray(c).rechunk((x.chunks[0],) + tuple((s,) for s in c.shape[1:]))
    return x, noise, kind
