"""The `daskgmmis` command end to end on real files (CSV, Parquet, FITS, .npy, Zarr)."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import daskgmmis as dg
from daskgmmis.cli import main

from conftest import make_truth

COMMANDS = ["demo", "ingest", "fit", "score", "sample", "info", "plot", "posterior", "predict"]


def run(*args, ok=True):
    """Invoke the CLI in-process; check the exit status (ok=False: expect a failure)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    else:
        assert result.exit_code != 0, result.output
    return result


def one_line_error(result, match):
    """A failure ends stderr with exactly one error line, and shows no traceback.

    (Progress lines written before the failure, such as "fitting ...", may precede it.)
    """
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert lines[-1].startswith("daskgmmis") and match in lines[-1], lines[-1]
    assert "Traceback" not in result.output


def listing(path):
    return sorted(os.listdir(path))


@pytest.fixture(scope="module")
def data():
    truth = make_truth(K=2, D=2, seed=1)
    rng = np.random.default_rng(2)
    v = truth.draw(1200, rng=rng)
    err = rng.uniform(0.1, 0.5, v.shape)
    x = v + rng.standard_normal(v.shape) * err
    x[5, 1] = np.nan
    return truth, x, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data):
    """A CSV table, its catalog and a fitted model shared by the tests that only read."""
    d = tmp_path_factory.mktemp("cli")
    _, x, err = data
    with open(d / "t.csv", "w") as f:
        f.write("id,a,b,a_err,b_err\n")
        for i, (r, e) in enumerate(zip(x, err)):
            vals = ["" if np.isnan(v) else repr(float(v)) for v in (*r, *e)]
            f.write(f"s{i}," + ",".join(vals) + "\n")
    run("ingest", d / "t.csv", d / "cat.zarr", "--columns", "a,b", "--errors", "a_err,b_err")
    run("fit", d / "cat.zarr", "-K", 2, "--out", d / "model.npz", "--seed", 3,
        "--scheduler", "threads", "--report", d / "fit.json")
    return d


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_documents_itself(command):
    out = run(command, "--help").output
    assert "Examples:" in out and f"daskgmmis {command}" in out


def test_group_help_and_version():
    out = run("--help").output
    assert all(c in out for c in COMMANDS)
    assert dg.__version__ in run("--version").output


# --------------------------------------------------------------------- ingest


def test_ingest_csv_equals_source_columns(workdir, data):
    _, x, err = data
    cat = dg.open_catalog(workdir / "cat.zarr")
    assert cat.columns == ["a", "b"] and cat.covar_kind == "diag"
    assert np.array_equal(cat.data.compute(), x, equal_nan=True)
    assert np.array_equal(cat.covar.compute(), err * err)


def test_ingest_parquet_fits_npy_and_variances(tmp_path, data):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("astropy")
    from astropy.table import Table

    _, x, err = data
    var, rho = err**2, np.linspace(-0.5, 0.5, len(x))
    cols = {"a": x[:, 0], "b": x[:, 1], "va": var[:, 0], "vb": var[:, 1], "r": rho}
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    Table(cols).write(tmp_path / "t.fits")
    np.save(tmp_path / "t.npy", x)
    for name in ("t.parquet", "t.fits"):
        out = tmp_path / (name + ".zarr")
        res = run("ingest", tmp_path / name, out, "-c", "a,b", "-e", "va,vb", "--variances",
                  "--corr", "a,b,r", "--batch-rows", 100)
        assert "noise: full" in res.output
        cat = dg.open_catalog(out)
        S = cat.covar.compute()
        assert np.array_equal(cat.data.compute(), x, equal_nan=True)
        assert np.array_equal(S[:, 0, 0], var[:, 0]) and np.array_equal(S[:, 1, 1], var[:, 1])
        ok = ~np.isnan(x).any(axis=1)
        assert np.array_equal(S[ok, 0, 1], rho[ok] * np.sqrt(var[ok, 0]) * np.sqrt(var[ok, 1]))
    run("ingest", tmp_path / "t.npy", tmp_path / "n.zarr")
    assert np.array_equal(dg.open_catalog(tmp_path / "n.zarr").data.compute(), x,
                          equal_nan=True)


