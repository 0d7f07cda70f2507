"""Per-iteration EM time against scikit-learn, and XD throughput, measured in one run.

Plain case: N=1e6 rows, D=5, K=20, float64, no noise. scikit-learn's
GaussianMixture iteration is timed as one E-step plus one M-step on the same data
and the same starting parameters; daskgmmis's as the median wall time of an EM
iteration of ``dg.fit`` (threaded scheduler, all cores). XD case: per-row full
(D, D) noise covariances, reported as nanoseconds per (row, component) per
iteration.

Run: python benchmarks/bench_em.py [--rows N] [--xd-rows N] [--repeat R]
"""

import argparse
import os
import statistics
import time
import warnings

import numpy as np

import daskgmmis as dg


def problem(N, D, K, seed=0):
    rng = np.random.default_rng(seed)
    truth = dg.GMM(K, D)
    truth.amp = rng.dirichlet(np.full(K, 3.0))
    truth.mean = rng.uniform(-10, 10, size=(K, D))
    A = rng.normal(size=(K, D, D)) * 0.6
    truth.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    X = truth.draw(N, rng=rng)
    start = truth.copy()
    start.mean = start.mean + rng.normal(size=start.mean.shape)
    return X, start


def time_daskgmmis(g, X, covar=None, iters=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(g.copy(), X, covar, init_method="none", maxiter=iters, tol=0)
    return statistics.median(res.seconds_per_iter[1:])  # first one includes JIT warm-up


def time_sklearn(g, X, repeat):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(g.K, covariance_type="full", weights_init=g.amp, means_init=g.mean,
                         precisions_init=np.linalg.inv(g.covar), max_iter=1, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X[:1000])          # sets up the private state on a small slice
        gm.weights_, gm.means_ = g.amp.copy(), g.mean.copy()
        gm.covariances_ = g.covar.copy()
        gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(g.covar))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        _, log_resp = gm._e_step(X)
        gm._m_step(X, log_resp)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--xd-rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    D, K = 5, 20
    print(f"cores: {os.cpu_count()}")

    X, g = problem(args.rows, D, K)
    ours = time_daskgmmis(g, X, iters=args.repeat + 2)
    theirs = time_sklearn(g, X, args.repeat)
    print(f"plain N={args.rows} D={D} K={K}: daskgmmis {ours:.3f} s/iter, scikit-learn "
          f"{theirs:.3f} s/iter, ratio {theirs / ours:.1f}x")

    Xs, gs = problem(args.xd_rows, D, K, seed=1)
    rng = np.random.default_rng(2)
    B = rng.normal(size=(args.xd_rows, D, D)) * 0.4
    S = B @ B.transpose(0, 2, 1) + 0.05 * np.eye(D)
    t = time_daskgmmis(gs, Xs + rng.normal(size=Xs.shape), S, iters=args.repeat + 2)
    print(f"XD full per-row covariances N={args.xd_rows} D={D} K={K}: {t:.3f} s/iter, "
          f"{t / (args.xd_rows * K) * 1e9:.1f} ns per (row, component)")
    var = np.einsum("nii->ni", S)
    t = time_daskgmmis(gs, Xs, var, iters=args.repeat + 2)
    print(f"XD diagonal per-row variances N={args.xd_rows} D={D} K={K}: {t:.3f} s/iter, "
          f"{t / (args.xd_rows * K) * 1e9:.1f} ns per (row, component)")


if __name__ == "__main__":
    main()
