"""The fit options are defined once (daskgmmis.options.FitOptions) and every entry
point reads that table: fit's signature, the estimator, the CLI, the report and the
checkpoint fingerprint (issue 14, item 1)."""

import inspect
import json
import types

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis import em
from daskgmmis.cli import main
from daskgmmis.estimator import GaussianMixture
from daskgmmis.options import FitOptions, option_fields

# one value per option that its constraint refuses, and the error it must give
BAD = {
    "init_method": ("k-means", dg.InputError), "w": (-1.0, dg.InputError),
    "cutoff": (0.0, dg.InputError), "sel_callback": (3, dg.InputTypeError),
    "covar_callback": ("noise", dg.InputTypeError),
    "projection_callback": ("R", dg.InputTypeError), "background": ({}, dg.InputTypeError),
    "tol": (float("nan"), dg.InputError), "maxiter": (-1, dg.InputError),
    "frozen": ("0", dg.InputTypeError), "rng": (1.5, dg.InputTypeError),
    "client": ("tcp://x:1", dg.InputTypeError), "checkpoint": (3, dg.InputTypeError),
    "split_n_merge": (1.0, dg.InputError), "oversampling": (0, dg.InputError),
    "persist": ("no", dg.InputTypeError), "accelerate": (1, dg.InputTypeError),
    "n_init": (0, dg.InputError), "callback_timeout": (-2, dg.InputError),
    "prefit": ("yes", dg.InputTypeError), "progress": (None, dg.InputTypeError),
    "stepwise": (-1, dg.InputError), "estimate_mc_error": ("no", dg.InputTypeError),
}


def test_every_option_is_validated_once_with_an_error_naming_it():
    assert set(BAD) == set(FitOptions.names())
    for name, (value, error) in BAD.items():
        with pytest.raises(error, match=f"^{name}: expected"):
            FitOptions(**{name: value})
    with pytest.raises(dg.InputTypeError, match="unexpected option.*'maxiters'"):
        FitOptions.create(maxiters=3)
    # fit refuses them before touching the data (which is not even valid here)
    for name, (value, error) in BAD.items():
        with pytest.raises(error, match=f"^{name}: expected"):
            dg.fit(dg.GMM(2, 2), None, **{name: value})
    assert FitOptions(maxiter=5).replace(tol=0.5) == FitOptions(maxiter=5, tol=0.5)


def test_fit_signature_is_the_table():
    params = inspect.signature(dg.fit).parameters
    table = FitOptions.defaults()
    assert {n: params[n].default for n in table} == table
    # weights are data (like covar), not an option
    assert list(params)[:6] == ["gmm", "data", "covar", "weights", "projection", "options"]
    assert set(params) == {"gmm", "data", "covar", "weights", "projection", "options", *table}
    assert inspect.signature(em.fit_best) == inspect.signature(dg.fit)
    for name in table:                          # the docstring lists every option
        assert f"\n    {name} : " in dg.fit.__doc__


def test_estimator_parameters_are_the_table():
    params = inspect.signature(GaussianMixture.__init__).parameters
    table = FitOptions.defaults()
    renamed = {"rng": "random_state", "progress": "verbose"}
    for name, default in table.items():
        param = renamed.get(name, name)
        assert param in params, name
        if name != "progress":
            assert params[param].default == default, name
    assert params["verbose"].default == 0            # scikit-learn's: no progress


def test_every_option_has_a_cli_flag_or_a_reason():
    fit_cmd = main.commands["fit"]
    flags = {opt: p for p in fit_cmd.params for opt in p.opts + p.secondary_opts}
    for f in option_fields():
        cli, reason = f.metadata["cli"], f.metadata["python_only"]
        if cli is None:
            assert reason and len(reason) > 20, f.name
            continue
        first = cli.flags[0].split("/")[0]
        assert first in flags, f.name
        param = flags[first]
        expected = f.default if cli.default == "__same__" else cli.default
        assert param.default == expected, f.name
        for alias in cli.flags:
            assert alias.split("/")[0] in flags
    assert flags["--restarts"] is flags["--n-init"]       # the old spelling still works


def test_cli_report_names_every_option(tmp_path):
    from click.testing import CliRunner

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 2)), rng.normal(6, 1, (150, 2))])
    dg.write_catalog(tmp_path / "c.zarr", x, covar=np.full_like(x, 0.01))
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "c.zarr"), "-K", "2", "--out",
                                    str(tmp_path / "m.npz"), "--scheduler", "threads",
                                    "--restarts", "2", "--seed", "1", "--maxiter", "20",
                                    "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    for name in set(FitOptions.names()) - {"client"}:
        assert name in report, name
    assert report["n_init"] == 2 and report["restarts"] == 2 and report["rng"] == 1
    assert report["prefit"] is False and report["frozen"] is None


def test_fingerprint_covers_every_problem_option():
    plan = types.SimpleNamespace(N=10, D=2, kind="none", x=types.SimpleNamespace(
        chunks=((10,), (2,))), shared=None, projection=None)
    summary = types.SimpleNamespace(n=10, n_obs=np.array([10, 10]), lo=np.zeros(2),
                                    hi=np.ones(2), total=np.ones(2), weight=10.0,
                                    projection_sum=0.0)
    frozen = {"amp": np.array([0]), "mean": np.empty(0, int), "covar": np.empty(0, int)}
    base = FitOptions(rng=1)
    fp = em._fingerprint(plan, summary, 3, base, frozen)
    json.dumps(fp)
    changed = {"init_method": "random", "w": 0.5, "cutoff": 4.0, "sel_callback": print,
               "covar_callback": print, "projection_callback": print,
               "background": dg.Background(([0, 0], [1, 1])),
               "rng": 2, "oversampling": 2.0, "accelerate": False, "prefit": True,
               "stepwise": 2}
    problem = {f.name for f in option_fields() if f.metadata["problem"]}
    assert problem == set(changed) | {"frozen"}
    for name, value in changed.items():
        assert em._fingerprint(plan, summary, 3, base.replace(**{name: value}), frozen) != fp
    other = dict(frozen, mean=np.array([1]))
    assert em._fingerprint(plan, summary, 3, base, other) != fp
    # the rows' weights are part of the data
    assert em._fingerprint(plan, types.SimpleNamespace(**{**vars(summary), "weight": 11.0}),
                           3, base, frozen) != fp
    # and so are their projections (shape and the sum of the entries they use)
    projected = types.SimpleNamespace(**{**vars(plan), "projection": np.ones((2, 3))})
    fp_proj = em._fingerprint(projected, summary, 3, base, frozen)
    assert fp_proj != fp
    assert em._fingerprint(projected, types.SimpleNamespace(
        **{**vars(summary), "projection_sum": 1.0}), 3, base, frozen) != fp_proj
    # options that do not change the fitted problem may change between runs
    for name, value in {"tol": 0.5, "maxiter": 3, "n_init": 2, "persist": True,
                        "progress": True, "callback_timeout": 9.0,
                        "estimate_mc_error": False}.items():
        assert em._fingerprint(plan, summary, 3, base.replace(**{name: value}), frozen) == fp