@pytest.mark.parametrize("content, args, match", [
    ("a,b\n1,x\n2,3\n", ["-c", "a,b"], "x"),
    ("a,b\n1,2\n", ["-c", "a,q"], "no column named 'q'"),
    ("a,b\n1,-1\n", ["-c", "a", "-e", "b"], "standard deviation"),
    ("a,b\n1,2\n", ["-c", "a,b", "--format", "xls"], "Invalid value for '--format'"),
    ("a,b\n1,2\n", ["-c", "a,b", "--corr", "a,b"], "correlations"),
])
def test_ingest_bad_files_and_options(tmp_path, content, args, match):
    (tmp_path / "in.csv").write_text(content)
    res = run("ingest", tmp_path / "in.csv", tmp_path / "out.zarr", *args, ok=False)
    one_line_error(res, match)
    assert listing(tmp_path) == ["in.csv"]


def test_ingest_refuses_to_overwrite_and_missing_input(tmp_path, workdir):
    out = tmp_path / "c.zarr"
    run("ingest", workdir / "t.csv", out, "-c", "a")
    res = run("ingest", workdir / "t.csv", out, "-c", "a_err", ok=False)
    one_line_error(res, "exists")
    assert dg.open_catalog(out).columns == ["a"]
    run("ingest", workdir / "t.csv", out, "-c", "a_err", "--overwrite")
    assert dg.open_catalog(out).columns == ["a_err"]
    res = run("ingest", tmp_path / "nope.csv", tmp_path / "x.zarr", ok=False)
    one_line_error(res, "no such file")


# ------------------------------------------------------------------------ fit


def test_fit_matches_library_and_writes_report(workdir):
    g = dg.GMM(2, 2)
    res = dg.fit(g, dg.open_catalog(workdir / "cat.zarr"), rng=3)
    model = dg.GMM.load(workdir / "model.npz")
    assert np.array_equal(model.amp, g.amp) and np.array_equal(model.covar, g.covar)
    report = json.loads((workdir / "fit.json").read_text())
    assert report["history"] == res.history and report["n_iter"] == res.n_iter
    assert report["K"] == 2 and report["converged"] == res.converged


def test_fit_progress_lines_and_quiet(tmp_path, workdir):
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m.npz",
              "--scheduler", "threads", "--seed", 1, "--progress", "--n-init", 2)
    lines = res.stderr.splitlines()
    iters = [line for line in lines if line.strip().startswith("iter")]
    assert len(iters) >= 4 and "mean logL" in iters[0] and " s/iter" in iters[0]
    assert "N_orig" not in iters[0]                 # only shown for truncated fits
    # a header per start, its iterations, its one-line summary, then the best
    heads = [i for i, line in enumerate(lines) if line in ("restart 1/2", "restart 2/2")]
    ends = [i for i, line in enumerate(lines) if line.startswith(("  restart 1/2: mean logL",
                                                                  "  restart 2/2: mean logL"))]
    assert len(heads) == 2 and len(ends) == 2, res.stderr
    assert heads[0] < ends[0] < heads[1] < ends[1]
    assert any(line.strip().startswith("iter") for line in lines[heads[1]:ends[1]])
    assert lines[-1].startswith("best of 2: mean logL")
    assert "converged" in res.stdout and "wrote" in res.stdout
    # not on a terminal (CliRunner), by default: the starts' summaries, no iterations
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m.npz",
              "--scheduler", "threads", "--overwrite", "--restarts", 2)
    assert "restart 2/2: mean logL" in res.stderr and "iter " not in res.stderr
    res = run("-q", "fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m.npz",
              "--scheduler", "threads", "--overwrite", "--progress")
    assert "iter" not in res.stderr and "restart" not in res.stderr


