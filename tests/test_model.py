"""GMM density, sampling and safe persistence."""

import json
import os
import stat
import zipfile

import dask.array as da
import numpy as np
import pytest
from scipy.stats import multivariate_normal as mvn

import daskgmmis as dg
from conftest import make_truth


def reference_density(g, x, S=None):
    out = np.zeros(len(x))
    for k in range(g.K):
        cov = g.covar[k] + (0 if S is None else S)
        out += g.amp[k] * mvn.pdf(x, g.mean[k], cov)
    return out


def test_density_and_log_density_match_scipy():
    g = make_truth(3, 2)
    x = np.random.default_rng(1).normal(size=(50, 2)) * 4
    np.testing.assert_allclose(g(x), reference_density(g, x), rtol=1e-12)
    S = np.array([[0.4, 0.1], [0.1, 0.3]])
    np.testing.assert_allclose(g.logL(x, S), np.log(reference_density(g, x, S)), rtol=1e-12)


def test_missing_coordinate_is_marginalized():
    g = make_truth(2, 3)
    x = np.array([[0.5, np.nan, -1.0]])
    marg = dg.GMM(2, 2)
    marg.amp, marg.mean = g.amp, g.mean[:, [0, 2]]
    marg.covar = g.covar[:, [0, 2]][:, :, [0, 2]]
    np.testing.assert_allclose(g(x), marg(x[:, [0, 2]]), rtol=1e-12)


def test_dask_in_dask_out():
    g = make_truth(3, 2)
    x = np.random.default_rng(2).normal(size=(1000, 2))
    var = np.random.default_rng(3).uniform(0.1, 1, size=(1000, 2))
    lazy = g.logL(da.from_array(x, chunks=300), da.from_array(var, chunks=300))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), g.logL(x, var), rtol=1e-13)
    full = np.array([np.diag(v) for v in var])
    lazy_full = g(da.from_array(x, chunks=250), da.from_array(full, chunks=(250, 2, 2)))
    np.testing.assert_allclose(lazy_full.compute(), g(x, var), rtol=1e-12)


def test_draw_moments():
    g = make_truth(2, 2, seed=4)
    s = g.draw(200_000, rng=5)
    assert s.shape == (200_000, 2)
    mix_mean = g.amp @ g.mean
    np.testing.assert_allclose(s.mean(0), mix_mean, atol=0.03)
    mix_cov = sum(a * (c + np.outer(m - mix_mean, m - mix_mean))
                  for a, m, c in zip(g.amp, g.mean, g.covar))
    np.testing.assert_allclose(np.cov(s.T), mix_cov, rtol=0.03, atol=0.05)
    np.testing.assert_array_equal(g.draw(10, rng=7), g.draw(10, rng=7))


def test_save_load_round_trip_exact(tmp_path):
    g = make_truth(4, 3)
    bg = dg.Background(([-1, -2, -3], [1, 2, 3.5]), amp=0.125, amp_max=0.5, adjust_amp=False)
    g.amp = g.amp * (1 - bg.amp)        # the background holds the rest
    path = tmp_path / "m.npz"
    g.save(path, background=bg)
    h = dg.GMM.load(path)
    for a in ("amp", "mean", "covar"):
        np.testing.assert_array_equal(getattr(h, a), getattr(g, a))
    assert h.background.to_dict() == bg.to_dict()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        g.save(path)
    g.amp = g.amp[::-1].copy()
    g.save(path, overwrite=True)
    np.testing.assert_array_equal(dg.GMM.load(path).amp, g.amp)


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    for k, v in changes.items():
        if k in meta:
            meta[k] = v
        else:
            arrays[k] = v
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, message", [
    ({"version": 99}, "version"),
    ({"format": "other"}, "format"),
    ({"covar": -np.ones((2, 2, 2))}, "positive-definite"),
    ({"amp": np.array([np.nan, 1.0])}, "finite"),
])
def test_tampered_model_files_are_refused(tmp_path, change, message):
    path = tmp_path / "m.npz"
    make_truth(2, 2).save(path)
    _rewrite(path, **change)
    with pytest.raises(dg.ModelFileError, match=message):
        dg.GMM.load(path)


def test_pickled_object_array_is_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    make_truth(2, 2).save(path)
    evil = np.array([object()], dtype=object)
    with zipfile.ZipFile(path, "a") as z, z.open("covar.npy", "w") as f:
        np.lib.format.write_array(f, evil, allow_pickle=True)
    with pytest.raises(dg.ModelFileError):
        dg.GMM.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(dg.ModelFileError, match="not a readable"):
        dg.GMM.load(tmp_path / "junk.npz")
    with pytest.raises(dg.ModelFileError, match="does not exist"):
        dg.GMM.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("K, D, exc", [(0, 2, dg.InputError), (2, 0, dg.InputError),
                                       (1.5, 2, dg.InputTypeError)])
def test_bad_model_shape(K, D, exc):
    with pytest.raises(exc, match="expected"):
        dg.GMM(K, D)


def test_coords_dimension_mismatch():
    with pytest.raises(dg.InputError, match="D=2"):
        make_truth(2, 2)(np.zeros((3, 3)))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    """Model files and checkpoints get 0o666 & ~umask, as open() would (not
    mkstemp's 0600 whatever the umask)."""
    old = os.umask(umask)
    try:
        g = dg.GMM(2, 2)
        g.save(tmp_path / "m.npz")
        dg.fit(dg.GMM(2, 2), np.random.default_rng(0).normal(size=(100, 2)), maxiter=1,
               checkpoint=tmp_path / "ck.npz")
    finally:
        os.umask(old)
    for name in ("m.npz", "ck.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name
