"""Streaming ingest of tables (CSV, Parquet, FITS, ``.npy``) into Zarr catalogs.

A source table is read in batches of rows - never whole - and appended to a new
catalog with the layout of :func:`daskgmmis.write_catalog` (same arrays, chunking
rule and group attributes), so :func:`daskgmmis.open_catalog` and every fit read
it unchanged. Value columns become ``data`` (NaN = missing); error columns become
``covar``:

* standard deviations ``s_j`` (or variances with ``variances=True``) give the
  diagonal variances ``s_j**2`` (kind ``"diag"``);
* with correlation columns ``rho_jk`` the full matrices
  ``C_jj = s_j**2, C_jk = rho_jk s_j s_k`` (kind ``"full"``).

Every batch is validated as it is written (no Inf, no row with every value
missing, errors finite and non-negative where a value is observed, correlations
in [-1, 1], covariances positive semi-definite), and the catalog is written under
a temporary name and renamed only once complete: a failed ingest leaves nothing
behind.

Readers: CSV with :mod:`pyarrow.csv` when pyarrow is installed (fast, streaming),
else Python's :mod:`csv`; Parquet with :mod:`pyarrow.parquet`; FITS binary and
ASCII tables with :mod:`astropy.io.fits` (memory-mapped); ``.npy`` with
``numpy.load(mmap_mode="r")`` (a 2-D numeric array, columns ``x0..x{D-1}``, or a
structured array with named fields). pyarrow and astropy are the ``ingest`` extra.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import zarr

from .catalog import (_is_url, Catalog, CATALOG_FORMAT, CATALOG_FORMAT_VERSION, check_ids,
                      check_not_input, complete_array, default_row_chunk, install_store,
                      open_catalog, write_catalog)
from .errors import InputError, InputTypeError, StoreExistsError
from .files import check_new_output
from .tables import table_format, write_row_arrays, write_table  # noqa: F401 (re-export)
from .noise import STORED_KINDS, noise_class
from .validation import check_data_block, check_weights_block

__all__ = ["FORMATS", "TableSource", "open_table", "detect_format", "CatalogWriter",
           "ingest", "errors_to_covar", "write_row_arrays", "table_parts"]

log = logging.getLogger("daskgmmis")

FORMATS = ("csv", "parquet", "fits", "npy")

_SUFFIXES = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".csv.gz": "csv",
             ".parquet": "parquet", ".pq": "parquet",
             ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits",
             ".npy": "npy"}

# Tokens read as a missing value (pyarrow's defaults, used by both CSV readers so
# that the two engines agree).
_CSV_NULLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null")

DEFAULT_BATCH_ROWS = 1 << 16


def _missing_module(name: str, fmt: str) -> InputError:
    return InputError(f"reading {fmt} files needs the {name} package; install it with "
                      f"pip install 'daskgmmis[ingest]'.")


def detect_format(path, fmt: str | None = None) -> str:
    """The table format of ``path``: ``fmt`` if given, else from the file suffix.

    Parameters
    ----------
    path : str or os.PathLike
    fmt : {"csv", "parquet", "fits", "npy"}, optional

    Returns
    -------
    str

    Raises
    ------
    InputError
        Unknown ``fmt`` or an unrecognized suffix.
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"format: expected one of {FORMATS}; found {fmt!r}.")
        return fmt
    name = os.fspath(path).lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise InputError(f"{path}: cannot tell the format from the file name; expected a "
                     f"suffix among {sorted(_SUFFIXES)} or an explicit format "
                     f"(one of {FORMATS}).")


# ------------------------------------------------------------------ table sources


