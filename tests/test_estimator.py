"""The scikit-learn style estimator: parity with fit(), the API, scikit-learn's checks."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.estimator import GaussianMixture, NotFittedError, fit_best

from conftest import make_truth

try:
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:        # scikit-learn is optional: its checks are skipped
    parametrize_with_checks = None


@pytest.fixture(scope="module")
def noisy():
    truth = make_truth(K=3, D=2, seed=5)
    rng = np.random.default_rng(0)
    v = truth.draw(1500, rng=rng)
    var = rng.uniform(0.1, 0.6, v.shape)
    X = v + rng.standard_normal(v.shape) * np.sqrt(var)
    X[rng.random(len(X)) < 0.1, 1] = np.nan
    return truth, X, var


def test_parity_with_fit(noisy):
    _, X, var = noisy
    est = GaussianMixture(3, init_method="minmax", tol=1e-5, w=0.01,
                          random_state=7).fit(X, covar=var)
    g = dg.GMM(3, 2)
    res = dg.fit(g, X, var, init_method="minmax", tol=1e-5, w=0.01, rng=7)
    assert np.array_equal(est.weights_, g.amp)
    assert np.array_equal(est.means_, g.mean)
    assert np.array_equal(est.covariances_, g.covar)
    assert est.lower_bound_ == res.logL and est.n_iter_ == res.n_iter
    assert est.converged_ == res.converged and est.n_features_in_ == 2
    # every method is the library's computation
    assert np.array_equal(est.score_samples(X, covar=var), g.logL(X, var))
    assert est.score(X, covar=var) == pytest.approx(dg.score(g, X, var), rel=1e-12)
    resp = dg.posterior(g, X, var).resp
    assert np.allclose(est.predict_proba(X, covar=var), resp, rtol=1e-10, atol=1e-12)
    assert np.array_equal(est.predict(X, covar=var), resp.argmax(axis=1))
    assert est.bic(X, covar=var) == pytest.approx(dg.bic(g, X, var), rel=1e-12)
    assert est.aic(X, covar=var) == pytest.approx(dg.aic(g, X, var), rel=1e-12)


def test_catalog_input_is_lazy_and_names_features(tmp_path, noisy):
    import dask.array as da

    _, X, var = noisy
    cat = dg.write_catalog(tmp_path / "c.zarr", X, var, columns=["p", "q"], chunks=400)
    est = GaussianMixture(2, random_state=1, maxiter=20).fit(str(tmp_path / "c.zarr"))
    ref = GaussianMixture(2, random_state=1, maxiter=20).fit(X, covar=var)
    assert list(est.feature_names_in_) == ["p", "q"]
    assert not hasattr(ref, "feature_names_in_")
    assert np.allclose(est.means_, ref.means_)
    lazy = est.score_samples(cat)
    assert isinstance(lazy, da.Array)
    assert np.allclose(lazy.compute(), est.score_samples(X, covar=var))
    assert isinstance(est.predict_proba(cat), da.Array)


@pytest.mark.filterwarnings("ignore::daskgmmis.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:sel_callback without covar_callback")
def test_n_init_is_fits_and_prefit_keeps_the_best_start(noisy, caplog):
    from daskgmmis.selection import Box

    _, X, var = noisy
    ref = dg.fit(dg.GMM(3, 2), X, var, n_init=3, rng=11, maxiter=30)
    assert fit_best(dg.GMM(3, 2), X, var, n_init=3, rng=11, maxiter=30).logL == ref.logL
    est = GaussianMixture(3, n_init=3, random_state=11, maxiter=30).fit(X, covar=var)
    assert est.lower_bound_ == ref.logL
    # prefit: a start is a plain fit, then the truncated fit from it (by hand: the
    # same seeds, as one start derives them - init child 1, imputation child 0)
    sel = Box(lower=[-50, -50], upper=[50, 50])
    g = dg.GMM(3, 2)
    dg.fit(g, X, var, rng=5, maxiter=10)
    by_hand = dg.fit(g, X, var, rng=5, maxiter=10, init_method="none", sel_callback=sel)
    one = fit_best(dg.GMM(3, 2), X, var, n_init=1, rng=5, prefit=True, maxiter=10,
                   sel_callback=sel)
    assert one.logL == by_hand.logL
    assert fit_best(dg.GMM(3, 2), X, var, n_init=1, rng=5, maxiter=10,
                    sel_callback=sel).logL != by_hand.logL
    # several starts: start 1 is the single start above; the best one is kept
    caplog.set_level("INFO", logger="daskgmmis")
    best = fit_best(dg.GMM(3, 2), X, var, n_init=3, rng=5, prefit=True, maxiter=10,
                    sel_callback=sel)
    ends = [r for r in caplog.records if getattr(r, "daskgmmis_event", "") == "restart_end"]
    assert [r.restart for r in ends] == [1, 2, 3]
    assert ends[0].logL == one.logL
    assert best.logL == max(r.logL for r in ends)
    with pytest.raises(dg.InputError, match="n_init"):
        fit_best(dg.GMM(3, 2), X, n_init=0)


def test_truncated_fit_with_prefit_and_background_not_mutated(noisy):
    from daskgmmis.selection import Box

    truth, _, _ = noisy
    sel = Box(lower=[None, -100.0], upper=[np.median(truth.mean[:, 0]), 100.0])
    x, _, n_pop = dg.draw(truth, orig_size=2000, sel_callback=sel, rng=3)
    est = GaussianMixture(3, sel_callback=sel, prefit=True, random_state=0, maxiter=100,
                          tol=1e-3).fit(x)
    assert est.N_orig_ > len(x)
    # prefit is used: the recipe by hand (plain fit, then the truncated fit from it)
    # gives the estimator's parameters, a fit without the prefit does not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dg.GMM(3, 2)
        dg.fit(ref, x, rng=0, maxiter=100, tol=1e-3)
        dg.fit(ref, x, sel_callback=sel, init_method="none", rng=0, maxiter=100, tol=1e-3)
        direct = dg.GMM(3, 2)
        dg.fit(direct, x, sel_callback=sel, rng=0, maxiter=100, tol=1e-3)
    np.testing.assert_array_equal(est.means_, ref.mean)
    assert not np.array_equal(est.means_, direct.mean)
    bg = dg.Background(([-20, -20], [20, 20]), amp=0.05, amp_min=0.02)
    est = GaussianMixture(3, background=bg, random_state=0, maxiter=30).fit(x)
    assert bg.amp == 0.05                                  # the parameter is untouched
    assert est.background_ is not bg and est.background_.amp != 0.05
    assert est.weights_.sum() + est.background_.amp == pytest.approx(1.0)
    X, labels = est.sample(4000)
    assert X.shape == (4000, 2) and set(np.unique(labels)) <= {-1, 0, 1, 2}
    assert (labels == -1).any()


def test_init_none_and_frozen(noisy):
    truth, X, var = noisy
    est = GaussianMixture(3, init_method="none", weights_init=truth.amp,
                          means_init=truth.mean, covariances_init=truth.covar,
                          frozen={"mean": [0]}, random_state=0).fit(X, covar=var)
    assert np.array_equal(est.means_[0], truth.mean[0])
    with pytest.raises(dg.InputError, match="weights_init"):
        GaussianMixture(3, init_method="none").fit(X)
    # a partial start is completed by the initialization (scikit-learn's rule)
    part = GaussianMixture(3, means_init=truth.mean, maxiter=0).fit(X, covar=var)
    assert np.array_equal(part.means_, truth.mean)


def test_params_repr_clone_pickle(noisy):
    _, X, var = noisy
    est = GaussianMixture(2, tol=1e-4, random_state=3)
    params = est.get_params()
    assert params["n_components"] == 2 and params["tol"] == 1e-4 and "maxiter" in params
    assert repr(est) == "GaussianMixture(n_components=2, random_state=3, tol=0.0001)"
    assert est.set_params(n_components=3, w=0.1) is est and est.w == 0.1
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        est.set_params(nope=1)
    clone = type(est)(**est.get_params())
    assert clone.get_params() == est.get_params()
    est.fit(X, covar=var)
    again = pickle.loads(pickle.dumps(est))
    assert np.array_equal(again.predict(X, covar=var), est.predict(X, covar=var))


def test_errors_before_fit_and_on_bad_input(noisy):
    _, X, var = noisy
    est = GaussianMixture(2)
    with pytest.raises(NotFittedError, match="not fitted"):
        est.predict(X)
    with pytest.raises(dg.InputError, match="covar="):
        est.fit(X, var)                              # noise passed positionally as y
    with pytest.raises(dg.InputError, match="2D array"):
        est.fit(X[:, 0])
    est.fit(X, covar=var)
    with pytest.raises(dg.InputError, match="X has 3 features, but GaussianMixture is "
                                            "expecting 2 features"):
        est.score_samples(np.ones((4, 3)))
    with pytest.raises(dg.InputError, match="n_samples = 1"):
        GaussianMixture(2).fit(X[:1])
    sklearn = pytest.importorskip("sklearn.exceptions")
    with pytest.raises(sklearn.NotFittedError):
        GaussianMixture(2).predict_proba(X)


def test_no_scikit_learn_import():
    code = ("import sys, numpy as np; from daskgmmis.estimator import GaussianMixture as G; "
            "e = G(2, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 2))); "
            "e.set_params(tol=1e-2); e.get_params(); e.predict(np.zeros((3, 2))); "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


if parametrize_with_checks is not None:
    # Every check applies: the estimator declares (through __sklearn_tags__) that it is
    # a density estimator accepting NaN, which is what it is - NaN marks a missing
    # feature, marginalized exactly - so scikit-learn skips only its NaN-rejection
    # check, by its own rules. No check is expected to fail.
    @parametrize_with_checks([GaussianMixture(2, init_method="kmeans", random_state=0)])
    def test_scikit_learn_checks(estimator, check):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check(estimator)
else:                                                    # pragma: no cover
    @pytest.mark.skip(reason="scikit-learn is not installed")
    def test_scikit_learn_checks():
        pass
