"""Zarr v3 catalogs: write, open, and turn any accepted input into row-chunked dask arrays.

Layout of a catalog (a Zarr v3 group):

* ``data`` - (N, D) float32 or float64, NaN = missing feature, chunked along rows only;
* ``covar`` - optional noise: (N, D) diagonal variances or (N, D, D) full covariances,
  chunked like ``data``;
* ``ids`` - optional (N,) row identifiers, int64 or strings, carried with the rows
  (in any row order) so that every per-row output can be joined back to the
  user's table; group attribute ``id_name`` is the identifier column's name;
* ``weights`` - optional (N,) float64 per-row weights >= 0: a row of weight w
  counts as w rows in a fit and in the scores (0 leaves it out);
* ``projection`` - optional float64 projection matrices (Bovy's ``projection``):
  one shared ``(d, D)`` matrix or one ``(N, d, D)`` per row (chunked like ``data``),
  rows observing ``y_i = R_i v_i + e_i`` of a D-dimensional model (``data`` has d
  columns; NaN rows of ``R_i`` where ``y_i`` is NaN, docs/design.md §1.1);
* ``row_index`` - (N,) int64, the row's position in the input, when the rows were
  reordered (``order="spatial"``);
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
from .noise import STORED_KINDS, Noise, kind_of, noise_class, per_row_noise
from .validation import check_projection_block, check_projection_shape, check_weights_block
from .neighborhoods import spatial_order
from .memory import machine_memory_limit

__all__ = ["Catalog", "write_catalog", "open_catalog", "install_store", "default_row_chunk",
           "as_dask_input", "as_dask_weights", "as_dask_projection", "dask_input", "check_ids", "check_not_input",
           "stores_read_by",
           "CATALOG_FORMAT", "CATALOG_FORMAT_VERSION"]

CATALOG_FORMAT = "daskgmmis-catalog"
CATALOG_FORMAT_VERSION = 1

# Array attribute: every chunk of the array is stored (none skipped as empty).
_COMPLETE = {"complete_chunks": True}

# Block size target: big enough that the ~1 ms per-task scheduler cost is noise,
# small enough for a few blocks per core at 10^6 rows.
_BLOCK_BYTES = 8 * 2**20
_MIN_ROWS = 16_384
# A pass costs the scheduler and the driver a few ms per block whatever the number
# of cores (measured: benchmarks/bench_scale.py, docs/design.md §4.1), so beyond
# ~4,000 blocks the blocks grow instead (up to 64 MiB each): 10^9 rows stay at
# ~4,000 blocks, 10^10 rows at ~6,000-12,000 rather than 50,000-100,000.
_MAX_BLOCKS = 4096
_MAX_BLOCK_BYTES = 64 * 2**20


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
    per_row = 8 * (D + noise_class(covar_kind).row_floats(D))
    rows = max(_MIN_ROWS, _BLOCK_BYTES // per_row)
    # few enough blocks that the per-block scheduling cost stays a small share
    rows = max(rows, min(-(-N // _MAX_BLOCKS), _MAX_BLOCK_BYTES // per_row))
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
    ids : dask array or None, shape (N,)
        Row identifiers (int64 or strings) carried with the rows.
    id_name : str or None
        Name of the identifier column (e.g. ``"source_id"``).
    weights : dask array or None, shape (N,)
        Per-row weights (float64, >= 0), used by every fit and score of the catalog.
    projection : ndarray (d, D), dask array (N, d, D), or None
        Projection matrices of the rows (``data`` holds ``y_i = R_i v_i + e_i`` of a
        D-dimensional model), used by every fit, score and posterior of the catalog.
    """

    data: da.Array
    covar: da.Array | None
    columns: list
    path: str | None = None
    row_index: da.Array | None = None
    ids: da.Array | None = None
    id_name: str | None = None
    weights: da.Array | None = None
    projection: object = None

    def row_keys(self) -> dict:
        """The column that joins a per-row output back to the user's table.

        Returns
        -------
        dict
            ``{id_name: ids}`` when the catalog carries identifiers, else
            ``{"row": position of each row in the input table}`` (its
            ``row_index`` for a catalog in spatial order); one lazy (N,) array,
            chunked like :attr:`data`.
        """
        if self.ids is not None:
            return {self.id_name or "id": self.ids.rechunk({0: self.data.chunks[0]})}
        if self.row_index is not None:
            return {"row": self.row_index.rechunk({0: self.data.chunks[0]})}
        return {"row": da.arange(self.data.shape[0], chunks=self.data.chunks[0],
                                 dtype=np.int64)}

    @property
    def covar_kind(self) -> str:
        """Kind of the stored noise (``"none"``, ``"diag"`` or ``"full"``)."""
        return self.noise.kind

    @property
    def noise(self) -> Noise:
        """The stored noise as a :class:`~daskgmmis.noise.Noise` (lazy per-row array)."""
        return per_row_noise(self.covar)

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        ids = f", ids={self.id_name!r}" if self.ids is not None else ""
        ids += ", weights" if self.weights is not None else ""
        ids += (f", projection={tuple(self.projection.shape)}" if self.projection is not None
                else "")
        return (f"Catalog(path={self.path!r}, N={self.data.shape[0]}, D={self.data.shape[1]}, "
                f"covar_kind={self.covar_kind!r}, chunks={self.data.chunksize[0]} rows{ids})")


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
    an empty one (:func:`open_catalog` does). Text (numpy ``U``, object or
    ``StringDType`` arrays: identifiers) is stored as Zarr v3's variable-length
    UTF-8 strings, which have a specification, not as fixed-width UTF-32.
    """
    if np.dtype(dtype).kind in "UOT":
        dtype = str
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks,
                              attributes=_COMPLETE, config={"write_empty_chunks": True},
                              **kwargs)


def _resolved(path) -> str:
    """``path`` with symlinks, ``..`` and relative parts resolved (URLs: as written,
    without a trailing slash)."""
    path = os.fspath(path)
    if _is_url(path):
        return path.rstrip("/")
    return os.path.realpath(os.path.abspath(path))


def _within(inner: str, outer: str) -> bool:
    sep = "/" if _is_url(outer) else os.sep
    return inner == outer or inner.startswith(outer.rstrip(sep) + sep)


def check_not_input(out, inputs, what: str = "path") -> None:
    """Refuse an output that is, is inside, or contains one of the inputs.

    Paths are compared resolved (symlinks, ``..``, relative paths), and an
    existing output that is the same file as an input (a hard link) is refused
    too. ``overwrite`` does not change this: a command never writes into, over
    or inside the catalog or model it reads.

    Parameters
    ----------
    out : str or os.PathLike
        The output about to be written.
    inputs : iterable of str, os.PathLike or None
        What the command reads (catalog stores, model files); None is skipped.
    what : str
        The output's argument name (``"path"``, ``"--out"``...).

    Raises
    ------
    InputError
        ``out`` would overwrite, write inside or replace a parent of an input.
    """
    o = _resolved(out)
    for inp in inputs:
        if inp is None:
            continue
        i = _resolved(inp)
        same = o == i
        if not same and not _is_url(o) and os.path.exists(o) and os.path.exists(i):
            try:
                same = os.path.samefile(o, i)
            except OSError:
                pass
        if same or _within(o, i) or _within(i, o):
            where = ("is" if same else "is inside" if _within(o, i) else "contains")
            raise InputError(
                f"{what}: {os.fspath(out)} {where} {os.fspath(inp)}, which this command "
                f"reads{f' (resolved: {i})' if i != os.fspath(inp) else ''}; an input is never "
                f"written into, over or inside, even with overwrite. Write the output "
                f"elsewhere.")


def stores_read_by(*objs) -> set:
    """Catalog stores that dask collections ``objs`` read (via :func:`open_catalog`).

    Lets a write function refuse to write over the store its lazy input comes
    from; non-dask arguments are ignored.
    """
    stores = set()
    for obj in objs:
        graph = getattr(obj, "__dask_graph__", None)
        if graph is None:
            continue
        for v in dict(graph()).values():
            v = getattr(v, "value", v)       # dask's DataNode wraps literal values
            if isinstance(v, _CheckedZarr):
                stores.add(v.store)
    return stores


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


def check_ids(ids, N: int, what: str = "ids") -> np.ndarray:
    """Row identifiers as int64 or strings, one per row, none missing.

    Parameters
    ----------
    ids : array_like, shape (N,)
        Integers (any integer type; floats holding whole numbers are accepted) or
        strings (str, bytes as UTF-8).
    N : int
        Rows expected.
    what : str
        Name used in error messages.

    Returns
    -------
    ndarray, shape (N,)
        int64, or numpy strings.

    Raises
    ------
    InputError, InputTypeError
        Wrong length or shape, a missing identifier, non-integral numbers, other types.
    """
    a = np.asarray(ids)
    if a.ndim != 1 or a.shape[0] != N:
        raise InputError(f"{what}: expected one identifier per row, shape ({N},); found "
                         f"shape {a.shape}.")
    if a.dtype.kind == "O":
        bad = [i for i, v in enumerate(a[:N]) if not isinstance(v, (str, bytes))]
        if bad:
            raise InputTypeError(f"{what}: row {bad[0]} holds {a[bad[0]]!r}; expected every "
                                 f"identifier to be an integer or every one a string.")
        a = np.array([v.decode() if isinstance(v, bytes) else v for v in a], dtype=str)
    if a.dtype.kind == "S":
        a = np.char.decode(a, "utf-8")
    if a.dtype.kind in "UT":
        empty = np.flatnonzero(a == "")
        if empty.size:
            raise InputError(f"{what}: row {int(empty[0])} has an empty identifier; every "
                             f"row needs one to be joined back.")
        return a.astype(str)
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            raise InputError(f"{what}: row {int(bad[0])} has identifier {a[bad[0]]!r}; "
                             f"expected whole numbers (or strings), none missing.")
        if np.abs(a).max(initial=0) >= 2.0**53:
            raise InputError(f"{what}: identifiers stored as floats above 2**53 have lost "
                             f"digits; read the column as integers.")
        return a.astype(np.int64)
    if a.dtype.kind in "iu":
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            raise InputError(f"{what}: identifiers above 2**63 - 1 do not fit int64; pass "
                             f"them as strings.")
        return a.astype(np.int64)
    raise InputTypeError(f"{what}: expected integers or strings; found dtype {a.dtype}.")


def _checked_ids_block(block: np.ndarray) -> np.ndarray:
    out = check_ids(block, len(block))
    return out if out.dtype.kind == "i" else out.astype(object)


def _id_array_dtype(ids: np.ndarray):
    """The Zarr dtype of an identifier array: int64, or variable-length strings."""
    return np.int64 if ids.dtype.kind in "iu" else str


def write_catalog(path, data, covar=None, *, chunks: int | None = None, columns=None,
                  order: str = "input", overwrite: bool = False, ids=None,
                  id_name: str = "id", weights=None, projection=None) -> Catalog:
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
    ids : array_like, shape (N,), optional
        Row identifiers, integers or strings, kept with their rows in any order
        and written first in every per-row output (:meth:`Catalog.row_keys`).
    id_name : str
        Name of the identifier column in those outputs.
    weights : array_like or dask array, shape (N,), optional
        Per-row weights >= 0 (a row of weight w counts as w rows; 0 leaves it out),
        stored with the rows and used by every fit and score of the catalog.
    projection : array_like or dask array, shape (d, D) or (N, d, D), optional
        Projection matrices: the rows are ``y_i = R_i v_i + e_i`` of a D-dimensional
        model, ``data`` has the d columns of ``y`` (docs/design.md §1.1; per-row
        NaN rows of ``R_i`` where ``y_i`` is NaN). Stored as float64 and used by every
        fit, score and posterior of the catalog; checked against the rows when they
        are read.

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
        kind = kind_of(covar, N, D)
        if kind not in STORED_KINDS:
            raise InputError("covar: a catalog stores per-row noise, (N, D) or (N, D, D); "
                             "pass a shared (D, D) matrix to fit() instead.")
    if columns is None:
        columns = [f"x{j}" for j in range(D)]
    columns = [str(c) for c in columns]
    if len(columns) != D:
        raise InputError(f"columns: expected {D} names; found {len(columns)}.")
    if order not in ("input", "spatial"):
        raise InputError(f"order: expected 'input' or 'spatial'; found {order!r}.")
    if ids is not None:
        if isinstance(ids, da.Array) and order == "input":
            # checked block by block as it is written: identifiers may not fit in memory
            if ids.shape != (N,):
                raise InputError(f"ids: expected one identifier per row, shape ({N},); "
                                 f"found shape {ids.shape}.")
            ids = ids.map_blocks(_checked_ids_block, dtype=np.int64 if ids.dtype.kind in "iu"
                                 else object)
        else:
            ids = check_ids(ids.compute() if isinstance(ids, da.Array) else ids, N)
        if not (isinstance(id_name, str) and id_name and id_name not in columns):
            raise InputError(f"id_name: expected a name for the identifier column that is "
                             f"not a feature name ({columns}); found {id_name!r}.")
    if weights is not None:
        weights = _check_array(weights, "weights", ndim=(1,))
        if weights.shape != (N,):
            raise InputError(f"weights: expected one weight per row, shape ({N},); found "
                             f"shape {weights.shape}.")
        if isinstance(weights, da.Array):
            weights = weights.map_blocks(_checked_weights_block, dtype=np.float64)
        else:
            weights = check_weights_block(weights, 0)
    if projection is not None:
        projection = _check_array(projection, "projection", ndim=(2, 3))
        if check_projection_shape(projection.shape, N, D, projection.shape[-1]):
            if not isinstance(projection, da.Array):
                projection = check_projection_block(projection, np.asarray(x), 0)
        else:
            projection = check_projection_block(np.asarray(projection), None, 0)
    rows = int(chunks) if chunks is not None else default_row_chunk(N, D, kind)
    if rows < 1:
        raise InputError(f"chunks: expected a positive number of rows; found {chunks}.")

    check_not_input(path, stores_read_by(x, covar, weights, projection), "path")
    if not _is_url(path):
        # before any work; a catalog is never overwritten by default
        check_new_output(path, overwrite, exists_error=StoreExistsError)
    xd = _as_source(x, dtype, (rows, D))
    cd = None if covar is None else _as_source(covar, np.float64,
                                               (rows,) + tuple(covar.shape[1:]))
    if weights is not None:
        weights = _as_source(weights, np.float64, (rows,))
    if projection is not None and projection.ndim == 3:
        projection = _as_source(projection, np.float64, (rows,) + tuple(projection.shape[1:]))
    row_index = None
    if order == "spatial":
        perm = spatial_order(np.asarray(xd))
        xd = np.asarray(xd)[perm]
        if cd is not None:
            cd = np.asarray(cd)[perm]
        row_index = perm.astype(np.int64)
        if ids is not None:
            ids = ids[perm]
        if weights is not None:
            weights = np.asarray(weights)[perm]
        if projection is not None and projection.ndim == 3:
            projection = np.asarray(projection)[perm]
    try:
        with new_store(path, overwrite) as group:
            group.attrs.update({"daskgmmis_format": CATALOG_FORMAT,
                                "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                                "columns": columns, "covar_kind": kind,
                                "order": order})
            if ids is not None:
                group.attrs["id_name"] = id_name
            arrays = ([("data", xd)] + ([("covar", cd)] if cd is not None else [])
                      + ([("weights", weights)] if weights is not None else [])
                      + ([("projection", projection)] if projection is not None else []))
            # a shared (d, D) projection is one chunk, a per-row one chunked like data
            targets = [complete_array(group, name, arr.shape, arr.dtype,
                                      arr.shape if name == "projection" and arr.ndim == 2
                                      else (rows,) + tuple(arr.shape[1:]))
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
            if ids is not None:
                z = complete_array(group, "ids", ids.shape, _id_array_dtype(ids), (rows,))
                if isinstance(ids, da.Array):
                    da.store(ids.rechunk(rows), z, lock=False)
                else:
                    for start in range(0, N, rows):
                        z[start:start + rows] = ids[start:start + rows]
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
    version = attrs.get("daskgmmis_format_version")
    # JSON true and 1.0 compare equal to 1 in Python; a version is an integer
    if type(version) is not int or version != CATALOG_FORMAT_VERSION:
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
    if kind not in STORED_KINDS:
        raise CatalogError(f"catalog: {path} has covar_kind={kind!r}; expected 'none', 'diag' "
                           f"or 'full'. The group attributes are corrupted.")
    stored = noise_class(kind)
    if not stored.noisy and "covar" in names:
        raise CatalogError(f"catalog: {path} declares covar_kind='none' but has a 'covar' "
                           f"array; reading it as noise-free would silently drop the noise. "
                           f"Set covar_kind to 'diag' or 'full' (as the array's shape says) "
                           f"or write the catalog again.")
    zdata = _open_array(group, path, "data")
    if zdata.ndim != 2:
        raise CatalogError(f"catalog: {path}/data has shape {zdata.shape}; expected (N, D).")
    if zdata.dtype not in (np.float32, np.float64):
        raise CatalogError(f"catalog: {path}/data has dtype {zdata.dtype}; expected float32 "
                           f"or float64. Re-ingest the source with daskgmmis.")
    N, D = zdata.shape
    data = _checked_dask(zdata, path, "data")
    covar = None
    if stored.noisy:
        if "covar" not in names:
            raise CatalogError(f"catalog: {path} declares covar_kind={kind!r} but has no "
                               f"'covar' array.")
        zc = _open_array(group, path, "covar")
        expected = stored.array_shape(N, D)
        if zc.shape != expected:
            raise CatalogError(f"catalog: {path}/covar has shape {zc.shape}; expected "
                               f"{expected} for covar_kind={kind!r}.")
        if zc.dtype not in (np.float32, np.float64):
            raise CatalogError(f"catalog: {path}/covar has dtype {zc.dtype}; expected float32 "
                               f"or float64. Re-ingest the source with daskgmmis.")
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
        zi = _open_array(group, path, "row_index")
        if zi.shape != (N,) or zi.dtype.kind not in "iu":
            raise CatalogError(f"catalog: {path}/row_index has shape {zi.shape} and dtype "
                               f"{zi.dtype}; expected ({N},) integers, one original index per "
                               f"row of data. Write the catalog again.")
        row_index = _checked_dask(zi, path, "row_index")
    ids, id_name = None, None
    if "ids" in names:
        zi = _open_array(group, path, "ids")
        if zi.shape != (N,):
            raise CatalogError(f"catalog: {path}/ids has shape {zi.shape}; expected ({N},), "
                               f"one identifier per row.")
        if zi.dtype.kind not in "iuTUO":
            raise CatalogError(f"catalog: {path}/ids has dtype {zi.dtype}; expected integers "
                               f"or strings.")
        id_name = attrs.get("id_name", "id")
        if not (isinstance(id_name, str) and id_name):
            raise CatalogError(f"catalog: {path} has id_name={id_name!r}; expected the "
                               f"identifier column's name. The group attributes are "
                               f"corrupted.")
        ids = _checked_dask(zi, path, "ids")
        if ids.dtype.kind in "TU":
            # Python strings (object dtype): what pandas, pyarrow and numpy's str all take
            ids = ids.map_blocks(_as_objects, dtype=object, meta=np.empty((0,), object))
    weights = None
    if "weights" in names:
        zw = _open_array(group, path, "weights")
        if zw.shape != (N,) or zw.dtype != np.float64:
            raise CatalogError(f"catalog: {path}/weights has shape {zw.shape} and dtype "
                               f"{zw.dtype}; expected ({N},) float64, one weight per row.")
        weights = _checked_dask(zw, path, "weights").rechunk({0: data.chunks[0]})
        weights = weights.map_blocks(_checked_weights_block, dtype=np.float64)
    projection = None
    if "projection" in names:
        zp = _open_array(group, path, "projection")
        shape = tuple(zp.shape)
        if (zp.dtype != np.float64 or len(shape) not in (2, 3) or shape[-2] != D
                or (len(shape) == 3 and shape[0] != N) or shape[-1] < D):
            raise CatalogError(f"catalog: {path}/projection has shape {shape} and dtype "
                               f"{zp.dtype}; expected float64 ({D}, D') or ({N}, {D}, D'), "
                               f"D' >= {D}. Write the catalog again.")
        projection = _checked_dask(zp, path, "projection")
        if len(shape) == 2:
            projection = np.asarray(projection.compute())
        else:
            projection = projection.rechunk((data.chunks[0],) + tuple((s,) for s in shape[1:]))
    return Catalog(data, covar, list(columns), path, row_index, ids, id_name, weights,
                   projection)


def _checked_weights_block(block: np.ndarray, block_info=None) -> np.ndarray:
    """check_weights_block inside a dask graph, with the block's global first row."""
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    return check_weights_block(block, offset)


