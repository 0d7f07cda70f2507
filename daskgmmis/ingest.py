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
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import zarr

from .catalog import (_is_url, CATALOG_FORMAT, CATALOG_FORMAT_VERSION, Catalog,
                      complete_array, default_row_chunk, install_store, new_store,
                      open_catalog)
from .errors import InputError, InputTypeError, StoreExistsError
from .files import check_new_output
from .validation import check_data_block, check_noise_block

__all__ = ["FORMATS", "TableSource", "open_table", "detect_format", "CatalogWriter",
           "ingest", "errors_to_covar", "write_row_arrays"]

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

    def batches(self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS
                ) -> Iterator[dict]:
        """Yield ``{column: 1-D float ndarray}`` for consecutive batches of rows.

        Parameters
        ----------
        columns : sequence of str
            Names as in :attr:`names`.
        batch_rows : int
            Rows per batch (a target for CSV, where batches follow byte blocks).
        """
        return self._reader(list(columns), int(batch_rows))


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

        def reader(columns, batch_rows):
            return _csv_python_batches(path, names, columns, batch_rows, delimiter)
    else:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        try:
            with pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter)
                                ) as r:
                names = list(r.schema.names)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a readable CSV file ({_first_line(e)}).") from None

        def reader(columns, batch_rows):
            return _csv_arrow_batches(path, columns, batch_rows, delimiter)
    return TableSource(path, "csv", names, None, {}, reader)


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        import gzip
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _csv_arrow_batches(path, columns, batch_rows, delimiter):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # byte blocks of ~32 bytes a row: batches near batch_rows for typical tables
    block = int(min(max(batch_rows * 32, 1 << 20), 1 << 28))
    convert = pacsv.ConvertOptions(include_columns=columns, null_values=list(_CSV_NULLS),
                                   strings_can_be_null=True,
                                   column_types={c: pa.float64() for c in columns})
    try:
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter),
                            convert_options=convert) as r:
            for rb in r:
                yield {c: rb.column(c).to_numpy(zero_copy_only=False) for c in columns}
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


