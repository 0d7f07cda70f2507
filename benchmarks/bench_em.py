"""EM cost per (row, component), with the peers and the arithmetic floor in the same run.

Every figure is wall time of one EM iteration divided by rows x components, measured in
one process on the same data (the machine may be shared: compare the ratios printed on
one run, not figures from different runs):

* plain data (N rows, D=5, K=20, no noise): ``dg.fit`` (threaded scheduler, all
  cores) against scikit-learn's ``GaussianMixture`` (one E-step plus one M-step);
* extreme deconvolution, full (D, D) and diagonal per-row noise: ``dg.fit`` with the
  default kernel, unrolled over d (float64 rows; float32 rows with float64 noise as
  a catalog stores them, computed in float32 by default), with the generic tiled
  kernel (``kernels._ROWCOV_UNROLLED = False``) and the scalar kernel they replaced
  (``kernels._ROWCOV_TILED = False``), pyGMMis and astroML's ``XDGMM`` (timed on a
  subset: their cost is linear in the rows);
* many-pattern missing data (20-D, 20% random gaps, diagonal noise): one E-step of
  the row-wise kernel against the per-pattern path of ``kernels._run_patterns``;
* projected data (Bovy's ``projection``): each row a random 3-D projection
  ``y = R v + e`` of a 5-D value with full (3, 3) noise, ``dg.fit(projection=R)``.
  Peers: astroML's ``XDGMM`` has no projection; pyGMMis's ``R`` is square
  (N, D, D) only (d = D), not this problem; Bovy's ``extreme_deconvolution`` (C)
  is reported when importable but not timed here (its Python binding);
* the plain kernel alone on one thread (``kernels.log_density_block`` and
  ``kernels.estep_block`` on one 125000-row block, interleaved best of R): the
  density pass and the moment pass, less exposed than the fit to the load of other
  processes on a shared machine;
* the arithmetic floor: the flops of one (row, component) pair of the E-step and
  moment accumulation at D=5 (counted below, :func:`plain_flops`, :func:`xd_flops`)
  divided by the flop rate of a large float64 numpy matrix product on all cores (BLAS
  near peak).

The peers are optional: ``pip install -e .[bench]``; a missing one is reported, not timed.

Run: python benchmarks/bench_em.py [--rows N] [--xd-rows N] [--peer-rows N] [--repeat R]
     [--skip plain,xd,projected,missing]
"""

import argparse
import os
import statistics
import time
import warnings

import numpy as np

import daskgmmis as dg
from daskgmmis import kernels

D, K = 5, 20


def random_truth(K, D, rng, spread=10.0, shape=0.6):
    """A random mixture: Dirichlet(3) amplitudes, means uniform in [-spread, spread],
    covariances A A^T + 0.5 I with A ~ shape * N(0, 1)."""
    truth = dg.GMM(K, D)
    truth.amp = rng.dirichlet(np.full(K, 3.0))
    truth.mean = rng.uniform(-spread, spread, size=(K, D))
    A = rng.normal(size=(K, D, D)) * shape
    truth.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    return truth


def problem(N, D, K, seed=0):
    rng = np.random.default_rng(seed)
    truth = random_truth(K, D, rng)
    X = truth.draw(N, rng=rng)
    start = truth.copy()
    start.mean = start.mean + rng.normal(size=start.mean.shape)
    return X, start