@dataclass
class TableSource:
    """A readable table: column names, optional row count, and a batch reader.

    Attributes
    ----------
    path : str
    format : str
    names : list of str
        Columns available, in file order.
    num_rows : int or None
        Row count when the file's metadata states it (None for CSV).
    dtypes : dict
        Column name -> numpy dtype where known from metadata (float32 columns are
        stored as float32 when every value column is float32).
    """

    path: str
    format: str
    names: list
    num_rows: int | None
    dtypes: dict = field(default_factory=dict)
    _reader: Callable | None = None

    def resolve(self, name: str) -> str:
        """The source column called ``name`` (exact match, else case-insensitive)."""
        if name in self.names:
            return name
        folded = [n for n in self.names if n.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        raise InputError(f"{self.path}: no column named {name!r}; available columns: "
                         f"{', '.join(self.names[:30])}{' ...' if len(self.names) > 30 else ''}.")

    def batches(self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS,
                raw: Sequence[str] = ()) -> Iterator[dict]:
        """Yield ``{column: 1-D ndarray}`` for consecutive batches of rows.

        Parameters
        ----------
        columns : sequence of str
            Numeric columns (names as in :attr:`names`), read as numbers.
        batch_rows : int
            Rows per batch (a target for CSV, where batches follow byte blocks).
        raw : sequence of str
            Columns read as they are stored (identifiers: integers or strings;
            CSV text stays text, so ``"007"`` keeps its zeros).
        """
        return self._reader(list(columns), int(batch_rows), list(raw))


def _numeric_1d(values, name: str, path: str) -> np.ndarray:
    """A source column as a 1-D numeric numpy array (native byte order)."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise InputError(f"{path}: column {name!r} holds arrays of shape {a.shape[1:]} per "
                         f"row; expected one number per row (split vector columns first).")
    if a.dtype.kind == "b":
        raise InputTypeError(f"{path}: column {name!r} is boolean; expected numbers.")
    if a.dtype.kind not in "fiu":
        raise InputTypeError(f"{path}: column {name!r} has type {a.dtype}; expected numbers.")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _open_csv(path: str, engine: str | None) -> TableSource:
    if engine not in (None, "pyarrow", "python"):
        raise InputError(f"engine: expected 'pyarrow' or 'python'; found {engine!r}.")
    if engine != "python":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            if engine == "pyarrow":
                raise _missing_module("pyarrow", "CSV (engine='pyarrow')") from None
            engine = "python"
        else:
            engine = "pyarrow"
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    if engine == "python":
        with _open_text(path) as f:
            header = next(csv.reader(f, delimiter=delimiter), None)
        if not header:
            raise InputError(f"{path}: empty file; expected a header line naming the columns.")
        names = [h.strip() for h in header]

        def reader(columns, batch_rows, raw):
            return _csv_python_batches(path, names, columns, batch_rows, delimiter, raw)
    else:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        try:
            with pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter)
                                ) as r:
                names = list(r.schema.names)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a readable CSV file ({_first_line(e)}).") from None

        def reader(columns, batch_rows, raw):
            return _csv_arrow_batches(path, columns, batch_rows, delimiter, raw)
    return TableSource(path, "csv", names, None, {}, reader)


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        import gzip
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _csv_arrow_batches(path, columns, batch_rows, delimiter, raw=()):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # byte blocks of ~32 bytes a row: batches near batch_rows for typical tables
    block = int(min(max(batch_rows * 32, 1 << 20), 1 << 28))
    read = list(dict.fromkeys(list(columns) + list(raw)))
    types = {**{c: pa.float64() for c in columns}, **{c: pa.string() for c in raw}}
    convert = pacsv.ConvertOptions(include_columns=read, null_values=list(_CSV_NULLS),
                                   strings_can_be_null=True, column_types=types)
    try:
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter),
                            convert_options=convert) as r:
            for rb in r:
                yield {c: rb.column(c).to_numpy(zero_copy_only=False) for c in read}
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: {_first_line(e)}") from None


def _parse_floats(tokens: list, name: str, path: str, row0: int) -> np.ndarray:
    nulls = set(_CSV_NULLS)
    out = np.empty(len(tokens))
    for i, t in enumerate(tokens):
        t = t.strip()
        if t in nulls:
            out[i] = np.nan
            continue
        try:
            out[i] = float(t)
        except ValueError:
            raise InputError(f"{path}: row {row0 + i} (data line {row0 + i + 2}), column "
                             f"{name!r}: {t!r} is not a number.") from None
    return out


def _csv_python_batches(path, names, columns, batch_rows, delimiter, raw=()):
    index = [names.index(c) for c in columns]
    raw_index = [names.index(c) for c in raw]

    def parsed(buf, start):
        out = {c: _parse_floats([r[j] for r in buf], c, path, start)
               for c, j in zip(columns, index)}
        out.update({c: np.array([r[j].strip() for r in buf], dtype=str)
                    for c, j in zip(raw, raw_index)})
        return out

    width = len(names)
    with _open_text(path) as f:
        rows = csv.reader(f, delimiter=delimiter)
        next(rows)                                  # header
        start, buf = 0, []
        for line_no, row in enumerate(rows, start=2):
            if not row:                             # blank line
                continue
            if len(row) != width:
                raise InputError(f"{path}: line {line_no} has {len(row)} fields; the header "
                                 f"names {width}.")
            buf.append(row)
            if len(buf) == batch_rows:
                yield parsed(buf, start)
                start += len(buf)
                buf = []
        if buf:
            yield parsed(buf, start)


def _open_parquet(path: str) -> TableSource:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _missing_module("pyarrow", "Parquet") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(e)}).") from None
    schema = pf.schema_arrow
    dtypes = {}
    for f in schema:
        try:
            dtypes[f.name] = np.dtype(f.type.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            dtypes[f.name] = None

    def reader(columns, batch_rows, raw):
        read = list(dict.fromkeys(list(columns) + list(raw)))
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, columns=read):
                out = {}
                for c in raw:
                    out[c] = rb.column(c).to_numpy(zero_copy_only=False)
                for c in columns:
                    col = rb.column(c)
                    if col.null_count and pa.types.is_integer(col.type):
                        col = col.cast(pa.float64())   # nulls become NaN, values exact
                    out[c] = _numeric_1d(col.to_numpy(zero_copy_only=False), c, path)
                yield out
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise InputError(f"{path}: {_first_line(e)}") from None

    return TableSource(path, "parquet", list(schema.names), int(pf.metadata.num_rows), dtypes,
                       reader)


def _open_fits(path: str, hdu) -> TableSource:
    try:
        from astropy.io import fits
    except ImportError:
        raise _missing_module("astropy", "FITS") from None
    try:
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable FITS file ({_first_line(e)}).") from None
    with hdul:
        tables = [i for i, h in enumerate(hdul)
                  if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
        if hdu is None:
            if not tables:
                raise InputError(f"{path}: no table HDU; expected a binary or ASCII table.")
            index = tables[0]
        else:
            key = int(hdu) if str(hdu).isdigit() else hdu
            try:
                index = hdul.index_of(key)
            except (KeyError, IndexError):
                raise InputError(f"{path}: no HDU {hdu!r}; table HDUs: {tables}.") from None
            if index not in tables:
                raise InputError(f"{path}: HDU {hdu!r} is not a table; table HDUs: {tables}.")
        table = hdul[index]
        names = list(table.columns.names)
        n = int(table.header.get("NAXIS2", 0))
        dtypes = {}
        for col in table.columns:
            try:
                dtypes[col.name] = np.dtype(col.dtype).newbyteorder("=")
            except (TypeError, AttributeError):
                dtypes[col.name] = None

    def reader(columns, batch_rows, raw):
        with fits.open(path, memmap=True) as hl:
            data = hl[index].data
            for start in range(0, n, batch_rows):
                rows = data[start:start + batch_rows]   # a view: only these rows are read
                out = {c: np.array(rows.field(c)) for c in raw}
                out.update({c: _numeric_1d(rows.field(c), c, path) for c in columns})
                yield out

    return TableSource(path, "fits", names, n, dtypes, reader)


def _open_npy(path: str) -> TableSource:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy file ({_first_line(e)}).") from None
    if arr.dtype.names:
        if arr.ndim != 1:
            raise InputError(f"{path}: structured array of shape {arr.shape}; expected 1-D.")
        names = list(arr.dtype.names)
        dtypes = {c: arr.dtype[c] for c in names}

        def column(block, c):
            return block[c]
    else:
        if arr.ndim != 2:
            raise InputError(f"{path}: array of shape {arr.shape}; expected (N, D) or a "
                             f"structured (N,) array.")
        names = [f"x{j}" for j in range(arr.shape[1])]
        dtypes = {c: arr.dtype for c in names}

        def column(block, c):
            return block[:, names.index(c)]

    def reader(columns, batch_rows, raw):
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        for start in range(0, a.shape[0], batch_rows):
            block = np.asarray(a[start:start + batch_rows])
            out = {c: np.asarray(column(block, c)) for c in raw}
            out.update({c: _numeric_1d(column(block, c), c, path) for c in columns})
            yield out

    return TableSource(path, "npy", names, int(arr.shape[0]), dtypes, reader)


def open_table(source, fmt: str | None = None, *, hdu=None, csv_engine: str | None = None
               ) -> TableSource:
    """Open a table file for batch reading.

    Parameters
    ----------
    source : str or os.PathLike
        Local file.
    fmt : {"csv", "parquet", "fits", "npy"}, optional
        Default: from the suffix (:func:`detect_format`).
    hdu : int or str, optional
        FITS: index or name of the table HDU (default: the first table).
    csv_engine : {"pyarrow", "python"}, optional
        CSV reader (default pyarrow when installed).

    Returns
    -------
    TableSource
    """
    path = os.fspath(source)
    fmt = detect_format(path, fmt)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file.")
    if hdu is not None and fmt != "fits":
        raise InputError(f"hdu: only FITS files have HDUs; {path} is {fmt}.")
    if fmt == "csv":
        return _open_csv(path, csv_engine)
    if fmt == "parquet":
        return _open_parquet(path)
    if fmt == "fits":
        return _open_fits(path, hdu)
    return _open_npy(path)


# ------------------------------------------------------------------ covariances


def errors_to_covar(errors: np.ndarray, *, variances: bool = False,
                    correlations: Sequence[tuple[int, int, np.ndarray]] = (),
                    values: np.ndarray | None = None, row_offset: int = 0) -> np.ndarray:
    """Noise covariances from per-row error columns.

    Parameters
    ----------
    errors : ndarray, shape (n, D)
        Standard deviations (or variances with ``variances=True``).
    variances : bool
        ``errors`` are variances already.
    correlations : sequence of (j, k, rho)
        Correlation coefficients ``rho`` (shape (n,)) between features ``j`` and
        ``k``; with any, the result is full (n, D, D).
    values : ndarray, shape (n, D), optional
        The rows' values: errors of missing (NaN) values are not checked.
    row_offset : int
        Global index of the first row (for messages).

    Returns
    -------
    ndarray, float64
        (n, D) diagonal variances, or (n, D, D) with correlations.

    Raises
    ------
    InputError
        Negative or non-finite errors, or correlations outside [-1, 1], where the
        values are observed.
    """
    err = np.asarray(errors, dtype=np.float64)
    observed = np.ones(err.shape, bool) if values is None else ~np.isnan(values)
    what = "variance" if variances else "standard deviation"
    bad = observed & ~(np.isfinite(err) & (err >= 0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"errors: row {row_offset + int(i)}, error column {int(j)} is "
                         f"{err[i, j]}; expected a finite {what} >= 0 where the value is "
                         f"observed ({int(bad.sum())} such entries in this batch).")
    var = err if variances else err * err
    if not correlations:
        return var
    n, D = var.shape
    # standard deviations as given (sqrt(s**2) may differ from s in the last bit)
    sd = np.sqrt(var) if variances else err
    cov = np.zeros((n, D, D))
    idx = np.arange(D)
    cov[:, idx, idx] = var
    for j, k, rho in correlations:
        rho = np.asarray(rho, dtype=np.float64)
        both = observed[:, j] & observed[:, k]
        bad = both & ~(np.abs(rho) <= 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"correlations: row {row_offset + i}, correlation of columns "
                             f"{j} and {k} is {rho[i]}; expected a value in [-1, 1].")
        c = np.where(both, rho * sd[:, j] * sd[:, k], 0.0)
        cov[:, j, k] = c
        cov[:, k, j] = c
    return cov


# --------------------------------------------------------------------- writers


def _check_target(path: str, overwrite: bool) -> None:
    if _is_url(path):
        raise InputError(f"path: {path}: streaming writers write local directories only.")
    check_new_output(path, overwrite, hint="overwrite=True (--overwrite)",
                     exists_error=StoreExistsError)


class CatalogWriter:
    """Append rows to a new catalog, streaming; the result reads with :func:`open_catalog`.

    The layout is that of :func:`daskgmmis.write_catalog` (arrays ``data`` and
    ``covar`` chunked along rows, the same group attributes). Rows are buffered
    until a whole chunk is ready, so every Zarr chunk is written once. The store
    lives under a temporary name until :meth:`close`; :meth:`abort` (or an
    exception inside a ``with`` block) deletes it.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory of the new catalog.
    columns : sequence of str
        Feature names (D of them).
    covar_kind : {"none", "diag", "full"}
        Noise stored per row.
    chunk_rows : int
        Rows per chunk (use :func:`daskgmmis.catalog.default_row_chunk` of the
        final row count to chunk as :func:`write_catalog` would).
    dtype : numpy dtype
        float32 or float64 for ``data`` (``covar`` is always float64).
    overwrite : bool
        Replace an existing store at :meth:`close`.
    id_name : str, optional
        Name of an identifier column carried with the rows (every :meth:`append`
        then passes ``ids``).
    id_dtype : {"int64", "str"}
        Storage of the identifiers: integers, or variable-length strings.
    allow_empty : bool
        Write a catalog of no rows instead of refusing one (a part of a
        many-file table whose rows were all dropped).
    weights : bool
        The catalog stores per-row weights (every :meth:`append` then passes
        ``weights``).

    Examples
    --------
    >>> with CatalogWriter("cat.zarr", ["a", "b"], "diag", chunk_rows=65536) as w:
    ...     for x, var in batches:
    ...         w.append(x, var)
    >>> cat = w.catalog
    """

    def __init__(self, path, columns: Sequence[str], covar_kind: str = "none", *,
                 chunk_rows: int, dtype=np.float64, overwrite: bool = False,
                 id_name: str | None = None, id_dtype: str = "int64",
                 allow_empty: bool = False, weights: bool = False):
        self.path = os.fspath(path)
        self.columns = [str(c) for c in columns]
        self.D = len(self.columns)
        if self.D < 1:
            raise InputError("columns: expected at least one column.")
        if covar_kind not in STORED_KINDS:
            raise InputError(f"covar_kind: expected 'none', 'diag' or 'full'; found "
                             f"{covar_kind!r}.")
        self.kind = covar_kind
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise InputError(f"dtype: expected float32 or float64; found {self.dtype}.")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
                or chunk_rows < 1:
            raise InputError(f"chunk_rows: expected a positive integer; found {chunk_rows!r}.")
        self.chunk_rows = int(chunk_rows)
        self.overwrite = bool(overwrite)
        if id_name is not None and (not isinstance(id_name, str) or not id_name
                                    or id_name in self.columns):
            raise InputError(f"id_name: expected a name for the identifier column that is "
                             f"not a feature name ({self.columns}); found {id_name!r}.")
        if id_dtype not in ("int64", "str"):
            raise InputError(f"id_dtype: expected 'int64' or 'str'; found {id_dtype!r}.")
        self.id_name = id_name
        self.allow_empty = bool(allow_empty)
        _check_target(self.path, self.overwrite)
        self.n_rows = 0                  # rows written or buffered
        self.catalog: Catalog | None = None
        self._buf_x: list = []
        self._buf_c: list = []
        self._buf_i: list = []
        self._buf_w: list = []
        self._buffered = 0
        self._tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            group = zarr.open_group(self._tmp, mode="w-", zarr_format=3)
            group.attrs.update({"daskgmmis_format": CATALOG_FORMAT,
                                "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                                "columns": self.columns, "covar_kind": self.kind,
                                "order": "input"})
            if id_name is not None:
                group.attrs["id_name"] = id_name
            D, rows = self.D, self.chunk_rows
            self._data = complete_array(group, "data", (0, D), self.dtype, (rows, D))
            self._covar = None
            if noise_class(self.kind).noisy:
                tail = noise_class(self.kind).array_shape(0, D)[1:]
                self._covar = complete_array(group, "covar", (0,) + tail, np.float64,
                                             (rows,) + tail)
            self._ids = None
            if id_name is not None:
                self._ids = complete_array(group, "ids", (0,),
                                           np.int64 if id_dtype == "int64" else str, (rows,))
            self._weights = (complete_array(group, "weights", (0,), np.float64, (rows,))
                             if weights else None)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._open = True

    def __enter__(self) -> "CatalogWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self._open:
                self.close()
        else:
            self.abort()

    def append(self, x, covar=None, ids=None, weights=None) -> None:
        """Validate and append a batch of rows.

        Parameters
        ----------
        x : array_like, shape (n, D)
            Values, NaN = missing.
        covar : array_like, optional
            (n, D) diagonal variances or (n, D, D) covariances, as declared by
            ``covar_kind``.
        ids : array_like, shape (n,), optional
            The rows' identifiers; required with ``id_name``, refused without.
        weights : array_like, shape (n,), optional
            The rows' weights (>= 0); required when the writer stores weights.
        """
        if not self._open:
            raise InputError("CatalogWriter: already closed.")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise InputError(f"x: expected shape (n, {self.D}); found {x.shape}.")
        x = x.astype(self.dtype, copy=False)
        check_data_block(x, self.n_rows)
        if (ids is None) != (self._ids is None):
            raise InputError(f"ids: {'expected' if ids is None else 'unexpected'} row "
                             f"identifiers (id_name={self.id_name!r}).")
        if ids is not None:
            ids = check_ids(ids, x.shape[0], f"{self.id_name} (rows {self.n_rows}..)")
            if (ids.dtype.kind == "i") != (self._ids.dtype == np.int64):
                raise InputTypeError(f"{self.id_name}: rows {self.n_rows}.. hold "
                                     f"{'integers' if ids.dtype.kind == 'i' else 'strings'}; "
                                     f"this catalog stores "
                                     f"{'integers' if self._ids.dtype == np.int64 else 'strings'}.")
            self._buf_i.append(ids)
        if (weights is None) != (self._weights is None):
            raise InputError(f"weights: {'expected' if weights is None else 'unexpected'} "
                             f"row weights (this catalog "
                             f"{'stores' if self._weights is not None else 'has no'} weights).")
        if weights is not None:
            weights = np.asarray(weights)
            if weights.shape != (x.shape[0],):
                raise InputError(f"weights: expected shape ({x.shape[0]},); found "
                                 f"{weights.shape}.")
            self._buf_w.append(check_weights_block(weights, self.n_rows))
        stored = noise_class(self.kind)
        if not stored.noisy:
            if covar is not None:
                raise InputError("covar: this catalog stores no noise (covar_kind='none').")
        else:
            tail = stored.array_shape(0, self.D)[1:]
            if covar is None:
                raise InputError(f"covar: expected shape (n,) + {tail} for "
                                 f"covar_kind={self.kind!r}; found None.")
            covar = np.asarray(covar, dtype=np.float64)
            if covar.shape != (x.shape[0],) + tail:
                raise InputError(f"covar: expected shape {(x.shape[0],) + tail}; found "
                                 f"{covar.shape}.")
            stored.from_array(covar).validate(x, self.n_rows)
            self._buf_c.append(covar)
        self._buf_x.append(x)
        self._buffered += x.shape[0]
        self.n_rows += x.shape[0]
        if self._buffered >= self.chunk_rows:
            self._flush(whole_chunks_only=True)

    def _flush(self, whole_chunks_only: bool) -> None:
        if not self._buffered:
            return
        x = np.concatenate(self._buf_x)
        c = np.concatenate(self._buf_c) if self._buf_c else None
        i = np.concatenate(self._buf_i) if self._buf_i else None
        w = np.concatenate(self._buf_w) if self._buf_w else None
        n = x.shape[0]
        # writing whole chunks only keeps every Zarr chunk written exactly once
        m = (n // self.chunk_rows) * self.chunk_rows if whole_chunks_only else n
        if m:
            self._data.append(x[:m], axis=0)
            if c is not None:
                self._covar.append(c[:m], axis=0)
            if i is not None:
                self._ids.append(i[:m], axis=0)
            if w is not None:
                self._weights.append(w[:m], axis=0)
        self._buf_x = [x[m:]] if m < n else []
        self._buf_c = [c[m:]] if c is not None and m < n else []
        self._buf_i = [i[m:]] if i is not None and m < n else []
        self._buf_w = [w[m:]] if w is not None and m < n else []
        self._buffered = n - m

    def close(self) -> Catalog:
        """Write the remaining rows, move the catalog into place and open it.

        Returns
        -------
        Catalog

        Raises
        ------
        InputError
            No row was appended.
        """
        if not self._open:
            raise InputError("CatalogWriter: already closed.")
        try:
            if self.n_rows == 0 and not self.allow_empty:
                raise InputError(f"{self.path}: no rows to write; the source is empty.")
            self._flush(whole_chunks_only=False)
            install_store(self._tmp, self.path, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._open = False
        self.catalog = open_catalog(self.path)
        return self.catalog

    def abort(self) -> None:
        """Delete the unfinished store."""
        self._open = False
        shutil.rmtree(self._tmp, ignore_errors=True)


# ------------------------------------------------------------------------ ingest


def _parse_correlations(correlations, columns: list) -> list:
    """[(value_a, value_b, corr_column)] -> [(j, k, corr_column)]."""
    out = []
    for item in correlations or ():
        if isinstance(item, str):
            item = tuple(s.strip() for s in item.split(","))
        if len(item) != 3:
            raise InputError(f"correlations: expected (column_a, column_b, correlation_column) "
                             f"triples; found {item!r}.")
        a, b, rho = item
        for c in (a, b):
            if c not in columns:
                raise InputError(f"correlations: {c!r} is not one of the value columns "
                                 f"{columns}.")
        if a == b:
            raise InputError(f"correlations: a column cannot be correlated with itself "
                             f"({a!r}).")
        out.append((columns.index(a), columns.index(b), rho))
    pairs = [tuple(sorted((j, k))) for j, k, _ in out]
    if len(set(pairs)) != len(pairs):
        raise InputError("correlations: a pair of columns is given twice.")
    return out


def _as_names(value, what: str, unique: bool = True) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    names = [str(v) for v in value]
    if not names or any(not n for n in names):
        raise InputError(f"{what}: expected a comma-separated list of column names; found "
                         f"{value!r}.")
    if unique and len(set(names)) != len(names):
        raise InputError(f"{what}: a column is named twice in {names}.")
    return names


@dataclass
class _Plan:
    """What to read from a table and how to turn it into catalog rows."""

    value_names: list
    value_cols: list
    error_cols: list | None
    corr: list
    id_col: str | None
    kind: str
    variances: bool
    drop_empty: bool
    weight_col: str | None = None

    @property
    def D(self) -> int:
        return len(self.value_cols)

    @property
    def read(self) -> list:
        return list(dict.fromkeys(self.value_cols + (self.error_cols or [])
                                  + [r for _, _, r in self.corr]
                                  + ([self.weight_col] if self.weight_col else [])))


def _plan(src: TableSource, columns, errors, variances: bool, correlations, id_column,
          drop_empty: bool, weight_column=None) -> _Plan:
    """Resolve the column arguments of :func:`ingest` against a table's columns."""
    value_names = _as_names(columns, "columns")
    # one error column may serve several values (e.g. a shared positional error)
    error_names = _as_names(errors, "errors", unique=False)
    corr_items = [tuple(s.strip() for s in c.split(",")) if isinstance(c, str) else tuple(c)
                  for c in (correlations or ())]
    id_col = None if id_column is None else src.resolve(str(id_column))
    weight_col = None if weight_column is None else src.resolve(str(weight_column))
    if value_names is None:
        taken = ({src.resolve(c) for c in error_names or ()}
                 | {src.resolve(c[2]) for c in corr_items if len(c) == 3}
                 | {id_col, weight_col})
        value_names = [n for n in src.names if n not in taken]
        log.info("ingest: features %s (every column of %s not named by errors, correlations, "
                 "id_column or weight_column)", ", ".join(value_names), src.path)
    value_cols = [src.resolve(c) for c in value_names]
    for what, col, role in (("id_column", id_col, "an identifier is carried with the rows"),
                            ("weight_column", weight_col, "a weight multiplies the rows")):
        if col is not None and col in value_cols:
            raise InputError(f"{what}: {col!r} is also named as a feature column; {role}, "
                             f"not fitted.")
    if weight_col is not None and weight_col == id_col:
        raise InputError(f"weight_column: {weight_col!r} is also the identifier column.")
    D = len(value_cols)
    error_cols = None
    if error_names is not None:
        if len(error_names) != D:
            raise InputError(f"errors: expected one error column per value column ({D}); "
                             f"found {len(error_names)}.")
        error_cols = [src.resolve(c) for c in error_names]
    elif variances:
        raise InputError("variances: given without error columns (errors).")
    corr = _parse_correlations(corr_items, value_names)
    if corr and error_cols is None:
        raise InputError("correlations: need error columns (errors) to scale them.")
    corr = [(j, k, src.resolve(rho)) for j, k, rho in corr]
    kind = "none" if error_cols is None else ("full" if corr else "diag")
    return _Plan(value_names, value_cols, error_cols, corr, id_col, kind, variances,
                 drop_empty, weight_col)


def _id_dtype(src: TableSource, plan: _Plan) -> str:
    known = src.dtypes.get(plan.id_col) if plan.id_col is not None else None
    # CSV identifiers stay text: "007" keeps its zeros
    return "int64" if known is not None and known.kind in "iu" else "str"


def _rows(src: TableSource, plan: _Plan, batch_rows: int, progress=None):
    """Yield ``(x, covar, ids, weights, dropped_rows, dropped_ids)`` per batch of ``src``.

    Rows are validated as they are read; ``dropped_rows`` are the positions in
    ``src`` of rows with every value missing (skipped with ``drop_empty``, else an
    error naming the first).
    """
    n_read = 0
    for batch in src.batches(plan.read, batch_rows,
                             raw=[plan.id_col] if plan.id_col else []):
        x = np.column_stack([batch[c] for c in plan.value_cols]) \
            if batch[plan.read[0]].size else np.empty((0, plan.D))
        n_batch = x.shape[0]
        cov = None
        if plan.error_cols is not None:
            err = np.column_stack([batch[c] for c in plan.error_cols])
            rhos = [(j, k, batch[r]) for j, k, r in plan.corr]
            cov = errors_to_covar(err, variances=plan.variances, correlations=rhos,
                                  values=x, row_offset=n_read)
        ids = None
        if plan.id_col is not None:
            ids = check_ids(batch[plan.id_col], n_batch,
                            f"{src.path}: id column {plan.id_col!r}")
        weights = None
        if plan.weight_col is not None:
            weights = check_weights_block(np.asarray(batch[plan.weight_col], dtype=np.float64),
                                          n_read, f"{src.path}: weight column "
                                                  f"{plan.weight_col!r}")
        empty = np.isnan(x).all(axis=1)
        if empty.any() and not plan.drop_empty:
            i = int(np.flatnonzero(empty)[0])
            raise InputError(f"{src.path}: row {n_read + i} has every value missing "
                             f"(columns {plan.value_names}); a fit cannot use such rows. "
                             f"Pass drop_empty=True (--drop-empty) to skip them.")
        dropped_rows = n_read + np.flatnonzero(empty)
        dropped_ids = None
        if empty.any():
            if ids is not None:
                dropped_ids, ids = ids[empty], ids[~empty]
            x = x[~empty]
            cov = None if cov is None else cov[~empty]
            weights = None if weights is None else weights[~empty]
        yield x, cov, ids, weights, dropped_rows, dropped_ids
        n_read += n_batch
        if progress is not None:
            progress(n_read)


def _copy_rows(src: TableSource, plan: _Plan, writer: "CatalogWriter", batch_rows: int,
               progress=None) -> tuple[int, list, list]:
    """Stream ``src`` into ``writer``; (rows read, dropped positions, dropped ids)."""
    n_read, dropped_rows, dropped_ids = 0, [], []
    for x, cov, ids, weights, d_rows, d_ids in _rows(src, plan, batch_rows, progress):
        if x.shape[0]:
            writer.append(x, cov, ids, weights)
        dropped_rows.append(d_rows)
        if d_ids is not None:
            dropped_ids.append(d_ids)
    n_read = writer.n_rows + sum(len(d) for d in dropped_rows)
    return n_read, dropped_rows, dropped_ids


def table_parts(source) -> list | None:
    """The part files of a many-file table, in name order; None for one file.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        A directory (its files with a table suffix), a glob pattern
        (``"parts/*.parquet"``), a list of files, or one file.

    Returns
    -------
    list of str or None
    """
    import glob

    if isinstance(source, (list, tuple)):
        parts = [os.fspath(p) for p in source]
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            parts = [os.path.join(path, n) for n in os.listdir(path)
                     if not n.startswith(".") and any(n.lower().endswith(s) for s in _SUFFIXES)]
        elif any(c in path for c in "*?[") and not os.path.exists(path):
            parts = glob.glob(path)
        else:
            return None
        if not parts:
            raise InputError(f"source: {path} names no table files (expected files ending in "
                             f"{sorted(_SUFFIXES)}).")
    # natural order: part-2 before part-10
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]  # noqa: E731
    return sorted(parts, key=key)


