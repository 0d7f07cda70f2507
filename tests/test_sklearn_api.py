"""scikit-learn habits on dg.GaussianMixture (issue 13, item 3): its parameter names,
fitted attributes, fit_predict, the starting parameters' checks, warm starts, warnings
scikit-learn's filters catch, and clone / Pipeline / GridSearchCV.

References are independent: scikit-learn's own GaussianMixture from the same start,
numpy inverses, and the estimator's own daskgmmis spelling of the same fit.
"""

import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis import GaussianMixture

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal([0, 0], 0.5, (150, 2)),
                           rng.normal([4, 1], [1.0, 0.3], (150, 2))])


def test_sklearn_names_are_parameters_and_map_onto_the_fit(blobs):
    est = GaussianMixture(n_components=2, covariance_type="full", tol=1e-4, reg_covar=0.04,
                          max_iter=40, n_init=2, init_params="random_from_data",
                          random_state=3).fit(blobs)
    assert est.get_params()["max_iter"] == 40 and est.reg_covar == 0.04
    # reg_covar is a variance, w a length: reg_covar=0.04 is w=0.2, step for step
    ref = GaussianMixture(2, tol=1e-4, w=0.2, maxiter=40, n_init=2, init_method="random",
                          random_state=3).fit(blobs)
    assert np.array_equal(est.means_, ref.means_)
    assert np.array_equal(est.covariances_, ref.covariances_)
    # both add to the diagonal: w=0.1 with reg_covar=0.03 is w=0.2 again
    both = GaussianMixture(2, tol=1e-4, w=0.1, reg_covar=0.03, maxiter=40, n_init=2,
                           init_method="random", random_state=3).fit(blobs)
    assert np.allclose(both.covariances_, ref.covariances_, rtol=1e-9, atol=1e-12)
    for bad, words in [(dict(covariance_type="diag"), "only 'full'"),
                       (dict(init_params="spectral"), "init_params"),
                       (dict(max_iter=5, maxiter=7), "two names"),
                       (dict(reg_covar=-1.0), "reg_covar"),
                       (dict(init_params="kmeans", init_method="minmax"), "disagree")]:
        with pytest.raises(dg.InputError, match=words):
            GaussianMixture(2, **bad).fit(blobs)


def test_fitted_attributes_match_scikit_learn_from_the_same_start(blobs):
    weights, means = np.array([0.5, 0.5]), np.array([[0.0, 0.0], [4.0, 1.0]])
    precisions = np.array([np.eye(2) * 2.0, np.eye(2)])
    # 25 plain EM steps each (tol 0: neither stops early)
    kw = dict(weights_init=weights, means_init=means, precisions_init=precisions,
              reg_covar=0.0, tol=0.0, max_iter=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        ours = GaussianMixture(2, accelerate=False, **kw).fit(blobs)
        theirs = SkGaussianMixture(2, **kw).fit(blobs)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert np.allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-10,
                           atol=1e-12), name
    assert ours.n_iter_ == theirs.n_iter_ == 25 and not ours.converged_
    assert ours.n_features_in_ == 2
    assert ours.lower_bounds_[-1] == ours.lower_bound_
    # precisions are the inverse covariances; the factor is upper triangular
    for P, U, C in zip(ours.precisions_, ours.precisions_cholesky_, ours.covariances_):
        assert np.allclose(P @ C, np.eye(2), atol=1e-10)
        assert np.allclose(U, np.triu(U)) and np.allclose(U @ U.T, P)
    assert np.array_equal(GaussianMixture(2, random_state=1).fit_predict(blobs),
                          GaussianMixture(2, random_state=1).fit(blobs).predict(blobs))


def test_starting_parameters_alone_and_their_checks(blobs):
    # weights alone: accepted, the rest from the initialization
    est = GaussianMixture(2, weights_init=[0.3, 0.7], max_iter=0, random_state=0).fit(blobs)
    assert np.allclose(est.weights_, [0.3, 0.7])
    # means alone with no iteration: the start is the given means (scikit-learn's rule)
    est = GaussianMixture(2, means_init=[[1, 1], [2, 2]], max_iter=0).fit(blobs)
    assert np.array_equal(est.means_, [[1, 1], [2, 2]])
    # unnormalized weights are refused (they would shift the score by log of the sum)
    with pytest.raises(dg.InputError, match=r"normalized, but got sum\(weights\) = 0.60000"):
        GaussianMixture(2, weights_init=[0.2, 0.4]).fit(blobs)
    with pytest.raises(dg.InputError, match=r"'weights' should have the shape of \(2,\)"):
        GaussianMixture(2, weights_init=[1.0]).fit(blobs)
    with pytest.raises(dg.InputError, match="'means' should have the shape of"):
        GaussianMixture(2, means_init=np.zeros((3, 2))).fit(blobs)
    bad = np.array([np.eye(2), np.eye(2)])
    bad[0, 0, 0] = -1
    with pytest.raises(dg.InputError, match="'full precision' should be symmetric, positive"):
        GaussianMixture(2, precisions_init=bad).fit(blobs)
    with pytest.raises(dg.InputError, match="n_init=2 with some of"):
        GaussianMixture(2, means_init=[[1, 1], [2, 2]], n_init=2).fit(blobs)


