"""scikit-learn's own GaussianMixture tests, run against dg.GaussianMixture (issue 13).

The test file of the installed scikit-learn
(``sklearn/mixture/tests/test_gaussian_mixture.py``) is copied to a scratch
directory with two edits - its estimator import swapped to daskgmmis's, and its
list of covariance types cut to ``["full"]`` (the only structure daskgmmis fits;
any other is refused with an InputError) - and run in a subprocess. Every test
passes except those listed in ``REMAINING`` with the reason; a test that starts
failing, or one listed that starts passing, fails this test.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

sklearn = pytest.importorskip("sklearn")

REMAINING = {
    # scikit-learn's private methods or functions
    "test_gaussian_mixture_n_parameters": "calls the private _n_parameters()",
    "test_gaussian_mixture_aic_bic": "calls the private _n_parameters()",
    "test_gaussian_mixture_precisions_init": "calls the private _set_parameters() and "
                                             "_initialize()",
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters":
        "mocks scikit-learn's private _estimate_gaussian_parameters",
    # covariance types other than "full", named in the test itself
    "test_bic_1d_1component": "fits covariance_type tied, diag and spherical",
    "test_gaussian_mixture_setting_best_params": "fits covariance_type='spherical'",
    "test_gaussian_mixture_precisions_init_diag": "fits covariance_type='diag'",
    # behaviours that differ on purpose
    "test_check_weights": "expects scikit-learn's message, which prints the minimum as "
                          "'max value' and the maximum as 'min value'; ours does not",
    "test_regularisation": "expects a ValueError on collapsed components with "
                           "reg_covar=0; daskgmmis re-seeds them (DeadComponentWarning)",
}


def test_scikit_learns_gaussian_mixture_tests(tmp_path):
    source = pathlib.Path(sklearn.__file__).parent / "mixture/tests/test_gaussian_mixture.py"
    text = source.read_text()
    text, n_import = re.subn(r"^from sklearn\.mixture import GaussianMixture$",
                             "from daskgmmis import GaussianMixture", text, flags=re.M)
    text, n_types = re.subn(r"^COVARIANCE_TYPE = \[.*\]$", 'COVARIANCE_TYPE = ["full"]',
                            text, flags=re.M)
    assert n_import == 1 and n_types == 1, "scikit-learn's test file changed its layout"
    (tmp_path / "test_gaussian_mixture.py").write_text(text)
    # its fixtures (global_dtype, global_random_seed) are scikit-learn's conftest's
    (tmp_path / "conftest.py").write_text("from sklearn.conftest import *  # noqa\n")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEp",
         "--rootdir", str(tmp_path), "-o", "addopts=", "-k", "not array_api",
         str(tmp_path / "test_gaussian_mixture.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    report = proc.stdout
    failed = {m.split("[")[0] for m in re.findall(r"^(?:FAILED|ERROR) \S+::(\S+)", report,
                                                  flags=re.M)}
    passed = {m.split("[")[0] for m in re.findall(r"^PASSED \S+::(\S+)", report, flags=re.M)}
    assert failed == set(REMAINING), report[-3000:]
    assert len(passed) >= 25 and not passed & set(REMAINING), report[-3000:]