def _csv_python_batches(path, names, columns, batch_rows, delimiter):
    index = [names.index(c) for c in columns]
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
                yield {c: _parse_floats([r[j] for r in buf], c, path, start)
                       for c, j in zip(columns, index)}
                start += len(buf)
                buf = []
        if buf:
            yield {c: _parse_floats([r[j] for r in buf], c, path, start)
                   for c, j in zip(columns, index)}


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

    def reader(columns, batch_rows):
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, columns=columns):
                out = {}
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

    def reader(columns, batch_rows):
        with fits.open(path, memmap=True) as hl:
            data = hl[index].data
            for start in range(0, n, batch_rows):
                rows = data[start:start + batch_rows]   # a view: only these rows are read
                yield {c: _numeric_1d(rows.field(c), c, path) for c in columns}

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

    def reader(columns, batch_rows):
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        for start in range(0, a.shape[0], batch_rows):
            block = np.asarray(a[start:start + batch_rows])
            yield {c: _numeric_1d(column(block, c), c, path) for c in columns}

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

    Examples
    --------
    >>> with CatalogWriter("cat.zarr", ["a", "b"], "diag", chunk_rows=65536) as w:
    ...     for x, var in batches:
    ...         w.append(x, var)
    >>> cat = w.catalog
    """

    def __init__(self, path, columns: Sequence[str], covar_kind: str = "none", *,
                 chunk_rows: int, dtype=np.float64, overwrite: bool = False):
        self.path = os.fspath(path)
        self.columns = [str(c) for c in columns]
        self.D = len(self.columns)
        if self.D < 1:
            raise InputError("columns: expected at least one column.")
        if covar_kind not in ("none", "diag", "full"):
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
        _check_target(self.path, self.overwrite)
        self.n_rows = 0                  # rows written or buffered
        self.catalog: Catalog | None = None
        self._buf_x: list = []
        self._buf_c: list = []
        self._buffered = 0
        self._tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            group = zarr.open_group(self._tmp, mode="w-", zarr_format=3)
            group.attrs.update({"daskgmmis_format": CATALOG_FORMAT,
                                "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                                "columns": self.columns, "covar_kind": self.kind,
                                "order": "input"})
            D, rows = self.D, self.chunk_rows
            self._data = complete_array(group, "data", (0, D), self.dtype, (rows, D))
            self._covar = None
            if self.kind != "none":
                tail = (D,) if self.kind == "diag" else (D, D)
                self._covar = complete_array(group, "covar", (0,) + tail, np.float64,
                                             (rows,) + tail)
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

    def append(self, x, covar=None) -> None:
        """Validate and append a batch of rows.

        Parameters
        ----------
        x : array_like, shape (n, D)
            Values, NaN = missing.
        covar : array_like, optional
            (n, D) diagonal variances or (n, D, D) covariances, as declared by
            ``covar_kind``.
        """
        if not self._open:
            raise InputError("CatalogWriter: already closed.")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise InputError(f"x: expected shape (n, {self.D}); found {x.shape}.")
        x = x.astype(self.dtype, copy=False)
        check_data_block(x, self.n_rows)
        if self.kind == "none":
            if covar is not None:
                raise InputError("covar: this catalog stores no noise (covar_kind='none').")
        else:
            tail = (self.D,) if self.kind == "diag" else (self.D, self.D)
            if covar is None:
                raise InputError(f"covar: expected shape (n,) + {tail} for "
                                 f"covar_kind={self.kind!r}; found None.")
            covar = np.asarray(covar, dtype=np.float64)
            if covar.shape != (x.shape[0],) + tail:
                raise InputError(f"covar: expected shape {(x.shape[0],) + tail}; found "
                                 f"{covar.shape}.")
            check_noise_block(covar, self.kind, x, self.n_rows)
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
        n = x.shape[0]
        # writing whole chunks only keeps every Zarr chunk written exactly once
        m = (n // self.chunk_rows) * self.chunk_rows if whole_chunks_only else n
        if m:
            self._data.append(x[:m], axis=0)
            if c is not None:
                self._covar.append(c[:m], axis=0)
        self._buf_x = [x[m:]] if m < n else []
        self._buf_c = [c[m:]] if c is not None and m < n else []
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
            if self.n_rows == 0:
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
    _check_target(path, overwrite)
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


def ingest(source, path, columns=None, errors=None, *, variances: bool = False,
           correlations=None, fmt: str | None = None, hdu=None,
           batch_rows: int = DEFAULT_BATCH_ROWS, chunks: int | None = None,
           dtype: str = "auto", drop_empty: bool = False, overwrite: bool = False,
           csv_engine: str | None = None,
           progress: Callable[[int], None] | None = None) -> Catalog:
    """Read a table file in batches and write it as a Zarr catalog.

    Parameters
    ----------
    source : str or os.PathLike
        CSV (``.csv``, ``.tsv``, ``.csv.gz``), Parquet, FITS table or ``.npy`` file.
    path : str or os.PathLike
        New catalog directory (refused if it exists unless ``overwrite``).
    columns : sequence of str or comma-separated str, optional
        Value columns, in the order of the catalog's features. Default: every
        column of the source that is not named as an error or correlation
        column. A plain 2-D ``.npy`` array has columns ``x0 .. x{D-1}``.
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
        fit cannot use them).
    overwrite : bool
        Replace an existing catalog.
    csv_engine : {"pyarrow", "python"}, optional
        CSV reader; default pyarrow when installed.
    progress : callable, optional
        Called with the number of rows read so far after every batch.

    Returns
    -------
    Catalog
        The new catalog, opened.

    Raises
    ------
    InputError, InputTypeError
        Unknown or unreadable file, missing columns, non-numeric values, Inf,
        invalid errors or correlations, rows with every value missing.
    CatalogError
        ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    _check_target(path, overwrite)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) \
            or batch_rows < 1:
        raise InputError(f"batch_rows: expected a positive integer; found {batch_rows!r}.")
    if dtype not in ("auto", "float32", "float64"):
        raise InputError(f"dtype: expected 'auto', 'float32' or 'float64'; found {dtype!r}.")
    src = open_table(source, fmt, hdu=hdu, csv_engine=csv_engine)
    value_names = _as_names(columns, "columns")
    # one error column may serve several values (e.g. a shared positional error)
    error_names = _as_names(errors, "errors", unique=False)
    corr_items = [tuple(s.strip() for s in c.split(",")) if isinstance(c, str) else tuple(c)
                  for c in (correlations or ())]
    if value_names is None:
        taken = set(error_names or ()) | {c[2] for c in corr_items if len(c) == 3}
        value_names = [n for n in src.names if n not in taken]
    value_cols = [src.resolve(c) for c in value_names]
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
    read = list(dict.fromkeys(value_cols + (error_cols or []) + [r for _, _, r in corr]))

    if dtype == "auto":
        known = [src.dtypes.get(c) for c in value_cols]
        dtype = "float32" if all(d is not None and d == np.float32 for d in known) else "float64"
    if chunks is None:
        n = src.num_rows
        if n is None:    # CSV: count rows in one pass over a single column
            n = sum(len(b[read[0]]) for b in src.batches(read[:1], batch_rows))
        chunk_rows = default_row_chunk(max(n, 1), D, kind)
    else:
        chunk_rows = int(chunks)

    n_read = n_dropped = 0
    with CatalogWriter(path, value_names, kind, chunk_rows=chunk_rows, dtype=np.dtype(dtype),
                       overwrite=overwrite) as writer:
        for batch in src.batches(read, batch_rows):
            x = np.column_stack([batch[c] for c in value_cols]) if batch[read[0]].size \
                else np.empty((0, D))
            n_batch = x.shape[0]
            cov = None
            if kind != "none":
                err = np.column_stack([batch[c] for c in error_cols])
                rhos = [(j, k, batch[r]) for j, k, r in corr]
                cov = errors_to_covar(err, variances=variances, correlations=rhos,
                                      values=x, row_offset=n_read)
            empty = np.isnan(x).all(axis=1)
            if empty.any() and not drop_empty:
                i = int(np.flatnonzero(empty)[0])
                raise InputError(f"{src.path}: row {n_read + i} has every value missing "
                                 f"(columns {value_names}); a fit cannot use such rows. "
                                 f"Pass drop_empty=True (--drop-empty) to skip them.")
            if empty.any():
                n_dropped += int(empty.sum())
                x = x[~empty]
                cov = None if cov is None else cov[~empty]
            if x.shape[0]:
                writer.append(x, cov)
            n_read += n_batch
            if progress is not None:
                progress(n_read)
    if n_dropped:
        log.warning("ingest: dropped %d rows with every value missing", n_dropped)
    return writer.catalog