def test_fit_truncated_with_builtin_and_user_selection(tmp_path, workdir, monkeypatch):
    sel = '{"type": "box", "lower": [-100, -100], "upper": [100, 100]}'
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "a.npz",
              "--scheduler", "threads", "--seed", 1, "--selection", sel, "--prefit",
              "--covar-callback", "[0.04, 0.04]", "--maxiter", 30, "--oversampling", 2)
    assert "N_orig" in res.stderr and "N_orig=" in res.stdout
    assert "(Monte Carlo)" in res.stdout            # N_orig's Monte-Carlo error
    (tmp_path / "mysel.py").write_text(
        "import numpy as np\n"
        "def omega(coords):\n"
        "    return np.where(coords[:, 0] < 100.0, 1.0, 0.0)\n"
        "class Noise:\n"
        "    def __call__(self, coords):\n"
        "        return np.full((len(coords), 2), 0.04)\n"
        "noise = Noise()\n")
    # file.py:function and module:function (imported from the working directory, as
    # `python -m` would); the command may extend sys.path: restore it afterwards
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "b.npz",
              "--scheduler", "threads", "--seed", 1, "--selection", "mysel.py:omega",
              "--covar-callback", "mysel:noise", "--maxiter", 10, "--no-mc-error")
    assert "N_orig=" in res.stdout and "Monte Carlo" not in res.stdout
    sys.modules.pop("mysel", None)
    assert dg.GMM.load(tmp_path / "b.npz").K == 2


def test_fit_a_projected_catalog_truncated_with_a_projection_callback(tmp_path, monkeypatch):
    # a catalog of 2-D projections of a 3-D model: the model's D comes from the stored
    # projection, the imputed rows' projection from --projection-callback; without it
    # the per-row projection is refused with the option's name
    rng = np.random.default_rng(3)
    truth = dg.GMM(2, 3)
    truth.amp = np.array([0.5, 0.5])
    truth.mean = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    truth.covar = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    v = truth.draw(3000, rng=rng)
    table = np.random.default_rng(5).normal(size=(16, 2, 3))
    R = table[np.arange(3000) % 16]
    y = np.einsum("nij,nj->ni", R, v)
    y, R = y[y[:, 0] < 1.0], R[y[:, 0] < 1.0]
    dg.write_catalog(tmp_path / "p.zarr", y, projection=R)
    truth.save(tmp_path / "start.npz")
    (tmp_path / "proj.py").write_text(
        "import numpy as np\n"
        "TABLE = np.random.default_rng(5).normal(size=(16, 2, 3))\n"
        "def at(t):\n"
        "    h = np.sin(t @ np.array([12.9898, 78.233, 37.719])) * 43758.5453\n"
        "    return TABLE[((h - np.floor(h)) * 16).astype(int)]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    sel = '{"type": "box", "lower": [null, null], "upper": [1, null]}'
    common = ("fit", tmp_path / "p.zarr", "--init-model", tmp_path / "start.npz",
              "--scheduler", "threads", "--selection", sel, "--maxiter", 30)
    res = run(*common, "--out", tmp_path / "m.npz", ok=False)
    assert "projection_callback" in res.output
    res = run(*common, "--out", tmp_path / "m.npz", "--projection-callback", "proj.py:at")
    sys.modules.pop("proj", None)
    assert "N_orig=" in res.stdout
    n_orig = float(res.stdout.split("N_orig=")[1].split()[0].rstrip(","))
    assert abs(n_orig / 3000 - 1) < 0.1, n_orig
    assert dg.GMM.load(tmp_path / "m.npz").D == 3


def test_fit_background_frozen_restarts_init_model(tmp_path, workdir):
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "bg.npz",
              "--scheduler", "threads", "--bg-lower=-20,-20", "--bg-upper", "20,20",
              "--bg-amp", 0.1, "--restarts", 2, "--seed", 4, "--init-method", "minmax",
              "--maxiter", 50)
    assert "background amp" in res.stdout
    model = dg.GMM.load(tmp_path / "bg.npz")
    assert model.background is not None and model.background.amp != 0.1
    start = dg.GMM.load(workdir / "model.npz")
    run("fit", workdir / "cat.zarr", "--init-model", workdir / "model.npz", "--out",
        tmp_path / "fz.npz", "--scheduler", "threads", "--frozen", '{"mean": [1]}',
        "--maxiter", 5)
    assert np.array_equal(dg.GMM.load(tmp_path / "fz.npz").mean[1], start.mean[1])


