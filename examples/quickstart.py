"""Quickstart: fit a noisy, incomplete catalog on a LocalCluster and compare with the truth.

Simulates a 3-component 3-D population, adds heteroscedastic Gaussian noise
(per-row diagonal variances comparable to the component widths), hides 20% of
the entries, writes the catalog to Zarr, then fits it with extreme deconvolution
on a LocalCluster of worker processes. Prints recovered parameters next to the
truth.

Run: python examples/quickstart.py [--rows N] [--workers W]
"""

import argparse
import tempfile
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

import daskgmmis as dg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    truth = dg.GMM(3, 3)
    truth.amp = np.array([0.5, 0.3, 0.2])
    truth.mean = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, -2.0], [-4.0, 3.0, 2.0]])
    truth.covar = np.array([np.diag([1.0, 0.5, 0.8]),
                            [[1.0, 0.4, 0.0], [0.4, 0.6, 0.1], [0.0, 0.1, 0.5]],
                            0.6 * np.eye(3)])
    rng = np.random.default_rng(args.seed)
    V = truth.draw(args.rows, rng=rng)
    var = rng.uniform(0.1, 1.0, size=V.shape)
    X = V + rng.normal(size=V.shape) * np.sqrt(var)
    X[rng.random(X.shape) < 0.2] = np.nan
    keep = ~np.isnan(X).all(axis=1)
    X, var = X[keep], var[keep]

    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=args.workers, threads_per_worker=1,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        cat = dg.write_catalog(f"{tmp}/catalog.zarr", X, var)
        print(f"catalog: {cat}")
        g = dg.GMM(3, 3)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.ConvergenceWarning)
            res = dg.fit(g, cat, init_method="minmax", rng=args.seed, tol=1e-6, client=client)
        dt = time.perf_counter() - t0
    print(f"fit: {res.n_iter} iterations, converged={res.converged}, mean logL {res.logL:.5f}, "
          f"{dt:.1f} s on {args.workers} workers")
    order = [int(np.argmin(((g.mean - m) ** 2).sum(1))) for m in truth.mean]
    np.set_printoptions(precision=3, suppress=True)
    for k, j in enumerate(order):
        print(f"\ncomponent {k}: amp {g.amp[j]:.3f} (truth {truth.amp[k]:.3f})")
        print(f"  mean  {g.mean[j]}  truth {truth.mean[k]}")
        print(f"  covar diag {np.diag(g.covar[j])}  truth {np.diag(truth.covar[k])}")
    err = max(np.abs(g.covar[order] - truth.covar).max(), np.abs(g.mean[order] - truth.mean).max())
    print(f"\nlargest parameter error: {err:.3f}")


if __name__ == "__main__":
    main()
