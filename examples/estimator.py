"""The scikit-learn style estimator: model selection with BIC on noisy, incomplete data.

``daskgmmis.GaussianMixture`` is used like ``sklearn.mixture.GaussianMixture``
(``fit``, ``predict_proba``, ``score_samples``, ``bic``, ``sample``,
``get_params``), but takes per-row noise (``covar=``) and NaN for missing
entries. This script picks the number of components by BIC on a noisy catalog
with missing values, then compares the chosen model with scikit-learn's fit of
the complete rows (which can neither use the incomplete rows nor remove the
noise).

Run: python examples/estimator.py [--rows N] [--kmax K]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import daskgmmis as dg
from daskgmmis.estimator import GaussianMixture


def simulate(rows: int, seed: int):
    truth = dg.GMM(3, 2)
    truth.amp = np.array([0.4, 0.35, 0.25])
    truth.mean = np.array([[0.0, 0.0], [5.0, 1.0], [2.0, 5.0]])
    truth.covar = np.array([[[1.0, 0.5], [0.5, 1.0]], 0.5 * np.eye(2),
                            [[0.8, -0.3], [-0.3, 0.6]]])
    rng = np.random.default_rng(seed)
    v = truth.draw(rows, rng=rng)
    var = rng.uniform(0.2, 1.0, size=v.shape)
    x = v + rng.standard_normal(v.shape) * np.sqrt(var)
    missing = rng.random(rows) < 0.15
    x[missing, rng.integers(0, 2, size=missing.sum())] = np.nan
    return truth, v, x, var


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--kmax", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args(argv)

    truth, v, x, var = simulate(args.rows, args.seed)
    bics = {}
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        warnings.simplefilter("ignore", dg.DeadComponentWarning)
        for K in range(1, args.kmax + 1):
            est = GaussianMixture(K, init_method="kmeans", n_init=2, tol=1e-4,
                                  random_state=args.seed).fit(x, covar=var)
            bics[K] = est.bic(x, covar=var)
            print(f"K={K}: BIC {bics[K]:12.1f}  ({est.n_iter_} iterations, converged "
                  f"{est.converged_})")
            if best is None or bics[K] < bics[best.n_components]:
                best = est
    print(f"chosen: K={best.n_components}; parameters {best}")
    labels = best.predict(x, covar=var)
    resp = best.predict_proba(x, covar=var)
    print(f"responsibilities {resp.shape}, hard labels per component "
          f"{np.bincount(labels, minlength=best.n_components)}")
    out = {"bic": bics, "K": best.n_components,
           "logL_true_rows": float(best.score_samples(v).mean()),
           "truth_logL_true_rows": float(truth.logL(v).mean())}
    print(f"mean logL of the error-free rows: {out['logL_true_rows']:.4f} (truth "
          f"{out['truth_logL_true_rows']:.4f})")
    try:
        from sklearn.mixture import GaussianMixture as SkGMM
    except ImportError:
        return out
    complete = ~np.isnan(x).any(axis=1)
    sk = SkGMM(best.n_components, random_state=args.seed).fit(x[complete])
    sk_gmm = dg.GMM(best.n_components, 2)
    sk_gmm.amp, sk_gmm.mean, sk_gmm.covar = sk.weights_, sk.means_, sk.covariances_
    out["sklearn_logL_true_rows"] = float(sk_gmm.logL(v).mean())
    print(f"scikit-learn on the {int(complete.sum())} complete rows, noise ignored: "
          f"{out['sklearn_logL_true_rows']:.4f}")
    return out


if __name__ == "__main__":
    main()