def test_warm_start_continues_the_previous_fit(blobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        two = GaussianMixture(2, max_iter=2, tol=0.0, accelerate=False,
                              random_state=4).fit(blobs)
        warm = GaussianMixture(2, max_iter=1, tol=0.0, accelerate=False, random_state=4,
                               warm_start=True)
        first = warm.fit(blobs).lower_bound_
        second = warm.fit(blobs).lower_bound_
        cold = GaussianMixture(2, max_iter=1, tol=0.0, accelerate=False, random_state=4)
        cold.fit(blobs)
        again = cold.fit(blobs).lower_bound_
    assert np.allclose(warm.means_, two.means_, rtol=1e-12)
    assert second > first and again == first            # without warm_start: restarts


def test_warm_started_single_iterations_are_one_fit_and_report_convergence(blobs):
    """scikit-learn's habit: fit(max_iter=1) in a warm-started loop until converged_.

    Each call goes on with the previous call's EM state (its acceleration memory and the
    contraction rates of the convergence test), so the loop visits exactly the
    points of one long fit and stops where it stops; warm-starting on other data
    starts a new convergence test (and does not converge in one iteration)."""
    long = GaussianMixture(2, tol=1e-10, random_state=4).fit(blobs)
    assert long.converged_ and long.n_iter_ > 3
    warm = GaussianMixture(2, max_iter=1, tol=1e-10, random_state=4, warm_start=True)
    bounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        for _ in range(100):
            warm.fit(blobs)
            # each call evaluates where the last one ended, then one M-step further
            assert not bounds or warm.lower_bounds_[0] == bounds[-1]
            bounds += warm.lower_bounds_[1 if bounds else 0:]
            if warm.converged_:
                break
    assert warm.converged_
    # the same sequence of evaluated points as the long fit, and the same end
    assert bounds == pytest.approx(long.lower_bounds_, rel=0, abs=1e-12)
    np.testing.assert_allclose(warm.means_, long.means_, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        warm.fit(blobs[::-1][:-3])       # other data: a fresh test, one step is not enough
    assert not warm.converged_


def test_convergence_warning_is_scikit_learns(blobs):
    # scikit-learn was imported after daskgmmis (this module): the fit adopts it
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkConvergenceWarning)   # a scikit-learn user's filter
        with pytest.raises(dg.ConvergenceWarning, match="did not converge"):
            dg.fit(dg.GMM(2, 2), blobs, maxiter=1, tol=0.0, rng=0)
    assert issubclass(dg.ConvergenceWarning, SkConvergenceWarning)
    assert issubclass(dg.DeadComponentWarning, SkConvergenceWarning)
    assert issubclass(dg.ConvergenceWarning, UserWarning)      # as before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        warnings.simplefilter("error", dg.DeadComponentWarning)
        GaussianMixture(2, max_iter=1, tol=0.0, random_state=0).fit(blobs)  # silenced


def test_clone_pipeline_and_grid_search(blobs):
    est = GaussianMixture(2, reg_covar=1e-6, max_iter=50, random_state=0)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    pipe = make_pipeline(StandardScaler(), GaussianMixture(2, random_state=0)).fit(blobs)
    assert pipe.predict(blobs).shape == (len(blobs),)
    grid = GridSearchCV(GaussianMixture(random_state=0, max_iter=50),
                        {"n_components": [1, 2, 3]}, cv=3).fit(blobs)
    # held-out likelihood prefers the two true components over one
    scores = dict(zip(grid.cv_results_["param_n_components"],
                      grid.cv_results_["mean_test_score"]))
    assert scores[2] > scores[1]
    assert grid.best_estimator_.n_components in (2, 3)
