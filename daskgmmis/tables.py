"""Per-row outputs as tables a user joins back to their own catalog: Zarr, Parquet or CSV.

The format follows the output path's suffix (``.zarr``, ``.parquet`` / ``.pq``,
``.csv``). Every output of a per-row command (``score``, ``posterior``,
``predict``, ``sample``) carries the catalog's row key first — its identifier
column (``ingest --id``, ``write_catalog(ids=...)``) under its own name, else
``row``, the row's position in the table the catalog was made from — so that one
merge on that column joins the results to the user's table, whatever order the
catalog stores its rows in.

Parquet and CSV files are written block by block (one row block of the dask
arrays at a time, so an output larger than memory streams through), to a
temporary name that is renamed into place once complete: an interrupted write
leaves nothing at the destination. An ``(N, k)`` array becomes ``k`` columns
named ``{name}_{sub}``, ``sub`` from the names given for it (feature or component
names) or the index.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .catalog import check_not_input, complete_array, new_store, stores_read_by
from .errors import InputError, StoreExistsError
from .files import check_new_output, write_atomic

__all__ = ["TABLE_FORMATS", "table_format", "write_table", "write_row_arrays", "flat_columns",
           "read_column"]

#: Output suffix -> format.
TABLE_FORMATS = {".zarr": "zarr", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def table_format(path) -> str:
    """The format of an output path, from its suffix.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    {"zarr", "parquet", "csv"}

    Raises
    ------
    InputError
        Another suffix.
    """
    path = os.fspath(path).rstrip("/")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in TABLE_FORMATS:
        raise InputError(f"out: {path} has suffix {suffix or '(none)'!r}; expected one of "
                         f"{sorted(TABLE_FORMATS)} (the suffix picks the format).")
    return TABLE_FORMATS[suffix]


def flat_columns(arrays: Mapping, names: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Flatten ``{name: (N,) or (N, k) array}`` into ``{column: (N,) array}``.

    Parameters
    ----------
    arrays : mapping of str to array (numpy or dask), shape (N,) or (N, k)
    names : mapping of str to sequence of str, optional
        Names of the ``k`` sub-columns of an array (default ``0 .. k-1``).

    Returns
    -------
    dict
        Column name -> (N,) array, in order; ``(N, k)`` arrays give ``{name}_{sub}``.
    """
    names = names or {}
    out = {}
    for name, a in arrays.items():
        if a.ndim == 1:
            out[name] = a
        elif a.ndim == 2:
            subs = list(names.get(name, range(a.shape[1])))
            if len(subs) != a.shape[1]:
                raise InputError(f"names[{name!r}]: expected {a.shape[1]} names; found "
                                 f"{len(subs)}.")
            for j, sub in enumerate(subs):
                out[f"{name}_{sub}"] = a[:, j]
        else:
            raise InputError(f"{name}: a table column holds (N,) or (N, k) values; found "
                             f"shape {a.shape}: write it as .zarr.")
    return out


# Row blocks computed together when streaming a table out: enough to keep a cluster's
# workers busy, few enough that the driver holds a bounded number of blocks.
BLOCKS_PER_COMPUTE = 8


def _row_blocks(columns: dict):
    """Yield ``{name: numpy (n,)}`` for consecutive row blocks, in order.

    Blocks are computed :data:`BLOCKS_PER_COMPUTE` at a time (in parallel on the
    scheduler) and handed out one by one, so the driver holds at most that many.
    """
    import dask
    import dask.array as da

    lazy = {k: v for k, v in columns.items() if hasattr(v, "dask")}
    if not lazy:
        yield {k: np.asarray(v) for k, v in columns.items()}
        return
    chunks = next(iter(lazy.values())).chunks[0]
    arrays = {k: da.asarray(v).rechunk({0: chunks}) for k, v in columns.items()}
    names = list(arrays)
    for first in range(0, len(chunks), BLOCKS_PER_COMPUTE):
        group = range(first, min(first + BLOCKS_PER_COMPUTE, len(chunks)))
        values = dask.compute(*([arrays[n].blocks[i] for n in names] for i in group))
        for block in values:
            yield dict(zip(names, (np.asarray(v) for v in block)))


def _plain(values: np.ndarray) -> np.ndarray:
    """numpy's variable-width strings (zarr v3 string arrays) as Python objects."""
    if values.dtype.kind == "T":
        return values.astype(object)
    return values


