"""Zarr v3 catalogs: round trips, refusal to overwrite, clear errors."""

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