@pytest.mark.parametrize("args, match, code", [
    (["-K", 2, "--frozen", "{bad"], "not valid JSON", 2),
    (["-K", 2, "--selection", '{"type": "circle"}'], "selection type", 1),
    (["-K", 2, "--selection", "nomodule_xyz:f"], "cannot import", 2),
    (["-K", 2, "--covar-callback", "[1, 2, 3]"], "--covar-callback", 2),
    (["-K", 2, "--bg-amp", 0.2], "footprint", 2),
    (["-K", 2, "--bg-lower", "0,0", "--bg-upper", "1"], "2 numbers", 2),
    (["-K", 5000], "only 1200 usable rows", 1),
    (["-K", 2, "--tol", -1], "--tol", 2),
    (["-K", 2, "--bogus"], "No such option", 2),
    ([], "-K", 2),
    (["-K", 2, "--scheduler", "threads", "--workers", 2], "in-process", 2),
    (["-K", 2, "--init-method", "none"], "--init-model", 2),
])
def test_fit_bad_options_fail_cleanly(tmp_path, workdir, args, match, code):
    extra = [] if "--scheduler" in args else ["--scheduler", "threads"]
    res = run("fit", workdir / "cat.zarr", "--out", tmp_path / "m.npz", *args, *extra,
              ok=False)
    assert res.exit_code == code
    one_line_error(res, match)
    assert listing(tmp_path) == []


def test_fit_bad_catalog_and_existing_output(tmp_path, workdir):
    res = run("fit", tmp_path / "none.zarr", "-K", 2, "--out", tmp_path / "m.npz", ok=False)
    one_line_error(res, "does not exist")
    (tmp_path / "notzarr").mkdir()
    res = run("fit", tmp_path / "notzarr", "-K", 2, "--out", tmp_path / "m.npz", ok=False)
    one_line_error(res, "not")
    shutil.copy(workdir / "model.npz", tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    res = run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m.npz", ok=False)
    one_line_error(res, "exists; pass --overwrite")
    assert (tmp_path / "m.npz").read_bytes() == before
    assert listing(tmp_path) == ["m.npz", "notzarr"]


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "none.zarr"), "-K", "2",
                                       "--out", str(tmp_path / "m.npz"), "--debug"])
    assert isinstance(result.exception, dg.CatalogNotFoundError)


def test_fit_checkpoint(tmp_path, workdir, monkeypatch):
    from daskgmmis import kernels

    blocks = []                    # row offsets of the E-step block tasks run in-process
    real = kernels.estep_block
    monkeypatch.setattr(kernels, "estep_block",
                        lambda *a, **kw: blocks.append(kw.get("row_offset")) or real(*a, **kw))
    ck = tmp_path / "state.ckpt"
    run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m.npz", "--scheduler",
        "threads", "--seed", 1, "--checkpoint", ck)
    assert ck.exists()
    first, n_blocks = len(blocks), len(set(blocks))
    del blocks[:]
    # a rerun resumes from the finished state: same model, from one E-step (a
    # seeded restart would give the same model after every E-step again)
    run("fit", workdir / "cat.zarr", "-K", 2, "--out", tmp_path / "m2.npz", "--scheduler",
        "threads", "--seed", 1, "--checkpoint", ck)
    a, b = dg.GMM.load(tmp_path / "m.npz"), dg.GMM.load(tmp_path / "m2.npz")
    assert np.array_equal(a.mean, b.mean)
    assert first >= 3 * n_blocks and len(blocks) <= 2 * n_blocks


