"""Every script in examples/ runs, on small sizes, and shows what it claims."""

import importlib.util
import os
import warnings

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_demo_run_and_benchmark(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from daskgmmis import demo
    out = demo.run_demo(tmp_path, seed=1, n_restarts=1, n_samples=120, client="threads",
                        maxiter=8)
    assert os.path.getsize(out["figure"]) > 20_000
    assert out["n_observed"] < out["n_samples"] == 120
    assert set(out["fits"]) == {key for key, *_ in demo.VARIANTS}
    assert all(np.isfinite(f["logL_orig"]) for f in out["fits"].values())
    # the noise-free rows the fits are judged on are the population draw() simulated
    observed, noise, orig = demo.simulate(1, 120)
    assert orig.shape == (120, 2) and np.array_equal(noise, 0.25 * np.eye(2))
    assert np.all(demo.selection()(observed) == 1)
    bench = demo.run_benchmark([1, 2], tmp_path / "b", client="threads", n_restarts=1,
                               n_samples=60, maxiter=3, verbose=False)
    assert len(bench["runs"]) == 2 and set(bench["mean"]) == set(out["fits"]) | {"truth"}
    assert "truth" in capsys.readouterr().out


def test_noisy_catalog(tmp_path):
    out = load("noisy_catalog").main(["--rows", "4000", "--workers", "0", "--out",
                                      str(tmp_path)])
    assert (tmp_path / "catalog.csv").exists() and (tmp_path / "catalog.zarr").exists()
    assert out["deconvolved"] < out["naive"]         # deconvolution removes the noise
    assert out["rms_denoised"] < out["rms_observed"]


def test_truncated_custom_selection():
    out = load("truncated_custom_selection").main(["--rows", "2500", "--workers", "0",
                                                   "--restarts", "1"])
    assert out["truncated"]["mean_error"] < out["naive"]["mean_error"]
    assert out["truncated"]["amp_error"] < out["naive"]["amp_error"]
    assert abs(out["truncated"]["N_orig"] / out["N_pop"] - 1) < 0.15


def test_larger_than_memory(tmp_path):
    out = load("larger_than_memory").main(["--rows", "40000", "--workers", "0",
                                           "--maxiter", "3", "--out", str(tmp_path)])
    assert out["rows"] == 40000 and out["n_iter"] == 3
    assert out["peak_worker_bytes"] is None         # no cluster in this run


def test_estimator_example():
    out = load("estimator").main(["--rows", "2000", "--kmax", "3"])
    assert out["K"] == min(out["bic"], key=out["bic"].get)
    assert out["logL_true_rows"] > out.get("sklearn_logL_true_rows", -np.inf)


def test_quickstart_recovers_truth(capsys):
    quickstart = load("quickstart")
    quickstart.main(["--rows", "30000", "--workers", "1"])
    out = capsys.readouterr().out
    err = float(out.strip().splitlines()[-1].split(":")[-1])
    assert err < 0.1, out


def test_demo_figure_labels_axes_and_names_the_selection_boundary(tmp_path):
    pytest.importorskip("matplotlib")
    from daskgmmis import demo

    observed, noise, orig = demo.simulate(2, 300)
    truth = demo.truth_model()
    fits = {key: (truth, None, 0.0) for key, *_ in demo.VARIANTS}
    fig = demo.plot_demo(tmp_path / "demo.png", fits, observed, orig, 0.0)
    assert os.path.getsize(tmp_path / "demo.png") > 20_000
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == len(demo.VARIANTS)
    assert all((ax.get_xlabel(), ax.get_ylabel()) == ("x", "y") for ax in panels)
    texts = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert {"observed rows", "original rows", "selection boundary (Ω = ½)",
            "model density (deconvolved)"} <= set(texts)