def _as_objects(block: np.ndarray) -> np.ndarray:
    return block.astype(object)


def _open_array(group, path: str, name: str):
    """``group[name]``; unreadable metadata or unknown codecs become a CatalogError."""
    try:
        return group[name]
    except Exception as e:  # JSON errors, unknown codecs, missing metadata...
        raise CatalogError(f"catalog: {path}/{name} cannot be opened ({type(e).__name__}: "
                           f"{e}); its metadata is corrupted or was written by an "
                           f"incompatible tool.") from None


class _CheckedZarr:
    """Read-only view of a Zarr array whose reads name the store and never invent rows.

    Reads happen inside dask tasks (a fit's E-step, a posterior, a score); a
    truncated or garbled chunk file would otherwise surface as a bare codec
    error (``RuntimeError: Zstd decompression error``) that names no file, and a
    missing chunk file would read back as the fill value (zeros). Each read
    first checks that the chunk files of its rows exist (one ``exists`` per
    chunk, in the task) and raises a CatalogError naming the rows otherwise.
    """

    def __init__(self, array, where: str, store: str | None = None):
        self.array, self.where, self.store = array, where, store
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def _check_chunks_exist(self, rows: slice) -> None:
        from zarr.core.sync import sync

        z = self.array
        step = _stored_chunks(z)[0]
        start = rows.start or 0
        stop = self.shape[0] if rows.stop is None else min(rows.stop, self.shape[0])
        if stop <= start:
            return
        store, prefix = z.store_path.store, z.store_path.path
        zeros = (0,) * (z.ndim - 1)
        for i in range(start // step, (stop - 1) // step + 1):
            key = z.metadata.encode_chunk_key((i,) + zeros)
            if not sync(store.exists(f"{prefix}/{key}" if prefix else key)):
                lo, hi = i * step, min((i + 1) * step, self.shape[0]) - 1
                raise CatalogError(
                    f"catalog: {self.where} has no chunk file {key} (rows {lo}..{hi}); the "
                    f"rows would read as the fill value, not as data. A chunk file was "
                    f"deleted or never written: restore the store from a copy or write it "
                    f"again.")

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) and key else key
        if isinstance(rows, slice) and rows.step in (None, 1):
            self._check_chunks_exist(rows)
        try:
            return self.array[key]
        except Exception as e:
            span = (f"rows {rows.start}..{rows.stop - 1}" if isinstance(rows, slice)
                    and rows.start is not None and rows.stop is not None else f"{key!r}")
            raise CatalogError(
                f"catalog: reading {self.where} ({span}) failed ({type(e).__name__}: {e}); "
                f"the store is corrupted or truncated (a chunk file damaged or replaced), "
                f"or could not be reached. Restore it from a copy or write it again.") from e