# ------------------------------------------------------ score, posterior, sample


def test_score_writes_per_row_loglikelihood_in_row_order(tmp_path, workdir, data):
    _, x, err = data
    res = run("score", workdir / "model.npz", workdir / "cat.zarr", "--out",
              tmp_path / "s.zarr", "--scheduler", "threads")
    g = dg.GMM.load(workdir / "model.npz")
    expected = g.logL(x, err**2)
    stored = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert stored.attrs["daskgmmis_format"] == "daskgmmis-scores"
    assert np.allclose(stored["logL"][:], expected, rtol=1e-12)
    assert f"{expected.mean():.6f}" in res.output
    one_line_error(run("score", workdir / "model.npz", workdir / "cat.zarr", "--out",
                       tmp_path / "s.zarr", ok=False), "exists")
    dg.write_catalog(tmp_path / "d3.zarr", np.ones((4, 3)))
    one_line_error(run("score", workdir / "model.npz", tmp_path / "d3.zarr", "--out",
                       tmp_path / "t.zarr", "--scheduler", "threads", ok=False), "D=3")
    assert listing(tmp_path) == ["d3.zarr", "s.zarr"]


def test_posterior_command(tmp_path, workdir, data):
    _, x, err = data
    run("posterior", workdir / "model.npz", workdir / "cat.zarr", "--out", tmp_path / "p.zarr",
        "--scheduler", "threads")
    post = dg.posterior(dg.GMM.load(workdir / "model.npz"), x, err**2)
    stored = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert np.allclose(stored["mean"][:], post.mean, rtol=1e-12)
    assert np.allclose(stored["resp"][:], post.resp, rtol=1e-12, atol=1e-300)


def test_sample_noise_selection_reproducible(tmp_path, workdir):
    box = '{"type": "box", "lower": [-3, -3], "upper": [3, 3]}'
    args = ["sample", workdir / "model.npz", "-n", 700, "--seed", 5, "--noise",
            "[[0.2, 0.05], [0.05, 0.1]]", "--selection", box, "--batch-rows", 300]
    run(*args, "--out", tmp_path / "a.zarr")
    run(*args, "--out", tmp_path / "b.zarr")
    a, b = dg.open_catalog(tmp_path / "a.zarr"), dg.open_catalog(tmp_path / "b.zarr")
    xa = a.data.compute()
    assert xa.shape == (700, 2) and np.array_equal(xa, b.data.compute())
    assert np.all(np.abs(xa) <= 3)
    assert a.covar_kind == "full" and np.allclose(a.covar.compute()[0],
                                                  [[0.2, 0.05], [0.05, 0.1]])
    run("sample", workdir / "model.npz", "-n", 50, "--noise", 0.3, "--out",
        tmp_path / "c.zarr")
    c = dg.open_catalog(tmp_path / "c.zarr")
    assert c.covar_kind == "diag" and np.all(c.covar.compute() == 0.3)
    one_line_error(run("sample", workdir / "model.npz", "-n", 5, "--noise", "[1, 2, 3]",
                       "--out", tmp_path / "d.zarr", ok=False), "--noise")
    assert listing(tmp_path) == ["a.zarr", "b.zarr", "c.zarr"]


# ----------------------------------------------------------------- info, plot


