"""Streaming ingest: CSV, Parquet, FITS and .npy tables into catalogs, exactly."""

import os

import numpy as np
import zarr
import pytest

import daskgmmis as dg
from daskgmmis.catalog import default_row_chunk
from daskgmmis.errors import CatalogError, InputError, InputTypeError
from daskgmmis.ingest import (CatalogWriter, detect_format, errors_to_covar, ingest,
                              open_table, write_row_arrays)

N = 500


def _table(seed=0, n=N):
    rng = np.random.default_rng(seed)
    t = {"a": rng.normal(size=n), "b": rng.normal(size=n) * 1e3, "c": rng.normal(size=n),
         "ea": rng.uniform(0.1, 1, n), "eb": rng.uniform(0.1, 1, n),
         "ec": rng.uniform(0.1, 1, n), "rho": rng.uniform(-0.9, 0.9, n)}
    t["a"][[3, 10]] = np.nan
    t["c"][[10, 11]] = np.nan
    return t


def _write_csv(path, t, names=None):
    names = names or list(t)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for i in range(len(t[names[0]])):
            # repr of a Python float round-trips exactly; NaN becomes an empty field
            f.write(",".join("" if np.isnan(t[c][i]) else repr(float(t[c][i]))
                             for c in names) + "\n")


def _leftovers(directory):
    return [p for p in os.listdir(directory) if ".tmp-" in p]


@pytest.fixture
def table():
    return _table()


@pytest.fixture
def csv_file(tmp_path, table):
    path = tmp_path / "t.csv"
    _write_csv(path, table)
    return path


def _check_values(cat, t, cols=("a", "b", "c")):
    x = cat.data.compute()
    assert x.shape == (len(t[cols[0]]), len(cols))
    for j, c in enumerate(cols):
        assert np.array_equal(x[:, j], t[c].astype(x.dtype), equal_nan=True), c
    assert cat.columns == list(cols)


@pytest.mark.parametrize("engine", ["pyarrow", "python"])
def test_csv_values_and_std_errors_exact(tmp_path, csv_file, table, engine):
    if engine == "pyarrow":
        pytest.importorskip("pyarrow")
    cat = ingest(csv_file, tmp_path / "c.zarr", "a,b,c", "ea,eb,ec", csv_engine=engine)
    _check_values(cat, table)
    assert cat.covar_kind == "diag"
    var = cat.covar.compute()
    for j, e in enumerate(("ea", "eb", "ec")):
        assert np.array_equal(var[:, j], table[e] * table[e])
    # chunked as write_catalog chunks the same shape
    assert cat.data.chunksize[0] == default_row_chunk(N, 3, "diag")
    assert not _leftovers(tmp_path)