def _stored_chunks(z) -> tuple:
    """Shape of the objects stored per key (shards when the array is sharded)."""
    return tuple(getattr(z, "shards", None) or z.chunks)


def _stored_chunk_keys(z) -> set:
    """Keys (relative to the array) of the chunk objects that exist in the store.

    Lists the store: time and memory proportional to what exists, never to the
    grid the metadata claims.
    """
    from zarr.core.sync import collect_aiterator

    prefix = z.store_path.path
    listed = collect_aiterator(z.store_path.store.list_prefix(f"{prefix}/" if prefix else ""))
    cut = len(prefix) + 1 if prefix else 0
    return {k[cut:] for k in listed} - {"zarr.json", ".zarray", ".zattrs", ".zmetadata"}


def _check_grid(z, path: str, name: str) -> None:
    """Refuse a shape or chunk grid the store cannot hold, before anything is listed
    per chunk or allocated.

    The catalog layout chunks along rows only, so the grid has ceil(N / rows)
    chunks; every one of them must exist (missing data is never read as
    zeros), which bounds N by the chunk files actually stored. One chunk must
    also fit in memory, which bounds D.
    """

    shape, chunks = tuple(z.shape), _stored_chunks(z)
    if any(s < 0 for s in shape) or any(c < 1 for c in chunks):
        raise CatalogError(f"catalog: {path}/{name} has shape {shape} and chunks {chunks}; "
                           f"the array metadata is corrupted.")
    if chunks[1:] != shape[1:]:
        raise CatalogError(f"catalog: {path}/{name} has shape {shape} in chunks of {chunks}; "
                           f"expected chunks along rows only, (rows,) + {shape[1:]}. The "
                           f"array metadata is corrupted or was written by another tool: "
                           f"re-ingest the source with daskgmmis.")
    chunk_bytes = int(np.prod(chunks, dtype=np.float64) * z.dtype.itemsize)
    limit, what = machine_memory_limit()
    if chunk_bytes > limit // 2:
        raise CatalogError(f"catalog: {path}/{name} claims chunks of {chunks} "
                           f"({chunk_bytes / 2**30:.3g} GiB each, uncompressed), more than "
                           f"half of {what} ({limit / 2**30:.3g} GiB): one chunk could not "
                           f"be read. The metadata is corrupted, or the catalog must be "
                           f"written again with fewer rows per chunk (chunks=).")
    nchunks = -(-shape[0] // chunks[0]) if shape[0] else 0
    try:
        stored = _stored_chunk_keys(z)
    except Exception as e:
        raise CatalogError(f"catalog: {path}/{name}: cannot list its chunk files "
                           f"({type(e).__name__}: {e}).") from None
    zeros = (0,) * (len(shape) - 1)
    key = lambda i: z.metadata.encode_chunk_key((i,) + zeros)  # noqa: E731
    # at most len(stored) + 5 keys are formed, whatever nchunks claims
    missing, found, i = [], 0, 0
    while i < nchunks and len(missing) < 5 and found + len(missing) <= len(stored) + 5:
        if key(i) in stored:
            found += 1
        else:
            missing.append(i)
        i += 1
    if not missing:
        return
    marked = z.attrs.get("complete_chunks") is True
    present = min(len(stored), nchunks)
    raise CatalogError(
        f"catalog: {path}/{name} has {present} of its {nchunks} chunks (shape {shape}, "
        f"{chunks[0]} rows per chunk; missing: "
        + ", ".join(f"{name}/{key(j)} = rows {j * chunks[0]}..{min((j + 1) * chunks[0], shape[0]) - 1}"
                    for j in missing)
        + ("); chunk files were deleted or a copy was interrupted" if marked else
           "); a missing chunk would read as the fill value (zeros), not as data")
        + ", or the metadata claims more rows than were written. Restore the store from "
          "a copy or write it again.")


def _checked_dask(z, path: str, name: str) -> da.Array:
    """Dask array over Zarr array ``z`` (as da.from_zarr) with checked reads.

    The grid is bounded by what the store holds (:func:`_check_grid`): every
    chunk file must exist at open, and each read checks its chunks again.
    """
    from dask.base import tokenize

    _check_grid(z, path, name)
    view = _CheckedZarr(z, f"{path}/{name}", path)
    return da.from_array(view, chunks=z.chunks, name="from-zarr-" + tokenize(z, z.chunks),
                         meta=np.empty((0,) * z.ndim, dtype=z.dtype), asarray=True,
                         fancy=False)


def as_dask_input(data, covar=None):
    """:func:`dask_input` with the noise as ``(raw array, kind)``.

    Returns
    -------
    x : dask array, shape (N, D)
    noise : None, ndarray (D, D), or dask array (N, D) / (N, D, D) chunked like ``x``
    kind : str
        Noise kind.
    """
    x, noise = dask_input(data, covar, _stacklevel=5)
    return x, noise.array, noise.kind


def dask_input(data, covar=None, *, _stacklevel: int = 4):
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
    noise : Noise
        A checked shared (D, D) matrix, or per-row noise whose :attr:`~Noise.array`
        is a dask array (N, D) / (N, D, D) chunked like ``x``.
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
    noise = noise_class(kind_of(covar, N, D, warn_ambiguous=True, stacklevel=_stacklevel)
                        ).from_array(covar)
    if isinstance(x, np.ndarray):
        rows = default_row_chunk(N, D, noise.kind)
        x = da.from_array(x, chunks=(rows, D))
    else:
        x = x.rechunk({1: -1})
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)
    if noise.shared_matrix is not None:
        noise.validate(name="covar")

    def chunked(c):
        c = c if hasattr(c, "dask") else _check_array(c, "covar", ndim=(2, 3))
        return da.asarray(c).rechunk((x.chunks[0],) + tuple((s,) for s in c.shape[1:]))

    return x, noise.map_rows(chunked)