def test_info_model_catalog_and_other_stores(tmp_path, workdir, data):
    _, x, _ = data
    out = run("info", workdir / "model.npz").output
    assert "K=2" in out and "amp" in out
    summary = json.loads(run("info", workdir / "cat.zarr", "--stats", "--json").output)
    assert summary["N"] == len(x) and summary["columns"] == ["a", "b"]
    assert summary["stats"]["b"]["observed"] == len(x) - 1
    assert summary["stats"]["a"]["max"] == pytest.approx(np.nanmax(x[:, 0]))
    assert "catalog" in run("info", workdir / "cat.zarr").output
    run("score", workdir / "model.npz", workdir / "cat.zarr", "--out", tmp_path / "s.zarr",
        "--scheduler", "threads")
    assert "array logL" in run("info", tmp_path / "s.zarr").output
    one_line_error(run("info", tmp_path / "nothing", ok=False), "does not exist")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    one_line_error(run("info", tmp_path / "bad.npz", ok=False), "bad.npz")


@pytest.mark.parametrize("kind, args, panels", [
    ("corner", [], 3),
    ("density", ["--selection", '{"type": "sphere", "center": [0, 0], "radius": 3}'], 1),
    ("convergence", ["--report", "FIT_REPORT"], 2),
])
def test_plot_kinds(tmp_path, workdir, kind, args, panels):
    pytest.importorskip("matplotlib")
    args = [workdir / "fit.json" if a == "FIT_REPORT" else a for a in args]
    out = tmp_path / f"{kind}.png"
    res = run("plot", workdir / "model.npz", workdir / "cat.zarr", "--out", out, "--kind",
              kind, *args)
    assert f"({panels} panels)" in res.output
    assert out.stat().st_size > 10_000
    pdf = tmp_path / f"{kind}.pdf"
    run("plot", workdir / "model.npz", workdir / "cat.zarr", "--out", pdf, "--kind", kind,
        *args)
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_plot_errors_leave_nothing(tmp_path, workdir):
    pytest.importorskip("matplotlib")
    one_line_error(run("plot", workdir / "model.npz", "--out", tmp_path / "f.jpg", ok=False),
                   ".png")
    one_line_error(run("plot", workdir / "model.npz", "--kind", "convergence", "--out",
                       tmp_path / "f.png", ok=False), "--report")
    one_line_error(run("plot", workdir / "model.npz", "--kind", "density", "--dims", "0,5",
                       "--out", tmp_path / "f.png", ok=False), "dims")
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------- demo


def test_demo_small(tmp_path):
    pytest.importorskip("matplotlib")
    res = run("demo", "--out", tmp_path / "demo", "--scheduler", "threads", "--samples", 120,
              "--restarts", 1, "--maxiter", 8, "--seed", 2, "--json", tmp_path / "d.json")
    assert "truth" in res.output and "EM + truncation + deconvolution" in res.output
    # each fit is labelled above its progress, with its starts' summaries below
    labels = [line for line in res.stderr.splitlines() if line.startswith("fit ")]
    assert labels == ["fit 1/4: EM (1 starts)", "fit 2/4: EM + deconvolution (1 starts)",
                      "fit 3/4: EM + truncation (1 starts)",
                      "fit 4/4: EM + truncation + deconvolution (1 starts)"]
    assert res.stderr.count("  restart 1/1: mean logL") == 4
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 20_000
    numbers = json.loads((tmp_path / "d.json").read_text())
    assert set(numbers["fits"]) == {"plain", "deconvolution", "truncation", "both"}
    assert numbers["n_samples"] == 120


# ---------------------------------------------------- the installed entry point


def test_installed_entry_point_on_a_local_cluster(tmp_path, workdir):
    exe = shutil.which("daskgmmis", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the daskgmmis entry point is not installed (pip install -e .)")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([exe, "fit", str(workdir / "cat.zarr"), "-K", "2", "--out",
                           str(tmp_path / "m.npz"), "--workers", "1", "--seed", "3"],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "LocalCluster" in proc.stderr and "restart 1/1: mean logL" in proc.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dg.GMM.load(workdir / "model.npz")
    assert np.allclose(dg.GMM.load(tmp_path / "m.npz").mean, ref.mean)
    proc = subprocess.run([exe, "info", str(tmp_path / "missing.npz")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