def _ingest_part(part: str, store: str, plan: _Plan, fmt, hdu, csv_engine, batch_rows: int,
                 dtype: str, id_dtype: str, chunk_rows: int):
    """One part of a many-file table into its own (temporary) catalog; runs on a worker.

    Returns
    -------
    (rows read, rows kept, dropped positions in the part, dropped ids or None)
    """
    try:
        src = open_table(part, fmt, hdu=hdu, csv_engine=csv_engine)
        part_plan = _plan(src, plan.value_names, _names_of(plan.error_cols), plan.variances,
                          [(plan.value_names[j], plan.value_names[k], r)
                           for j, k, r in plan.corr], plan.id_col, plan.drop_empty,
                          plan.weight_col)
        with CatalogWriter(store, plan.value_names, plan.kind, chunk_rows=chunk_rows,
                           dtype=np.dtype(dtype), id_name=plan.id_col, id_dtype=id_dtype,
                           allow_empty=True, weights=plan.weight_col is not None) as writer:
            n_read, d_rows, d_ids = _copy_rows(src, part_plan, writer, batch_rows)
    except (InputError, InputTypeError) as e:
        # rows are counted within the part: name it
        message = str(e) if str(e).startswith(part) else f"{part}: {e}"
        raise type(e)(message) from None
    rows = np.concatenate(d_rows) if d_rows else np.empty(0, np.int64)
    ids = np.concatenate(d_ids) if d_ids else None
    return n_read, writer.n_rows, rows, ids


