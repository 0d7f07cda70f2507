"""Results that join back to the user's catalog: identifiers carried through ingest, any
row order and dropped rows, per-row outputs in Zarr, Parquet or CSV, feature names that
travel with the model."""

import csv
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import daskgmmis as dg
from daskgmmis.catalog import check_ids
from daskgmmis.cli import main
from daskgmmis.ingest import CatalogWriter
from daskgmmis.tables import read_column, table_format, write_table

from conftest import make_truth

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


# ------------------------------------------------------------ the round trip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A CSV a user would bring: string identifiers first, values, errors, and a few
    rows with every value missing."""
    d = tmp_path_factory.mktemp("join")
    truth = make_truth(K=2, D=2, seed=11)
    rng = np.random.default_rng(5)
    N = 2500
    v = truth.draw(N, rng=rng)
    err = rng.uniform(0.2, 0.6, v.shape)
    x = v + rng.standard_normal(v.shape) * err
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.choice(N, 30, replace=False)] = np.nan
    empty = np.flatnonzero(np.isnan(x).all(axis=1))
    ids = np.array([f"G{n:07d}" for n in rng.permutation(10 * N)[:N]])
    path = d / "stars.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "a", "b", "a_err", "b_err"])
        for i in range(N):
            w.writerow([ids[i], *("" if np.isnan(c) else repr(float(c)) for c in x[i]),
                        repr(float(err[i, 0])), repr(float(err[i, 1]))])
    return d, path, x, err, ids, empty


def test_ingest_fit_posterior_parquet_round_trip_joins_on_the_identifier(source,
                                                                         cluster_client):
    d, path, x, err, ids, empty = source
    out = run("ingest", path, d / "cat.zarr", "--errors", "a_err,b_err", "--id", "source_id",
              "--drop-empty", "--dropped-out", d / "dropped.csv")
    # no --columns: neither the errors nor the identifier were taken as features
    assert ("2 features: a, b (every column not named by --errors, --corr, --id or "
            "--weight)") in out
    assert f"skipped {len(empty)} rows with every value missing (listed in" in out
    dropped = pacsv.read_csv(d / "dropped.csv")
    assert dropped.column("source_row").to_pylist() == empty.tolist()
    assert dropped.column("source_id").to_pylist() == ids[empty].tolist()

    cat = dg.open_catalog(d / "cat.zarr")
    kept = np.setdiff1d(np.arange(len(x)), empty)
    assert cat.id_name == "source_id"
    assert cat.ids.dtype == object                 # Python strings, as pandas has them
    assert cat.ids.compute().tolist() == ids[kept].tolist()
    # the same rows in spatial (Morton) order: identifiers travel with their rows
    sp = dg.write_catalog(d / "spatial.zarr", cat.data, cat.covar, columns=cat.columns,
                          ids=cat.ids, id_name="source_id", order="spatial")
    sp_ids = sp.ids.compute().astype(str)
    assert not np.array_equal(sp_ids, ids[kept])
    where = {s: i for i, s in enumerate(ids)}
    rows = np.array([where[s] for s in sp_ids])
    np.testing.assert_array_equal(sp.data.compute(), x[rows])

    gmm = dg.GMM(2, 2)
    dg.fit(gmm, d / "spatial.zarr", rng=0, client=cluster_client)
    assert gmm.columns == ["a", "b"]
    gmm.save(d / "model.npz")
    address = cluster_client.scheduler.address
    run("posterior", d / "model.npz", d / "spatial.zarr", "--out", d / "post.parquet",
        "--scheduler", address)
    run("score", d / "model.npz", d / "spatial.zarr", "--out", d / "score.csv",
        "--scheduler", "threads")

    # the user's join: their table, merged with the results on source_id
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={"source_id": pa.string()}))
    post = pq.read_table(d / "post.parquet")
    assert post.column_names[0] == "source_id"
    assert {"mean_a", "mean_b", "sd_a", "sd_b", "resp_0", "resp_1", "logL"} <= set(
        post.column_names)
    joined = table.join(post, "source_id", join_type="inner").sort_by("source_id")
    assert joined.num_rows == len(kept)            # the dropped rows have no result
    order = np.array([where[s] for s in joined.column("source_id").to_pylist()])
    ref = dg.posterior(gmm, x[order], err[order] ** 2)   # numpy, the rows by position
    np.testing.assert_allclose(np.column_stack([joined.column("mean_a"),
                                                joined.column("mean_b")]), ref.mean,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(joined.column("sd_b"), np.sqrt(ref.covar[:, 1, 1]),
                               rtol=1e-10)
    # the same join for the CSV scores
    score = pacsv.read_csv(d / "score.csv", convert_options=pacsv.ConvertOptions(
        column_types={"source_id": pa.string()}))
    joined = table.join(score, "source_id", join_type="inner").sort_by("source_id")
    order = np.array([where[s] for s in joined.column("source_id").to_pylist()])
    np.testing.assert_allclose(joined.column("logL").to_numpy(),
                               gmm.logL(x[order], err[order] ** 2), rtol=1e-12)


def test_predict_and_row_numbers_without_identifiers(tmp_path):
    g = make_truth(K=2, D=3, seed=3)
    x = g.draw(400, rng=1)
    x[::7, 2] = np.nan
    dg.write_catalog(tmp_path / "sp.zarr", x, columns=["u", "v", "w"], order="spatial",
                     chunks=100)
    g.save(tmp_path / "m.npz")
    run("predict", tmp_path / "m.npz", tmp_path / "sp.zarr", "--out", tmp_path / "p.csv",
        "--scheduler", "threads")
    out = pacsv.read_csv(tmp_path / "p.csv")
    assert out.column_names == ["row", "u", "v", "w"]
    row = out.column("row").to_numpy()
    # "row" is the position in the input: the spatial order is undone by a join on it
    filled = np.column_stack([out.column(c).to_numpy() for c in "uvw"])[np.argsort(row)]
    np.testing.assert_allclose(filled, dg.predict_missing(g, x), rtol=1e-12)
    assert not np.isnan(filled).any()


# ------------------------------------------------------------ identifiers


def test_check_ids_accepts_integers_and_strings_and_names_the_bad_row():
    assert check_ids([3, 1, 2], 3).dtype == np.int64
    assert check_ids(np.array([1.0, 2.0]), 2).tolist() == [1, 2]
    assert check_ids([b"a", "b"], 2).tolist() == ["a", "b"]
    with pytest.raises(dg.InputError, match=r"row 1 .*whole numbers"):
        check_ids([1.0, np.nan], 2)
    with pytest.raises(dg.InputError, match="row 2 has an empty identifier"):
        check_ids(["a", "b", ""], 3)
    with pytest.raises(dg.InputTypeError, match="row 1 holds None"):
        check_ids(np.array(["a", None], dtype=object), 2)
    with pytest.raises(dg.InputError, match=r"shape \(3,\)"):
        check_ids([1, 2], 3)
    with pytest.raises(dg.InputError, match="id_name"):
        dg.write_catalog("unused.zarr", np.zeros((2, 1)), ids=[1, 2], id_name="x0")


def test_integer_identifiers_from_parquet_and_a_type_change_between_batches(tmp_path):
    n = 500
    t = pa.table({"objid": np.arange(n, dtype=np.int64) * 1_000_003 + 2**40,
                  "g": np.linspace(0, 1, n), "r": np.linspace(1, 2, n)})
    pq.write_table(t, tmp_path / "t.parquet")
    cat = dg.ingest.ingest(tmp_path / "t.parquet", tmp_path / "t.zarr", id_column="objid",
                           batch_rows=128)
    assert cat.columns == ["g", "r"] and cat.ids.dtype == np.int64
    assert np.array_equal(cat.ids.compute(), t.column("objid").to_numpy())
    with CatalogWriter(tmp_path / "w.zarr", ["a"], chunk_rows=4, id_name="id") as w:
        w.append(np.zeros((2, 1)), ids=[1, 2])
        with pytest.raises(dg.InputTypeError, match="hold strings; this catalog stores "
                                                    "integers"):
            w.append(np.zeros((2, 1)), ids=["a", "b"])
        with pytest.raises(dg.InputError, match="expected row identifiers"):
            w.append(np.zeros((2, 1)))


# ------------------------------------------------------------ outputs


def test_write_table_formats_by_suffix_and_is_atomic(tmp_path):
    import dask.array as da

    x = da.from_array(np.arange(30.0).reshape(10, 3), chunks=(4, 3))
    ids = np.array([f"s{i}" for i in range(10)])
    for name in ("o.zarr", "o.parquet", "o.csv"):
        write_table(tmp_path / name, {"sid": ids, "v": x}, names={"v": ["p", "q", "r"]},
                    attrs={"k": 1})
    g = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert g["v"].shape == (10, 3) and g.attrs["k"] == 1
    assert g["sid"][:].tolist() == ids.tolist()          # variable-length UTF-8 strings
    for name in ("o.parquet", "o.csv"):
        assert read_column(tmp_path / name, "v_q").tolist() == list(np.arange(10) * 3 + 1.0)
    assert pq.read_table(tmp_path / "o.parquet").column_names == ["sid", "v_p", "v_q", "v_r"]
    assert table_format("A.PQ") == "parquet"
    # many blocks, computed several at a time, come out in row order
    many = da.arange(100, chunks=3).astype(float)
    write_table(tmp_path / "many.csv", {"v": many})
    assert read_column(tmp_path / "many.csv", "v").tolist() == list(np.arange(100.0))
    with pytest.raises(dg.InputError, match="suffix"):
        write_table(tmp_path / "o.txt", {"v": x})
    with pytest.raises(dg.OutputExistsError):
        write_table(tmp_path / "o.csv", {"v": x})

    def fail_late(block):
        if block[0, 0] > 20:
            raise ZeroDivisionError("a block failed")
        return block

    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ZeroDivisionError):
        write_table(tmp_path / "bad.parquet", {"v": x.map_blocks(fail_late)})
    assert sorted(os.listdir(tmp_path)) == before     # no partial file, no temporary


# ------------------------------------------------------------ feature names


def test_feature_names_travel_with_the_model(tmp_path):
    g = make_truth(K=2, D=2, seed=4)
    x = g.draw(600, rng=2)
    dg.write_catalog(tmp_path / "c.zarr", x, columns=["bp_rp", "g_mag"])
    gmm = dg.GMM(2, 2)
    dg.fit(gmm, str(tmp_path / "c.zarr"), rng=0)
    assert gmm.columns == ["bp_rp", "g_mag"]
    gmm.save(tmp_path / "m.npz")
    loaded = dg.GMM.load(tmp_path / "m.npz")
    assert loaded.columns == ["bp_rp", "g_mag"]
    assert "features (bp_rp, g_mag)" in run("info", tmp_path / "m.npz")
    run("sample", tmp_path / "m.npz", "-n", 50, "--out", tmp_path / "s.parquet",
        "--noise", "[0.1, 0.2]", "--seed", 1)
    assert pq.read_table(tmp_path / "s.parquet").column_names == [
        "bp_rp", "g_mag", "bp_rp_err", "g_mag_err"]
    np.testing.assert_allclose(read_column(tmp_path / "s.parquet", "g_mag_err"),
                               np.sqrt(0.2))
    run("sample", tmp_path / "m.npz", "-n", 50, "--out", tmp_path / "s.zarr", "--seed", 1)
    assert dg.open_catalog(tmp_path / "s.zarr").columns == ["bp_rp", "g_mag"]
    pytest.importorskip("matplotlib")
    from daskgmmis import plots

    ax = plots.density(loaded)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("bp_rp", "g_mag")
    loaded.columns = ["a", "a"]
    with pytest.raises(dg.InputError, match="distinct"):
        loaded.save(tmp_path / "bad.npz")
    unnamed = dg.GMM(1, 2)
    unnamed.save(tmp_path / "u.npz")
    assert dg.GMM.load(tmp_path / "u.npz").columns is None
    assert "(x0, x1: unnamed)" in run("info", tmp_path / "u.npz")