def xd_flops(d: int, diag: bool) -> int:
    """Floating-point operations of one (row, component) pair of the XD kernel.

    Counted from the algorithm of ``kernels._rowcov_tiled``, which its unrolled form
    shares (a multiply-add is 2, a reciprocal, square root or exp is 1): T = V + S (d
    or d(d+1)/2 adds); T = L D L^T (sum_a a(a+1) for the updates, d reciprocals,
    d(d-1)/2 scalings, d + 1 for det^-1/2); r, y = L^-1 r and m = sum y^2 / D
    (d + d(d-1) + 3d); responsibility (6);
    accumulation: u = T^-1 r (d + d(d-1)), unit L^-1 (sum_g (d-g)(2g-1)), q u and
    q D^-1 L^-1 (2d + d(d-1)), the lower triangle of sum q (u u^T - T^-1)
    (sum_a (a+1)(4 + 2(d-1-a)) + d(d+1)/2), U and A (d + 3).
    """
    build = d if diag else d * (d + 1) // 2
    ldl = sum(a * (a + 1) for a in range(d)) + d + d * (d - 1) // 2 + d + 1
    solve = d + d * (d - 1) + 3 * d
    back = d + d * (d - 1)
    linv = sum((d - g) * (2 * g - 1) for g in range(1, d))
    scale = 2 * d + d * (d - 1)
    wp = sum((a + 1) * (4 + 2 * (d - 1 - a)) for a in range(d)) + d * (d + 1) // 2
    return build + ldl + solve + 6 + back + linv + scale + wp + d + 3


def plain_flops(d: int) -> int:
    """Flops of one (row, component) pair of the plain E-step (``kernels._plain_kernels``).

    Whitening ``z = L^-1 (x - mu)`` by forward substitution (d subtractions, d(d-1)
    for the substitution, d scalings), ``m = sum z^2`` (2d), the log-density and the
    responsibility (4, exp counted as 1), and the accumulation of ``q``, ``q y`` and
    the lower triangle of ``q y y^T`` (1 + 2d + d(d+1)) for the unwhitened
    ``y = x - mu``, whitened once per block; the subtractions the kernel repeats in
    each sweep over a tile are not counted.
    """
    return d + d * (d - 1) + d + 2 * d + 4 + 1 + 2 * d + d * (d + 1)


def projected_flops(d: int, D: int) -> int:
    """Flops of one (row, component) pair of the projected XD kernel (``_gap_kernel``).

    The d-dimensional XD work of :func:`xd_flops` (full noise) plus the projection:
    ``G = P V`` (2 d D^2), the lower triangle of ``T = G P^T`` (d (d+1) D), ``P mu``
    (2 d D), and the embedding of the statistics: ``P^T u`` (2 d D),
    ``H = (u u^T - T^-1) P`` (2 d^2 D) and the lower triangle of ``P^T H``
    (D (D+1) d).
    """
    proj = 2 * d * D * D + d * (d + 1) * D + 2 * d * D
    embed = 2 * d * D + 2 * d * d * D + D * (D + 1) * d
    return xd_flops(d, False) + proj + embed