def _catalog_array(data, name: str, value, what: str):
    """``(array, from_catalog)``: a catalog's own ``name`` array, else ``value``.

    ``data`` as for :func:`as_dask_input`; giving ``value`` as well as a catalog that
    carries ``name`` is an error (``what`` describes the array in the message).
    """
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    own = getattr(data, name) if isinstance(data, Catalog) else None
    if own is None:
        return value, False
    if value is not None:
        raise InputError(f"{name}: the catalog carries its own {what}; pass {name}=None "
                         f"when data is a catalog.")
    return own, True


def as_dask_projection(data, projection, x: da.Array, D: int):
    """Resolve the ``projection`` argument of fit-like functions.

    Parameters
    ----------
    data : as for :func:`as_dask_input`
        A :class:`Catalog` (or its path) may carry its own projection.
    projection : None, array_like or dask array, shape (d, D) or (N, d, D)
        Rows observe ``y_i = R_i v_i + e_i`` (docs/design.md §1.1); must be None when
        the catalog carries a projection.
    x : dask array, shape (N, d)
        The data as :func:`as_dask_input` returned it (gives N, d and the row chunks).
    D : int
        Dimension of the model.

    Returns
    -------
    None, ndarray (d, D) float64 (shared, checked), or dask array (N, d, D) chunked like
    ``x``: its blocks are checked against the rows (finite where observed) by
    :func:`daskgmmis.validation.check_projection_block` where they are read.
    """
    projection, own = _catalog_array(data, "projection", projection, "projection matrices")
    if projection is None or own:
        return projection
    R = projection if isinstance(projection, da.Array) else _check_array(
        projection, "projection", ndim=(2, 3))
    N, d = (int(s) for s in x.shape)
    if not check_projection_shape(R.shape, N, d, D):
        return check_projection_block(np.asarray(R), None, 0)
    return da.asarray(R).rechunk((x.chunks[0], (d,), (D,)))


def as_dask_weights(data, weights, x: da.Array) -> da.Array | None:
    """Resolve the ``weights`` argument of fit-like functions.

    Parameters
    ----------
    data : as for :func:`as_dask_input`
        A :class:`Catalog` (or its path) may carry its own weights.
    weights : None, array_like or dask array, shape (N,)
        Per-row weights >= 0; must be None when the catalog carries weights.
    x : dask array, shape (N, D)
        The data as :func:`as_dask_input` returned it (gives N and the row chunks).

    Returns
    -------
    dask array, shape (N,), float64, chunked like ``x`` (checked block by block), or None
    """
    weights, own = _catalog_array(data, "weights", weights, "per-row weights")
    if weights is None or own:
        return weights
    N = x.shape[0]
    w = weights if isinstance(weights, da.Array) else _check_array(weights, "weights",
                                                                     ndim=(1,))
    if w.ndim != 1 or w.shape[0] != N:
        raise InputError(f"weights: expected one weight per row, shape ({N},); found shape "
                         f"{w.shape}.")
    w = da.asarray(w).rechunk({0: x.chunks[0]})
    return w.map_blocks(_checked_weights_block, dtype=np.float64)
