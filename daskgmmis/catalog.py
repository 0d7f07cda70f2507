"""Zarr v3 catalogs: write, open, and turn any accepted input into row-chunked dask arrays.

Layout of a catalog (a Zarr v3 group):

* ``data`` - (N, D) float32 or float64, NaN = missing feature, chunked along rows only;
* ``covar`` - optional noise: (N, D) diagonal variances or (N, D, D) full covariances,
  chunked like ``data``;
* group attributes ``daskgmmis_format`` (``"daskgmmis-catalog"``),
  ``daskgmmis_format_version``, ``columns`` (D names), ``covar_kind``
  (``"none" | "diag" | "full"``);
* array attribute ``complete_chunks`` (optional, ``true``): every chunk of the array
  is stored, none skipped as empty, so :func:`open_catalog` refuses the store when
  a chunk file is missing instead of reading the fill value.

A fit never writes into the catalog it reads. Read failures (truncated or
garbled chunk files) raise :class:`~daskgmmis.errors.CatalogError` naming the store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass

import dask.array as da
import numpy as np
import zarr

from .errors import (CatalogError, CatalogNotFoundError, DaskGMMisError, InputError,
                     InputTypeError, OutputError, StoreExistsError)
from .files import check_new_output
from .kernels import noise_kind_of
from .validation import check_shared_noise
from .neighborhoods import spatial_order

__all__ = ["Catalog", "write_catalog", "open_catalog", "install_store", "default_row_chunk", "as_dask_input",
           "CATALOG_FORMAT", "CATALOG_FORMAT_VERSION"]

CATALOG_FORMAT = "daskgmmis-catalog"
CATALOG_FORMAT_VERSION = 1

# Array attribute: every chunk of the array is stored (none skipped as empty).
_COMPLETE = {"complete_chunks": True}

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


@contextlib.contextmanager
def new_store(path, overwrite: bool):
    """A new Zarr v3 group for ``path``, in place only once the ``with`` block completes.

    The one writer of stores: a local store is written under a temporary name and
    installed by :func:`install_store` (an existing one is replaced only with
    ``overwrite``, and never lost); an fsspec URL is written in place. On an
    exception the partial store is deleted.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or fsspec URL.
    overwrite : bool

    Yields
    ------
    zarr.Group
        The new, empty group; create its arrays with :func:`complete_array`.

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is False (an :class:`OutputExistsError`).
    """
    path = os.fspath(path)
    url = _is_url(path)
    if not url:
        check_new_output(path, overwrite, exists_error=StoreExistsError)
    target = path if url else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # "w-" refuses an existing store (a URL has no temporary name to rename)
        yield zarr.open_group(target, mode="w" if url and overwrite else "w-", zarr_format=3)
    except BaseException:
        if not url:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if not url:
        try:
            install_store(target, path, overwrite)
        except OSError as e:
            if isinstance(e, DaskGMMisError):
                raise
            shutil.rmtree(target, ignore_errors=True)
            raise OutputError(f"path: cannot move the completed store into place at {path} "
                              f"({type(e).__name__}: {e}); an existing store there is "
                              f"unchanged.") from e


def complete_array(group, name: str, shape, dtype, chunks, **kwargs):
    """An array of ``group`` whose every chunk is written and marked so.

    Zarr skips chunks equal to the fill value by default, and then a deleted chunk
    file reads back as zeros without an error. Writing every chunk (and saying so
    in the ``complete_chunks`` attribute) lets a reader tell a missing chunk from
    an empty one (:func:`open_catalog` does).
    """
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks,
                              attributes=_COMPLETE, config={"write_empty_chunks": True},
                              **kwargs)


def install_store(tmp: str, path: str, overwrite: bool) -> None:
    """Move a completed local store from its temporary name to ``path``.

    An existing store at ``path`` is replaced only with ``overwrite``; it is moved
    aside first and put back if the final rename fails, so an interrupted write
    never loses it.

    Parameters
    ----------
    tmp : str
        The completed store, in the same directory as ``path``.
    path : str
        Final location.
    overwrite : bool
    """
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    if not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreExistsError(f"path: {path} appeared while writing; pass overwrite=True "
                               f"to replace it.")
    backup = f"{path}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, backup)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)         # put the old store back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


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

    if not _is_url(path):
        # before any work; a catalog is never overwritten by default
        check_new_output(path, overwrite, exists_error=StoreExistsError)
    xd = _as_source(x, dtype, (rows, D))
    cd = None if covar is None else _as_source(covar, np.float64,
                                               (rows,) + tuple(covar.shape[1:]))
    row_index = None
    if order == "spatial":
        perm = spatial_order(np.asarray(xd))
        xd = np.asarray(xd)[perm]
        if cd is not None:
            cd = np.asarray(cd)[perm]
        row_index = perm.astype(np.int64)
    try:
        with new_store(path, overwrite) as group:
            group.attrs.update({"daskgmmis_format": CATALOG_FORMAT,
                                "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                                "columns": columns, "covar_kind": kind,
                                "order": order})
            arrays = [("data", xd)] + ([("covar", cd)] if cd is not None else [])
            targets = [complete_array(group, name, arr.shape, arr.dtype,
                                      (rows,) + tuple(arr.shape[1:]))
                       for name, arr in arrays]
            for (_, arr), z in zip(arrays, targets):
                if isinstance(arr, da.Array):
                    da.store(arr, z, lock=False)
                else:
                    # in-memory input: write slabs directly rather than shipping the
                    # array through a (possibly distributed) graph
                    for start in range(0, arr.shape[0], rows):
                        z[start:start + rows] = arr[start:start + rows]
            if row_index is not None:
                complete_array(group, "row_index", row_index.shape, row_index.dtype,
                               (rows,))[:] = row_index
    except OSError as e:
        if isinstance(e, DaskGMMisError):
            raise
        # disk full, permissions...: the old catalog (if any) was never touched
        raise CatalogError(f"path: cannot write the catalog {path} ({type(e).__name__}: "
                           f"{e}); nothing was written and an existing catalog there is "
                           f"unchanged.") from e
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
    if not _is_url(path) and not os.path.isdir(path):
        raise CatalogError(f"catalog: {path} is a file; expected a Zarr catalog directory "
                           f"written by daskgmmis.write_catalog or 'daskgmmis ingest'.")
    try:
        group = zarr.open_group(path, mode="r")
    except FileNotFoundError:
        if not _is_url(path):
            raise CatalogError(f"catalog: {path} exists but is not a Zarr group (no zarr.json "
                               f"metadata); expected a catalog written by daskgmmis.") from None
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
    try:
        names = set(group.array_keys())
    except Exception as e:
        raise CatalogError(f"catalog: {path}: cannot list its arrays ({type(e).__name__}: "
                           f"{e}); the store is corrupted.") from None
    if "data" not in names:
        raise CatalogError(f"catalog: {path} has no 'data' array (found {sorted(names)}).")
    kind = attrs.get("covar_kind", "none")
    if kind not in ("none", "diag", "full"):
        raise CatalogError(f"catalog: {path} has covar_kind={kind!r}; expected 'none', 'diag' "
                           f"or 'full'. The group attributes are corrupted.")
    zdata = _open_array(group, path, "data")
    if zdata.ndim != 2:
        raise CatalogError(f"catalog: {path}/data has shape {zdata.shape}; expected (N, D).")
    if zdata.dtype not in (np.float32, np.float64):
        raise CatalogError(f"catalog: {path}/data has dtype {zdata.dtype}; expected float32 "
                           f"or float64. Re-ingest the source with daskgmmis.")
    N, D = zdata.shape
    data = _checked_dask(zdata, path, "data")
    covar = None
    if kind != "none":
        if "covar" not in names:
            raise CatalogError(f"catalog: {path} declares covar_kind={kind!r} but has no "
                               f"'covar' array.")
        zc = _open_array(group, path, "covar")
        expected = (N, D) if kind == "diag" else (N, D, D)
        if zc.shape != expected:
            raise CatalogError(f"catalog: {path}/covar has shape {zc.shape}; expected "
                               f"{expected} for covar_kind={kind!r}.")
        if zc.dtype.kind != "f":
            raise CatalogError(f"catalog: {path}/covar has dtype {zc.dtype}; expected a "
                               f"floating-point type. Re-ingest the source with daskgmmis.")
        covar = _checked_dask(zc, path, "covar").rechunk(
            (data.chunks[0],) + tuple((s,) for s in expected[1:]))
    columns = attrs.get("columns", [f"x{j}" for j in range(D)])
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise CatalogError(f"catalog: {path} has columns={columns!r}; expected a list of "
                           f"{D} names. The group attributes are corrupted.")
    if len(columns) != D:
        raise CatalogError(f"catalog: {path} names {len(columns)} columns for D={D}.")
    row_index = None
    if "row_index" in names:
        row_index = _checked_dask(_open_array(group, path, "row_index"), path, "row_index")
    return Catalog(data, covar, list(columns), path, row_index)


def _open_array(group, path: str, name: str):
    """``group[name]``; unreadable metadata or unknown codecs become a CatalogError."""
    try:
        return group[name]
    except Exception as e:  # JSON errors, unknown codecs, missing metadata...
        raise CatalogError(f"catalog: {path}/{name} cannot be opened ({type(e).__name__}: "
                           f"{e}); its metadata is corrupted or was written by an "
                           f"incompatible tool.") from None


class _CheckedZarr:
    """Read-only view of a Zarr array whose read failures name the store.

    Reads happen inside dask tasks (a fit's E-step, a posterior, a score); a
    truncated or garbled chunk file would otherwise surface as a bare codec
    error (``RuntimeError: Zstd decompression error``) that names no file.
    """

    def __init__(self, array, where: str):
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as e:
            rows = key[0] if isinstance(key, tuple) and key else key
            span = (f"rows {rows.start}..{rows.stop - 1}" if isinstance(rows, slice)
                    and rows.start is not None and rows.stop is not None else f"{key!r}")
            raise CatalogError(
                f"catalog: reading {self.where} ({span}) failed ({type(e).__name__}: {e}); "
                f"the store is corrupted or truncated (a chunk file damaged or replaced), "
                f"or could not be reached. Restore it from a copy or write it again.") from e


def _checked_dask(z, path: str, name: str) -> da.Array:
    """Dask array over Zarr array ``z`` (as da.from_zarr) with checked reads.

    An array whose attributes carry ``complete_chunks`` was written with every
    chunk stored, so a missing chunk file was deleted: refused here, at open.
    """
    from dask.base import tokenize

    if z.attrs.get("complete_chunks") is True and z.nchunks_initialized < z.nchunks:
        missing = []
        try:        # name the first missing chunk files (local stores; zarr internals)
            if not _is_url(path):
                missing = [k for k in (z.metadata.encode_chunk_key(c)
                                       for c in z._iter_chunk_coords())
                           if not os.path.exists(os.path.join(path, name, k))][:5]
        except Exception:
            missing = []
        raise CatalogError(
            f"catalog: {path}/{name} has {z.nchunks_initialized} of its {z.nchunks} chunks"
            + (f" (missing: {', '.join(f'{name}/{k}' for k in missing)})" if missing else "")
            + "; chunk files were deleted or a copy was interrupted. Restore the store "
              "from a copy or write it again.")
    view = _CheckedZarr(z, f"{path}/{name}")
    return da.from_array(view, chunks=z.chunks, name="from-zarr-" + tokenize(z, z.chunks),
                         meta=np.empty((0,) * z.ndim, dtype=z.dtype), asarray=True,
                         fancy=False)


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
    if covar is not None and not hasattr(covar, "dask"):
        covar = _check_array(covar, "covar", ndim=(2, 3))
    kind = noise_kind_of(covar, N, D, warn_ambiguous=True)
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
        check_shared_noise(noise, "covar")
    elif kind in ("diag", "full"):
        c = covar if hasattr(covar, "dask") else _check_array(covar, "covar", ndim=(2, 3))
        noise = da.asarray(c).rechunk((x.chunks[0],) + tuple((s,) for s in c.shape[1:]))
    return x, noise, kind