def matmul_flops(n=2000, repeat=3):
    """Flop rate of a float64 (n, n) @ (n, n) product (BLAS, all threads)."""
    a = np.random.default_rng(0).random((n, n))
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2.0 * n ** 3 / best


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def time_daskgmmis(g, X, covar=None, iters=5, projection=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # two blocks or more, so the threaded scheduler keeps both cores busy
        res = dg.fit(g.copy(), X, covar, init_method="none", maxiter=iters, tol=0,
                     projection=projection)
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


def time_pygmmis(g, X, S):
    """Seconds per pyGMMis EM iteration (its own process pool on all cores)."""
    import pygmmis

    def run(iters):
        gm = pygmmis.GMM(K=g.K, D=g.D)
        gm.amp, gm.mean, gm.covar = g.amp.copy(), g.mean.copy(), g.covar.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            pygmmis.fit(gm, X, covar=S, init_method="none", tol=0.0, miniter=iters,
                        maxiter=iters, rng=np.random.RandomState(0))
            return time.perf_counter() - t

    # the difference of two runs removes the set-up (shared arrays, pool start)
    return (run(3) - run(1)) / 2.0


def time_astroml(g, X, S, repeat):
    """Seconds per astroML XDGMM EM step (numpy, one process)."""
    from astroML.density_estimation import XDGMM

    xd = XDGMM(g.K, max_iter=1)
    times = []
    for _ in range(repeat):
        xd.mu, xd.alpha, xd.V = g.mean.copy(), g.amp.copy(), g.covar.copy()
        times.append(_timed(lambda: xd._EMstep(X, S)))
    return statistics.median(times)


def plain_passes(g, X, repeat, rows=125_000):
    """Seconds of the plain density pass and of the whole E-step (density + moments)
    on one block of ``rows`` rows, one thread, best of ``repeat`` interleaved."""
    x = np.ascontiguousarray(X[:rows])
    density = lambda: kernels.log_density_block(x, None, "none", g.amp, g.mean, g.covar)
    estep = lambda: kernels.estep_block(x, None, "none", g.amp, g.mean, g.covar)
    density(), estep()                                          # compile / load cache
    best = [np.inf, np.inf]
    for _ in range(max(repeat, 5)):
        best = [min(b, _timed(f)) for b, f in zip(best, (density, estep))]
    return best, len(x)


def ns(seconds, rows, comps=K):
    return seconds / (rows * comps) * 1e9


def peer(name, f, rows):
    try:
        return f"{ns(f(), rows):8.1f}"
    except ImportError as exc:
        return f"not installed ({exc.name})"


def xd_section(args, flops_rate):
    N = args.xd_rows
    Xs, gs = problem(N, D, K, seed=1)
    rng = np.random.default_rng(2)
    B = rng.normal(size=(N, D, D)) * 0.4
    S = B @ B.transpose(0, 2, 1) + 0.05 * np.eye(D)
    Xn = Xs + np.einsum("nij,nj->ni", np.linalg.cholesky(S), rng.normal(size=Xs.shape))
    var = np.einsum("nii->ni", S).copy()
    print(f"\nXD, N={N} D={D} K={K}: ns per (row, component) per EM iteration "
          f"(dg.fit, threaded, {os.cpu_count()} cores)")
    X32 = Xn.astype(np.float32)
    for label, noise in (("full", S), ("diagonal", var)):
        # interleaved, best of `repeat` fits each: load from other processes hits all three
        old = tiled = new = new32 = np.inf
        for _ in range(args.repeat):
            kernels._ROWCOV_TILED = False
            old = min(old, time_daskgmmis(gs, Xn, noise, 3))
            kernels._ROWCOV_TILED = True
            kernels._ROWCOV_UNROLLED = False
            tiled = min(tiled, time_daskgmmis(gs, Xn, noise, 3))
            kernels._ROWCOV_UNROLLED = True
            new = min(new, time_daskgmmis(gs, Xn, noise, 3))
            new32 = min(new32, time_daskgmmis(gs, X32, noise, 3))
        floor = xd_flops(D, label == "diagonal") / flops_rate * 1e9
        print(f"  {label:8s}: scalar kernel {ns(old, N):6.1f}, generic tiled {ns(tiled, N):6.1f}, "
              f"unrolled float64 {ns(new, N):6.1f} ({old / new:.1f}x), unrolled float32 "
              f"{ns(new32, N):6.1f} ({old / new32:.1f}x); floor {floor:.1f} "
              f"({xd_flops(D, label == 'diagonal')} flops)")
    n = min(args.peer_rows, N)
    print(f"  peers on the first {n} rows, full noise:")
    print(f"    pyGMMis       {peer('pygmmis', lambda: time_pygmmis(gs, Xn[:n], S[:n]), n)}")
    print(f"    astroML XDGMM "
          f"{peer('astroML', lambda: time_astroml(gs, Xn[:n], S[:n], args.repeat), n)}")


def projected_section(args, flops_rate, d=3):
    N = args.xd_rows
    v, gs = problem(N, D, K, seed=3)
    rng = np.random.default_rng(4)
    R = rng.normal(size=(N, d, D))
    B = rng.normal(size=(N, d, d)) * 0.4
    S = B @ B.transpose(0, 2, 1) + 0.05 * np.eye(d)
    y = (np.einsum("nij,nj->ni", R, v)
         + np.einsum("nij,nj->ni", np.linalg.cholesky(S), rng.normal(size=(N, d))))
    best = np.inf
    for _ in range(args.repeat):
        best = min(best, time_daskgmmis(gs, y, S, 3, projection=R))
    flops = projected_flops(d, D)
    print(f"\nprojected, N={N} D={D} K={K}, random ({d}, {D}) projection per row, full "
          f"noise: dg.fit {ns(best, N):.1f} ns per (row, component) per EM iteration "
          f"(threaded, {os.cpu_count()} cores); floor {flops / flops_rate * 1e9:.1f} "
          f"({flops} flops)")
    print("  peers: astroML XDGMM has no projection; pyGMMis's R is square (N, D, D), "
          "d = D only: neither is this problem")
    try:
        import extreme_deconvolution  # noqa: F401
        print("  Bovy's extreme_deconvolution: installed, not timed by this script")
    except ImportError:
        print("  Bovy's extreme_deconvolution: not installed")


def gap_problem(N, D, K, gaps):
    """Rows with random gaps (fraction ``gaps`` missing) and diagonal noise variances.

    Returns (x, var, truth); rows with nothing observed are dropped.
    """
    rng = np.random.default_rng(0)
    truth = dg.GMM(K, D)
    truth.mean = rng.normal(size=(K, D)) * 3
    A = rng.normal(size=(K, D, D)) * 0.3
    truth.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    x = truth.draw(N, rng=1)
    var = rng.uniform(0.05, 0.2, size=x.shape)
    x[rng.random(x.shape) < gaps] = np.nan
    keep = ~np.isnan(x).all(axis=1)
    return x[keep], var[keep], truth


def missing_section(args):
    Dm, Km = 20, 5
    x, var, truth = gap_problem(args.gap_rows, Dm, Km, 0.2)
    n = len(x)
    n_pat = len(kernels.missing_patterns(x))
    call = (x, var, "diag", truth.mean, truth.covar, truth.amp, None, None, None, True, 0)
    kernels._run_patterns(*call, rowwise=True)                         # compile
    t = {"per-pattern": np.inf, "row-wise": np.inf}
    for _ in range(args.repeat):                       # interleaved, best of `repeat`
        for name, rowwise in (("per-pattern", False), ("row-wise", True)):
            t[name] = min(t[name],
                          _timed(lambda: kernels._run_patterns(*call, rowwise=rowwise)))
    print(f"\nmissing data, {n} rows, D={Dm}, K={Km}, 20% random gaps ({n_pat} patterns), "
          f"diagonal noise, one E-step (one thread): per-pattern {ns(t['per-pattern'], n, Km):.0f}, "
          f"row-wise {ns(t['row-wise'], n, Km):.0f} ns per (row, component): "
          f"{t['per-pattern'] / t['row-wise']:.0f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--xd-rows", type=int, default=200_000)
    ap.add_argument("--peer-rows", type=int, default=5_000)
    ap.add_argument("--gap-rows", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", default="",
                    help="comma list of sections: plain,xd,projected,missing")
    args = ap.parse_args(argv)
    skip = set(args.skip.split(","))
    rate = matmul_flops()
    print(f"cores: {os.cpu_count()}; float64 matmul (all cores): {rate / 1e9:.1f} GFLOP/s")

    if "plain" not in skip:
        X, g = problem(args.rows, D, K)
        ours = time_daskgmmis(g, X, iters=args.repeat + 2)
        theirs = time_sklearn(g, X, args.repeat)
        print(f"plain N={args.rows} D={D} K={K}: daskgmmis {ns(ours, args.rows):.1f}, "
              f"scikit-learn {ns(theirs, args.rows):.1f} ns per (row, component) "
              f"({ours:.3f} vs {theirs:.3f} s/iter, {theirs / ours:.1f}x); floor "
              f"{plain_flops(D) / rate * 1e9:.1f} ({plain_flops(D)} flops)")
        (dens, full), n = plain_passes(g, X, args.repeat)
        print(f"  kernel alone, one thread, {n} rows: density pass {ns(dens, n):.1f}, "
              f"moment pass {ns(full - dens, n):.1f}, E-step {ns(full, n):.1f} ns per "
              f"(row, component)")
    if "xd" not in skip:
        xd_section(args, rate)
    if "projected" not in skip:
        projected_section(args, rate)
    if "missing" not in skip:
        missing_section(args)


if __name__ == "__main__":
    main()