def _settled(*args):
    """:func:`_ingest_part`, with its error returned rather than raised, so that every
    part task has finished (none still writing) when the scratch space is removed."""
    try:
        return _ingest_part(*args)
    except Exception as e:   # noqa: BLE001 - re-raised by the caller, whole
        return e


def _names_of(cols):
    return None if cols is None else list(cols)


def _ingest_parts(parts: list, path: str, plan: _Plan, *, fmt, hdu, csv_engine,
                  batch_rows: int, chunks, dtype: str, id_dtype: str, overwrite: bool):
    """Convert many parts in parallel (one task per part), then join them into one catalog.

    Each part becomes a temporary catalog beside the destination (validated and
    written by a worker); the parts' rows are then written, chunk-aligned, into
    the catalog under a temporary name that is renamed into place only when
    complete. A killed ingest leaves temporaries (``<path>.parts-*``,
    ``<path>.tmp-*``), never a partial catalog, and can be rerun.

    Returns
    -------
    (Catalog, rows read, dropped positions, dropped ids)
    """
    import dask
    import dask.array as da

    scratch = f"{path}.parts-{uuid.uuid4().hex[:8]}"
    os.makedirs(scratch)
    try:
        stores = [os.path.join(scratch, f"part-{i:06d}.zarr") for i in range(len(parts))]
        tasks = [dask.delayed(_settled, pure=False)(
            p, st, plan, fmt, hdu, csv_engine, batch_rows, dtype, id_dtype, batch_rows)
            for p, st in zip(parts, stores)]
        outcomes = dask.compute(*tasks)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
        results = outcomes
        offsets = np.cumsum([0] + [r[0] for r in results])
        # chunked as one file of all the parts' rows would be
        chunk_rows = int(chunks) if chunks is not None else default_row_chunk(
            max(int(offsets[-1]), 1), plan.D, plan.kind)
        dropped_rows = [off + r[2] for off, r in zip(offsets, results)]
        dropped_ids = [r[3] for r in results if r[3] is not None]
        kept = [open_catalog(st) for st, r in zip(stores, results) if r[1] > 0]
        if not kept:
            raise InputError(f"{path}: no rows to write; every part is empty.")
        data = da.concatenate([c.data for c in kept])
        covar = None if plan.error_cols is None else da.concatenate([c.covar for c in kept])
        ids = None if plan.id_col is None else da.concatenate([c.ids for c in kept])
        weights = (None if plan.weight_col is None
                   else da.concatenate([c.weights for c in kept]))
        cat = write_catalog(path, data, covar, chunks=chunk_rows, columns=plan.value_names,
                            overwrite=overwrite, ids=ids, id_name=plan.id_col or "id",
                            weights=weights)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cat, int(offsets[-1]), dropped_rows, dropped_ids


