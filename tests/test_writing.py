"""One writing layer: atomic files with the umask's permissions, stores marked
complete, OutputExistsError for every existing output."""

import json
import os
import stat

import numpy as np
import pytest
import zarr

import daskgmmis as dg
from daskgmmis import plots
from daskgmmis.checkpoint import EMState, save_checkpoint
from daskgmmis.files import write_bytes_atomic
from daskgmmis.ingest import CatalogWriter, write_row_arrays
from daskgmmis.model import Theta
from daskgmmis.neighborhoods import spatial_order


@pytest.fixture
def umask():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def model():
    g = dg.GMM(2, 2)
    g.mean = np.array([[0.0, 0.0], [3.0, 1.0]])
    return g


def test_every_file_written_gets_the_umask_permissions(tmp_path, umask):
    model().save(tmp_path / "m.npz")
    theta = Theta(np.full(2, 0.5), np.zeros((2, 2)), np.array([np.eye(2)] * 2))
    save_checkpoint(tmp_path / "c.ckpt", EMState(theta=theta, seed=["1"]), {"K": 2})
    plots.save_figure(plots.convergence([1.0, 2.0]), tmp_path / "f.png")
    write_bytes_atomic(tmp_path / "r.json", json.dumps({"a": 1}).encode())
    for name in ("m.npz", "c.ckpt", "f.png", "r.json"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    # nothing but the outputs: no temporary files left behind
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "f.png", "m.npz", "r.json"]


def test_every_existing_output_is_an_output_exists_error(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))
    g = model()
    g.save(tmp_path / "m.npz")
    dg.write_catalog(tmp_path / "c.zarr", x)
    write_row_arrays(tmp_path / "s.zarr", {"logL": np.zeros(50)}, {})
    post = dg.posterior(g, x)
    dg.write_posterior(post, tmp_path / "p.zarr")
    plots.save_figure(plots.convergence([1.0, 2.0]), tmp_path / "f.png")
    before = sorted(os.listdir(tmp_path))
    attempts = {
        "GMM.save": lambda: g.save(tmp_path / "m.npz"),
        "write_catalog": lambda: dg.write_catalog(tmp_path / "c.zarr", x),
        "write_row_arrays": lambda: write_row_arrays(tmp_path / "s.zarr",
                                                     {"logL": np.zeros(50)}, {}),
        "write_posterior": lambda: dg.write_posterior(post, tmp_path / "p.zarr"),
        "CatalogWriter": lambda: CatalogWriter(tmp_path / "c.zarr", ["a", "b"],
                                               chunk_rows=10),
        "save_figure": lambda: plots.save_figure(plots.convergence([1.0]), tmp_path / "f.png",
                                                 overwrite=False),
    }
    for what, attempt in attempts.items():
        with pytest.raises(dg.OutputExistsError, match="exists"):
            attempt()
            pytest.fail(f"{what} overwrote an existing output")
    assert sorted(os.listdir(tmp_path)) == before


def test_every_store_written_marks_its_chunks_complete(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))
    g = model()
    dg.write_catalog(tmp_path / "c.zarr", x, chunks=20)
    write_row_arrays(tmp_path / "s.zarr", {"logL": np.zeros(50)}, {})
    dg.write_posterior(dg.posterior(g, x), tmp_path / "p.zarr")
    for store in ("c.zarr", "s.zarr", "p.zarr"):
        group = zarr.open_group(tmp_path / store, mode="r")
        for name, arr in group.arrays():
            assert arr.attrs.get("complete_chunks") is True, (store, name)
            assert arr.nchunks_initialized == arr.nchunks, (store, name)


def test_neighborhood_helpers_raise_the_package_errors():
    with pytest.raises(dg.InputError, match="x: expected shape"):
        spatial_order(np.zeros(5))