def _write_parquet(tmp: str, columns: dict, attrs: dict) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("out: Parquet output needs pyarrow; install it with "
                         "pip install 'daskgmmis[ingest]', or write .zarr or .csv.") from None
    import json

    writer = None
    try:
        for block in _row_blocks(columns):
            table = pa.table({k: pa.array(_plain(v)) for k, v in block.items()})
            if writer is None:
                meta = {b"daskgmmis": json.dumps(attrs).encode()}
                schema = table.schema.with_metadata(meta)
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _csv_cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        # repr round-trips every float64 exactly; a missing value is an empty cell
        return "" if np.isnan(v) else repr(float(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _write_csv(tmp: str, columns: dict) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(list(columns))
        for block in _row_blocks(columns):
            cols = [_plain(v) for v in block.values()]
            out.writerows(zip(*([_csv_cell(v) for v in c] for c in cols)))


def write_row_arrays(path, arrays: dict, attrs: dict, *, overwrite: bool = False) -> None:
    """Write row-aligned arrays (numpy or dask) to a new Zarr v3 group, atomically.

    Used for per-row outputs (e.g. ``daskgmmis score``): each array is chunked
    along rows like the first one's dask chunks and written lazily with
    :func:`dask.array.store`; the group appears under ``path`` only once complete.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory.
    arrays : dict
        Name -> array of shape (N, ...); all with the same N.
    attrs : dict
        Group attributes (plain JSON).
    overwrite : bool
        Replace an existing store.
    """
    import dask.array as da

    path = os.fspath(path)
    if "://" in path:
        raise InputError(f"out: {path}: per-row outputs are written to local paths only.")
    check_not_input(path, stores_read_by(*arrays.values()), "path")
    check_new_output(path, overwrite, hint="overwrite=True (--overwrite)",
                     exists_error=StoreExistsError)
    arrays = {k: da.asarray(v) for k, v in arrays.items()}
    if not arrays:
        raise InputError("arrays: nothing to write.")
    first = next(iter(arrays.values()))
    N = first.shape[0]
    if any(a.shape[0] != N for a in arrays.values()):
        raise InputError(f"arrays: expected the same number of rows; found "
                         f"{ {k: a.shape[0] for k, a in arrays.items()} }.")
    rows = max(max(first.chunks[0], default=1), 1)
    # regular chunks on both sides: no two tasks write into one Zarr chunk
    arrays = {k: a.rechunk({0: rows}) for k, a in arrays.items()}
    with new_store(path, overwrite) as group:
        group.attrs.update(attrs)
        targets = [complete_array(group, k, a.shape, a.dtype, (rows,) + tuple(a.shape[1:]))
                   for k, a in arrays.items()]
        da.store(list(arrays.values()), targets, lock=False)


def write_table(path, arrays: Mapping, *, attrs: Mapping | None = None,
                names: Mapping[str, Sequence[str]] | None = None,
                overwrite: bool = False) -> str:
    """Write row-aligned arrays as a Zarr group, a Parquet file or a CSV file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its suffix picks the format (:data:`TABLE_FORMATS`).
    arrays : mapping of str to array (numpy or dask), shape (N, ...)
        The columns, row key first. Zarr keeps every shape; Parquet and CSV take
        (N,) and (N, k) arrays (flattened by :func:`flat_columns`).
    attrs : mapping, optional
        JSON metadata: Zarr group attributes, Parquet schema metadata (key
        ``daskgmmis``); not written to CSV.
    names : mapping of str to sequence of str, optional
        Sub-column names of (N, k) arrays, for Parquet and CSV.
    overwrite : bool
        Replace an existing output.

    Returns
    -------
    str
        The format written.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    InputError
        Unknown suffix; arrays of different lengths.
    """
    path = os.fspath(path)
    fmt = table_format(path)
    attrs = dict(attrs or {})
    arrays = dict(arrays)
    if not arrays:
        raise InputError("arrays: nothing to write.")
    lengths = {k: int(a.shape[0]) for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"arrays: expected the same number of rows; found {lengths}.")
    if fmt == "zarr":
        write_row_arrays(path, arrays, attrs, overwrite=overwrite)
        return fmt
    check_not_input(path, stores_read_by(*arrays.values()), "out")
    check_new_output(path, overwrite, hint="overwrite=True (--overwrite)")
    columns = flat_columns(arrays, names)
    if fmt == "parquet":
        write_atomic(path, lambda tmp: _write_parquet(tmp, columns, attrs))
    else:
        write_atomic(path, lambda tmp: _write_csv(tmp, columns))
    return fmt


def read_column(path, name: str):
    """One column of a per-row output written by :func:`write_table`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.zarr``, ``.parquet`` or ``.csv`` output.
    name : str
        Column (Zarr: array) name.

    Returns
    -------
    dask array (Zarr, read lazily) or ndarray (Parquet, CSV), shape (N,)
    """
    import dask.array as da

    path = os.fspath(path)
    fmt = table_format(path)
    if fmt == "zarr":
        return da.from_zarr(path, component=name)
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet or CSV needs pyarrow; install it with "
                         f"pip install 'daskgmmis[ingest]'.") from None
    if fmt == "parquet":
        table = pq.read_table(path, columns=[name])
    else:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            include_columns=[name]))
    return table.column(name).to_numpy(zero_copy_only=False)