def ingest(source, path, columns=None, errors=None, *, variances: bool = False,
           correlations=None, fmt: str | None = None, hdu=None,
           batch_rows: int = DEFAULT_BATCH_ROWS, chunks: int | None = None,
           dtype: str = "auto", drop_empty: bool = False, overwrite: bool = False,
           csv_engine: str | None = None,
           progress: Callable[[int], None] | None = None, id_column: str | None = None,
           dropped_out=None, weight_column: str | None = None) -> Catalog:
    """Read a table file in batches and write it as a Zarr catalog.

    Parameters
    ----------
    source : str, os.PathLike, or sequence of them
        CSV (``.csv``, ``.tsv``, ``.csv.gz``), Parquet, FITS table or ``.npy`` file;
        or the parts of one table: a directory, a glob pattern (``"parts/*.parquet"``)
        or a list of files (:func:`table_parts`), converted in parallel, one task
        per part on the active dask scheduler (a distributed client's workers),
        into one catalog whose rows are the parts' rows in name order.
    path : str or os.PathLike
        New catalog directory (refused if it exists unless ``overwrite``).
    columns : sequence of str or comma-separated str, optional
        Value columns, in the order of the catalog's features. Default: every
        column of the source that is not named as an error, correlation or
        identifier column (the choice is logged). A plain 2-D ``.npy`` array has
        columns ``x0 .. x{D-1}``.
    errors : sequence of str or comma-separated str, optional
        One error column per value column: standard deviations, or variances
        with ``variances=True``. Without them the catalog has no noise.
    variances : bool
        ``errors`` are variances.
    correlations : sequence of (a, b, rho) or "a,b,rho" strings, optional
        Correlation coefficient column ``rho`` between value columns ``a`` and
        ``b``; the catalog then stores full (N, D, D) covariances.
    fmt : {"csv", "parquet", "fits", "npy"}, optional
        Default: from the suffix.
    hdu : int or str, optional
        FITS table HDU (default: the first table).
    batch_rows : int
        Rows read per batch (bounds memory).
    chunks : int, optional
        Rows per catalog chunk. Default :func:`~daskgmmis.catalog.default_row_chunk`
        of the row count, as :func:`write_catalog` chooses (CSV files then take
        one extra, cheap pass to count their rows).
    dtype : {"auto", "float32", "float64"}
        Storage type of the values; ``"auto"`` keeps float32 when every value
        column is float32 in the source, else float64 (integers and CSV text are
        stored as float64, exactly).
    drop_empty : bool
        Skip rows whose values are all missing (otherwise they are an error: a
        fit cannot use them). They are counted (logged) and can be listed with
        ``dropped_out``.
    overwrite : bool
        Replace an existing catalog.
    csv_engine : {"pyarrow", "python"}, optional
        CSV reader; default pyarrow when installed.
    progress : callable, optional
        Called with the number of rows read so far after every batch.
    id_column : str, optional
        Identifier column (integers or strings, none missing) kept with its rows
        in the catalog, under its own name, and written first in every per-row
        output so that results join back to the source table. CSV identifiers
        are kept as text.
    dropped_out : str or os.PathLike, optional
        With ``drop_empty``: a ``.csv``, ``.parquet`` or ``.zarr`` listing the rows
        skipped (``source_row``, their position in the source, and the
        identifier); written only when rows were skipped.
    weight_column : str, optional
        Per-row weight column (finite, >= 0), stored as the catalog's ``weights``:
        a row of weight w counts as w rows in every fit and score of the catalog.

    Returns
    -------
    Catalog
        The new catalog, opened.

    Raises
    ------
    InputError, InputTypeError
        Unknown or unreadable file, missing columns, non-numeric values, Inf,
        invalid errors or correlations, rows with every value missing.
    StoreExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    parts = table_parts(source)
    check_not_input(path, parts or [source], "path")
    _check_target(path, overwrite)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) \
            or batch_rows < 1:
        raise InputError(f"batch_rows: expected a positive integer; found {batch_rows!r}.")
    if dtype not in ("auto", "float32", "float64"):
        raise InputError(f"dtype: expected 'auto', 'float32' or 'float64'; found {dtype!r}.")
    src = open_table(parts[0] if parts else source, fmt, hdu=hdu, csv_engine=csv_engine)
    plan = _plan(src, columns, errors, variances, correlations, id_column, drop_empty,
                 weight_column)
    if dropped_out is not None:
        if not drop_empty:
            raise InputError("dropped_out: lists the rows that drop_empty skips; pass "
                             "drop_empty=True (--drop-empty) too.")
        table_format(dropped_out)
    if dtype == "auto":
        known = [src.dtypes.get(c) for c in plan.value_cols]
        dtype = "float32" if all(d is not None and d == np.float32 for d in known) else "float64"
    id_dtype = _id_dtype(src, plan)

    if parts:
        writer_catalog, n_read, dropped_rows, dropped_ids = _ingest_parts(
            parts, path, plan, fmt=fmt, hdu=hdu, csv_engine=csv_engine,
            batch_rows=batch_rows, chunks=chunks, dtype=dtype, id_dtype=id_dtype,
            overwrite=overwrite)
        if progress is not None:
            progress(n_read)
    else:
        if chunks is None:
            n = src.num_rows
            if n is None:    # CSV: count rows in one pass over a single column
                n = sum(len(b[plan.read[0]]) for b in src.batches(plan.read[:1], batch_rows))
            chunk_rows = default_row_chunk(max(n, 1), plan.D, plan.kind)
        else:
            chunk_rows = int(chunks)
        with CatalogWriter(path, plan.value_names, plan.kind, chunk_rows=chunk_rows,
                           dtype=np.dtype(dtype), overwrite=overwrite, id_name=plan.id_col,
                           id_dtype=id_dtype, weights=plan.weight_col is not None) as writer:
            n_read, dropped_rows, dropped_ids = _copy_rows(src, plan, writer, batch_rows,
                                                           progress)
        writer_catalog = writer.catalog
    n_dropped = sum(len(d) for d in dropped_rows)
    if n_dropped:
        listed = {"source_row": np.concatenate(dropped_rows)}
        if dropped_ids:
            listed[plan.id_col] = np.concatenate(dropped_ids)
        if dropped_out is not None:
            write_table(dropped_out, listed, overwrite=overwrite,
                        attrs={"source": os.path.abspath(os.fspath(source)) if not parts else
                               [os.path.abspath(p) for p in parts],
                               "dropped": "every value missing"})
        log.warning("ingest: dropped %d rows with every value missing%s", n_dropped,
                    f" (listed in {os.fspath(dropped_out)})" if dropped_out is not None else
                    " (list them with dropped_out / --dropped-out FILE)")
    return writer_catalog