def test_csv_engines_agree_on_odd_tokens(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "odd.csv"
    path.write_text("x,y\n1e-3,NaN\n  2.5 ,-0\nnan,3\n,7\n1.7976931348623157e308,4\n")
    a = ingest(path, tmp_path / "a.zarr", csv_engine="pyarrow").data.compute()
    b = ingest(path, tmp_path / "b.zarr", csv_engine="python").data.compute()
    assert np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(a[:, 0], [1e-3, 2.5, np.nan, np.nan, 1.7976931348623157e308],
                          equal_nan=True)


def test_correlations_give_full_covariances(tmp_path, csv_file, table):
    cat = ingest(csv_file, tmp_path / "c.zarr", ["a", "b", "c"], ["ea", "eb", "ec"],
                 correlations=["a,b,rho"])
    assert cat.covar_kind == "full"
    S = cat.covar.compute()
    ea, eb, ec, rho = table["ea"], table["eb"], table["ec"], table["rho"]
    both = ~np.isnan(table["a"])                   # a missing value has no correlation
    assert np.array_equal(S[:, 0, 0], ea * ea) and np.array_equal(S[:, 2, 2], ec * ec)
    assert np.array_equal(S[both, 0, 1], rho[both] * ea[both] * eb[both])
    assert np.array_equal(S[:, 0, 1], S[:, 1, 0])
    assert np.all(S[~both, 0, 1] == 0) and np.all(S[:, 0, 2] == 0)


def test_variances_and_correlations_from_variances():
    var = np.array([[4.0, 9.0]])
    S = errors_to_covar(var, variances=True, correlations=[(0, 1, np.array([0.5]))])
    assert np.array_equal(S[0], [[4.0, 3.0], [3.0, 9.0]])
    assert np.array_equal(errors_to_covar(var, variances=True), var)


def test_parquet_keeps_float32_and_reads_nulls(tmp_path, table):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    a32 = table["a"].astype(np.float32)
    ints = pa.array([None if i % 7 == 0 else i for i in range(N)], type=pa.int64())
    pq.write_table(pa.table({"a": a32, "b": table["b"].astype(np.float32), "i": ints,
                             "ea": table["ea"]}), tmp_path / "t.parquet", row_group_size=64)
    cat = ingest(tmp_path / "t.parquet", tmp_path / "p.zarr", "a,b", batch_rows=50)
    assert cat.data.dtype == np.float32
    assert np.array_equal(cat.data.compute()[:, 0], a32, equal_nan=True)
    cat = ingest(tmp_path / "t.parquet", tmp_path / "q.zarr", "a,i", "ea,ea", variances=True)
    assert cat.data.dtype == np.float64
    col = cat.data.compute()[:, 1]
    assert np.isnan(col[::7]).all() and col[1] == 1.0 and col[N - 1] == N - 1
    assert np.array_equal(cat.covar.compute()[:, 0], table["ea"])


def test_fits_table_exact_and_hdu_choice(tmp_path, table):
    fits = pytest.importorskip("astropy.io.fits")
    from astropy.table import Table

    path = tmp_path / "t.fits"
    hdus = fits.HDUList([fits.PrimaryHDU(),
                         fits.BinTableHDU(Table({"z": np.arange(3.0)}), name="OTHER"),
                         fits.BinTableHDU(Table({k: table[k] for k in ("a", "b", "c", "ea",
                                                                          "eb", "ec")}),
                                          name="CAT")])
    hdus.writeto(path)
    cat = ingest(path, tmp_path / "f.zarr", "a,b,c", "ea,eb,ec", hdu="CAT", batch_rows=64)
    _check_values(cat, table)
    assert np.array_equal(cat.covar.compute()[:, 1], table["eb"] ** 2)
    assert ingest(path, tmp_path / "g.zarr").shape == (3, 1)       # first table HDU
    assert ingest(path, tmp_path / "h.zarr", "B", hdu=2).shape == (N, 1)   # case-insensitive
    with pytest.raises(InputError, match="no HDU"):
        ingest(path, tmp_path / "x.zarr", "a", hdu="NOPE")
    with pytest.raises(InputError, match="not a table"):
        ingest(path, tmp_path / "x.zarr", "a", hdu=0)
    assert not (tmp_path / "x.zarr").exists()


def test_npy_plain_and_structured(tmp_path, table):
    X = np.column_stack([table["a"], table["b"]])
    np.save(tmp_path / "x.npy", X)
    cat = ingest(tmp_path / "x.npy", tmp_path / "n.zarr", batch_rows=33, chunks=100)
    assert cat.columns == ["x0", "x1"] and cat.data.chunks[0][0] == 100
    assert np.array_equal(cat.data.compute(), X, equal_nan=True)
    rec = np.zeros(N, dtype=[("u", ">f8"), ("v", "<f4"), ("s", ">f8")])
    rec["u"], rec["v"], rec["s"] = table["a"], table["b"], table["ea"]
    np.save(tmp_path / "r.npy", rec)
    cat = ingest(tmp_path / "r.npy", tmp_path / "r.zarr", errors=None, columns="u,v")
    assert np.array_equal(cat.data.compute()[:, 0], table["a"], equal_nan=True)
    cat = ingest(tmp_path / "r.npy", tmp_path / "s.zarr", "v", "s")
    assert np.array_equal(cat.covar.compute()[:, 0], table["ea"] ** 2)
    with pytest.raises(InputError, match="every value missing.*drop-empty"):
        ingest(tmp_path / "r.npy", tmp_path / "t.zarr", "u")
    cat = ingest(tmp_path / "r.npy", tmp_path / "t.zarr", "u", drop_empty=True)
    assert cat.shape == (N - 2, 1)


def test_default_columns_exclude_error_columns(tmp_path, csv_file):
    cat = ingest(csv_file, tmp_path / "c.zarr", errors=None, columns=None)
    assert cat.columns == ["a", "b", "c", "ea", "eb", "ec", "rho"]
    path = tmp_path / "two.csv"
    path.write_text("x,ex\n1,0.5\n2,0.25\n")
    cat = ingest(path, tmp_path / "d.zarr", errors="ex")
    assert cat.columns == ["x"] and np.array_equal(cat.covar.compute()[:, 0], [0.25, 0.0625])


@pytest.mark.filterwarnings("ignore::daskgmmis.ConvergenceWarning")
def test_ingested_fit_equals_array_fit(tmp_path, csv_file, table):
    cat = ingest(csv_file, tmp_path / "c.zarr", "a,b,c", "ea,eb,ec")
    X = np.column_stack([table[c] for c in "abc"])
    var = np.column_stack([table[e] ** 2 for e in ("ea", "eb", "ec")])
    g1, g2 = dg.GMM(2, 3), dg.GMM(2, 3)
    r1 = dg.fit(g1, cat, rng=4, maxiter=5, tol=1e-12)
    r2 = dg.fit(g2, X, var, rng=4, maxiter=5, tol=1e-12)
    assert r1.history == r2.history
    assert np.array_equal(g1.covar, g2.covar)


@pytest.mark.parametrize("content, columns, errors, match", [
    ("a,b\n1,x\n", "a,b", None, "not a number|invalid value"),
    ("a,b\n1,inf\n", "a,b", None, "infinite|inf"),
    ("a,ea\n1,-0.5\n", "a", "ea", "standard deviation >= 0"),
    ("a,ea\n1,\n", "a", "ea", "standard deviation >= 0"),
    ("a,b\n1,2\n", "a,zz", None, "no column named 'zz'"),
    ("a,b\n,\n1,2\n", "a,b", None, "every value missing"),
    ("a,b\n1,2\n", "a,b", "a", "one error column per value column"),
    ("a,b\n1,2\n", "a,a", None, "named twice"),
    ("a,b\n", "a,b", None, "no rows"),
])
def test_bad_csv_is_a_clear_error_and_leaves_nothing(tmp_path, content, columns, errors,
                                                     match):
    src = tmp_path / "bad.csv"
    src.write_text(content)
    out = tmp_path / "out.zarr"
    for engine in ("pyarrow", "python"):
        with pytest.raises((InputError, InputTypeError), match=match):
            ingest(src, out, columns, errors, csv_engine=engine, chunks=1)
        assert not out.exists() and not _leftovers(tmp_path)


def test_bad_correlation_and_drop_empty(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("a,b,ea,eb,r\n1,2,1,1,1.5\n")
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        ingest(src, tmp_path / "o.zarr", "a,b", "ea,eb", correlations=[("a", "b", "r")])
    with pytest.raises(InputError, match="itself"):
        ingest(src, tmp_path / "o.zarr", "a,b", "ea,eb", correlations=["a,a,r"])
    with pytest.raises(InputError, match="need error columns"):
        ingest(src, tmp_path / "o.zarr", "a,b", correlations=["a,b,r"])
    src.write_text("a,b\n,\n1,2\n,\n3,4\n")
    cat = ingest(src, tmp_path / "d.zarr", drop_empty=True)
    assert np.array_equal(cat.data.compute(), [[1, 2], [3, 4]])
    assert not _leftovers(tmp_path)


def test_existing_output_needs_overwrite(tmp_path, csv_file, table):
    out = tmp_path / "c.zarr"
    ingest(csv_file, out, "b")
    with pytest.raises(dg.OutputExistsError, match="exists"):
        ingest(csv_file, out, "ea")
    assert dg.open_catalog(out).columns == ["b"]
    cat = ingest(csv_file, out, "ea", overwrite=True)
    assert cat.columns == ["ea"] and np.array_equal(cat.data.compute()[:, 0], table["ea"])
    assert sorted(os.listdir(tmp_path)) == ["c.zarr", "t.csv"]


def test_unreadable_inputs(tmp_path):
    with pytest.raises(InputError, match="format"):
        detect_format("x.xlsx")
    assert detect_format("x.CSV") == "csv" and detect_format("a.fits.gz") == "fits"
    with pytest.raises(InputError, match="no such file"):
        open_table(tmp_path / "missing.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    pytest.importorskip("pyarrow")
    with pytest.raises(InputError, match="not a readable Parquet"):
        ingest(tmp_path / "junk.parquet", tmp_path / "o.zarr")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="npy"):
        ingest(tmp_path / "junk.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]).reshape(2, 1))
    with pytest.raises(InputTypeError, match="expected numbers"):
        ingest(tmp_path / "s.npy", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists() and not _leftovers(tmp_path)


def test_writer_matches_write_catalog_layout(tmp_path):
    import zarr

    rng = np.random.default_rng(1)
    X, var = rng.normal(size=(70, 2)), rng.uniform(0.1, 1, (70, 2))
    ref = dg.write_catalog(tmp_path / "ref.zarr", X, var, chunks=16, columns=["p", "q"])
    with CatalogWriter(tmp_path / "w.zarr", ["p", "q"], "diag", chunk_rows=16) as w:
        for s in range(0, 70, 9):                  # batches not aligned with chunks
            w.append(X[s:s + 9], var[s:s + 9])
    cat = w.catalog
    assert np.array_equal(cat.data.compute(), ref.data.compute())
    assert np.array_equal(cat.covar.compute(), ref.covar.compute())
    assert cat.data.chunks == ref.data.chunks
    assert dict(zarr.open_group(tmp_path / "w.zarr").attrs) == \
        dict(zarr.open_group(tmp_path / "ref.zarr").attrs)


def test_writer_aborts_on_error_and_validates(tmp_path):
    with pytest.raises(RuntimeError):
        with CatalogWriter(tmp_path / "w.zarr", ["a"], chunk_rows=4) as w:
            w.append(np.ones((3, 1)))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    w = CatalogWriter(tmp_path / "w.zarr", ["a", "b"], "full", chunk_rows=4)
    with pytest.raises(InputError, match="shape"):
        w.append(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(InputError, match="positive semi-definite"):
        w.append(np.ones((1, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]]))
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="covar_kind"):
        CatalogWriter(tmp_path / "w.zarr", ["a"], "shared", chunk_rows=4)


def test_write_row_arrays_is_lazy_and_atomic(tmp_path):
    import dask.array as da
    import zarr

    x = da.arange(100, chunks=30).astype(float)
    write_row_arrays(tmp_path / "o.zarr", {"v": x, "w": x[:, None] * [1, 2]}, {"k": 1})
    g = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert g.attrs["k"] == 1 and np.array_equal(g["w"][:, 1], np.arange(100) * 2)
    with pytest.raises(dg.OutputExistsError, match="exists"):
        write_row_arrays(tmp_path / "o.zarr", {"v": x}, {})
    def fail_late(block):
        if block[0] > 50:
            raise ZeroDivisionError("a block failed")
        return block

    with pytest.raises(ZeroDivisionError):
        write_row_arrays(tmp_path / "p.zarr", {"v": x.map_blocks(fail_late)}, {})
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]


def test_ingested_catalog_detects_a_deleted_chunk(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    np.save(tmp_path / "t.npy", x)
    ingest(tmp_path / "t.npy", tmp_path / "t.zarr", chunks=100)
    np.testing.assert_array_equal(dg.open_catalog(tmp_path / "t.zarr").data.compute(), x)
    os.remove(tmp_path / "t.zarr" / "data" / "c" / "2" / "0")
    with pytest.raises(CatalogError, match="missing: data/c/2/0"):
        dg.open_catalog(tmp_path / "t.zarr")


# ------------------------------------------------------------ many-file tables


def _parts(tmp_path, n_parts=20, seed=0):
    """A table split into Parquet parts of uneven sizes: integer ids, errors, gaps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sizes = rng.integers(50, 400, n_parts)
    sizes[3] = 0                                   # an empty part
    N = int(sizes.sum())
    x = rng.normal(size=(N, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.choice(N, 12, replace=False)] = np.nan   # rows dropped with drop_empty
    err = rng.uniform(0.1, 0.3, (N, 3))
    ids = rng.choice(2**40, N, replace=False).astype(np.int64)
    whole = pa.table({"oid": ids, **{c: x[:, j] for j, c in enumerate("abc")},
                      **{f"{c}_err": err[:, j] for j, c in enumerate("abc")}})
    d = tmp_path / "parts"
    d.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(whole.slice(start, n), d / f"part-{i}.parquet")
        start += n
    pq.write_table(whole, tmp_path / "whole.parquet")
    return d, whole


def test_parallel_ingest_of_parts_equals_ingest_of_their_concatenation(tmp_path,
                                                                       cluster_client):
    pytest.importorskip("pyarrow")
    import dask

    d, whole = _parts(tmp_path)
    opts = dict(errors="a_err,b_err,c_err", id_column="oid", drop_empty=True)
    one = ingest(tmp_path / "whole.parquet", tmp_path / "one.zarr", **opts)
    with dask.config.set(scheduler=cluster_client):
        many = ingest(d, tmp_path / "many.zarr", dropped_out=tmp_path / "dropped.csv",
                      **opts)
    assert many.columns == one.columns == ["a", "b", "c"]
    assert many.data.dtype == np.float32              # float32 parts stay float32
    np.testing.assert_array_equal(many.data.compute(), one.data.compute())
    np.testing.assert_array_equal(many.covar.compute(), one.covar.compute())
    np.testing.assert_array_equal(many.ids.compute(), one.ids.compute())
    assert many.data.chunks == one.data.chunks        # chunked as the one file is
    # part-10 comes after part-9 (natural order), and dropped rows are counted globally
    import pyarrow.csv as pacsv

    dropped = pacsv.read_csv(tmp_path / "dropped.csv")
    values = np.column_stack([whole.column(c).to_numpy(zero_copy_only=False) for c in "abc"])
    empty = np.flatnonzero(np.isnan(values).all(axis=1))
    assert dropped.column("source_row").to_pylist() == empty.tolist()
    assert dropped.column("oid").to_pylist() == whole.column("oid").to_numpy()[empty].tolist()
    # the catalog marks its chunks complete: a deleted chunk is found, not read as zeros
    assert zarr.open_array(tmp_path / "many.zarr" / "data", mode="r").attrs["complete_chunks"]
    assert not [p for p in os.listdir(tmp_path) if ".parts-" in p or ".tmp-" in p]


def test_parallel_ingest_that_fails_leaves_no_catalog_and_can_be_rerun(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    d, whole = _parts(tmp_path, n_parts=6, seed=1)
    bad = whole.slice(0, 10).set_column(1, "a", pa.array(np.full(10, np.inf, np.float32)))
    pq.write_table(bad, d / "part-5.parquet")
    with pytest.raises(dg.InputError, match=r"part-5\.parquet.*(inf|Inf)"):
        ingest(d, tmp_path / "cat.zarr", errors="a_err,b_err,c_err", id_column="oid",
               drop_empty=True)
    assert sorted(os.listdir(tmp_path)) == ["parts", "whole.parquet"]   # nothing left
    pq.write_table(whole.slice(0, 10), d / "part-5.parquet")
    cat = ingest(str(d / "part-*.parquet"), tmp_path / "cat.zarr", errors="a_err,b_err,c_err",
                 id_column="oid", drop_empty=True)
    assert cat.ids is not None and cat.shape[1] == 3


def test_cli_ingests_a_glob_of_parts(tmp_path):
    pytest.importorskip("pyarrow")
    from click.testing import CliRunner

    from daskgmmis.cli import main

    d, whole = _parts(tmp_path, n_parts=4, seed=2)
    result = CliRunner().invoke(main, ["ingest", str(d / "part-*.parquet"),
                                       str(tmp_path / "c.zarr"), "-c", "a,b,c", "--id", "oid",
                                       "--drop-empty", "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    cat = dg.open_catalog(tmp_path / "c.zarr")
    assert cat.id_name == "oid" and cat.covar is None
