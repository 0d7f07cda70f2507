"""Zarr v3 catalogs: round trips, refusal to overwrite, clear errors."""

import os

import numpy as np
import pytest
import zarr

import daskgmmis as dg


def test_round_trip_with_diag_and_full_covar(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    x[5, 1] = np.nan
    var = rng.uniform(0.1, 1, size=(1000, 3))
    cat = dg.write_catalog(tmp_path / "a.zarr", x, var, chunks=256, columns=["g", "r", "i"])
    assert cat.covar_kind == "diag" and cat.columns == ["g", "r", "i"]
    assert cat.data.dtype == np.float32 and cat.data.chunks[0][0] == 256
    np.testing.assert_array_equal(cat.data.compute(), x)
    np.testing.assert_array_equal(cat.covar.compute(), var)
    full = np.einsum("ni,ij->nij", var, np.eye(3))
    cat2 = dg.write_catalog(tmp_path / "b.zarr", x, full)
    again = dg.open_catalog(tmp_path / "b.zarr")
    assert again.covar_kind == "full"
    np.testing.assert_array_equal(again.covar.compute(), full)
    attrs = dict(zarr.open_group(str(tmp_path / "b.zarr"), mode="r").attrs)
    assert attrs["daskgmmis_format"] == "daskgmmis-catalog"
    assert attrs["daskgmmis_format_version"] == 1
    assert cat2.shape == (1000, 3)


def test_refuses_to_overwrite_and_keeps_old_content(tmp_path):
    path = tmp_path / "c.zarr"
    dg.write_catalog(path, np.ones((10, 2)))
    with pytest.raises(dg.CatalogError, match="overwrite=True"):
        dg.write_catalog(path, np.zeros((10, 2)))
    np.testing.assert_array_equal(dg.open_catalog(path).data.compute(), np.ones((10, 2)))
    dg.write_catalog(path, np.zeros((4, 2)), overwrite=True)
    assert dg.open_catalog(path).shape == (4, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # no temp left behind


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(dg.InputError):
        dg.write_catalog(tmp_path / "d.zarr", np.ones((10, 2)), np.ones((9, 2)))
    assert list(tmp_path.iterdir()) == []


def test_open_errors(tmp_path):
    with pytest.raises(dg.CatalogNotFoundError, match="does not exist"):
        dg.open_catalog(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("hello")
    with pytest.raises(dg.CatalogError):
        dg.open_catalog(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(dg.CatalogError, match="not a daskgmmis catalog"):
        dg.open_catalog(tmp_path / "other.zarr")
    with pytest.raises(dg.CatalogNotFoundError):
        dg.fit(dg.GMM(1, 2), str(tmp_path / "nope.zarr"))


@pytest.mark.parametrize("data, covar, message", [
    (np.ones((5,)), None, "2-D"),
    (np.array([["a", "b"]]), None, "numeric"),
    (np.ones((5, 2)), np.ones((5, 2, 2)), None),
    (np.ones((5, 2)), np.ones((4, 3)), "covar"),
])
def test_write_validates_shapes(tmp_path, data, covar, message):
    if message is None:
        dg.write_catalog(tmp_path / "ok.zarr", data, covar)
        return
    with pytest.raises((dg.InputError, dg.InputTypeError), match=message):
        dg.write_catalog(tmp_path / "e.zarr", data, covar)


def test_fsspec_url_catalog_round_trip_and_fit():
    # any fsspec filesystem works the same way (s3:// where s3fs is installed)
    X = np.random.default_rng(0).normal(size=(1000, 2))
    url = "memory://daskgmmis-test/cat.zarr"
    dg.write_catalog(url, X, chunks=250)
    np.testing.assert_array_equal(dg.open_catalog(url).data.compute(), X)
    g = dg.GMM(1, 2)
    dg.fit(g, url, init_method="minmax", rng=0, tol=1e-8)
    np.testing.assert_allclose(g.mean[0], X.mean(0), atol=1e-10)


# ------------------------------------------ missing data is never read as zeros

def _unmarked_store(path, zarr_format, write_rows):
    """A catalog written by another tool: no completeness marks, only the chunks
    of ``write_rows`` stored (the others never written)."""
    X = np.random.default_rng(5).normal(loc=3.0, size=(200, 2))
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    g.attrs.update({"daskgmmis_format": "daskgmmis-catalog", "daskgmmis_format_version": 1,
                    "columns": ["a", "b"], "covar_kind": "none"})
    z = g.create_array("data", shape=(200, 2), chunks=(50, 2), dtype="f8", fill_value=0.0)
    z[write_rows] = X[write_rows]
    return X


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_unmarked_store_with_unwritten_chunks_is_refused(tmp_path, zarr_format):
    path = tmp_path / "other.zarr"
    _unmarked_store(path, zarr_format, slice(0, 150))
    with pytest.raises(dg.CatalogError) as info:
        dg.open_catalog(path)
    msg = str(info.value)
    assert "other.zarr/data" in msg and "3 of its 4 chunks" in msg and "rows 150..199" in msg
    assert "would read as the fill value (zeros)" in msg


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunk_deleted_after_open_is_caught_in_the_task(tmp_path, zarr_format):
    """Each read checks that its chunk files exist: a fit never sees zeros."""
    path = tmp_path / "other.zarr"
    X = _unmarked_store(path, zarr_format, slice(0, 200))
    cat = dg.open_catalog(path)
    np.testing.assert_array_equal(cat.data.compute(), X)          # complete: reads fine
    key = "data/c/2/0" if zarr_format == 3 else "data/2.0"
    os.remove(path / key)
    with pytest.raises(dg.CatalogError, match=r"no chunk file .* \(rows 100\.\.149\)"):
        dg.fit(dg.GMM(1, 2), cat, maxiter=2)


def test_default_chunk_grows_past_a_few_thousand_blocks():
    """The per-block scheduling cost is paid per pass whatever the cores: a huge
    catalog gets bigger blocks (<= 64 MiB) rather than tens of thousands of them."""
    from daskgmmis.catalog import default_row_chunk
    assert default_row_chunk(10**8, 5) == 8 * 2**20 // 40             # 8 MiB blocks: unchanged
    assert default_row_chunk(10**6, 5, "diag") == 104_857
    for N, D, kind in ((10**9, 5, "none"), (10**9, 5, "diag"), (10**10, 5, "none"),
                       (10**10, 10, "full")):
        rows = default_row_chunk(N, D, kind)
        per_row = 8 * (D + {"none": 0, "diag": D, "full": D * D}[kind])
        assert rows * per_row <= 64 * 2**20
        blocks = -(-N // rows)
        assert blocks <= 4096 or rows * per_row > 64 * 2**20 - per_row
    assert -(-10**9 // default_row_chunk(10**9, 5)) == 4096
